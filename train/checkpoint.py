"""Checkpoints: written atomically, read without unpickling code.

`atomic_save` writes to a temporary file in the same folder, flushes it to disk, then renames
it over the target: a reader (or a crash, or SIGKILL) sees the old file or the new one, never
half of one. A failed write (full disk) removes the temporary file and leaves the old one; a
temporary file left by a killed process is removed by the next successful save.
"""

import os
from pathlib import Path

import torch

from vit.cli import first_line
from weights.load import WeightsError, load_weights_only


class CheckpointError(Exception):
    """A checkpoint that cannot be written or read; the message is one readable line."""


def atomic_save(obj, path: str | os.PathLike) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as file:
            torch.save(obj, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
        _remove_orphans(path)
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)  # make the rename itself durable
        finally:
            os.close(directory)
    except (OSError, RuntimeError) as error:  # torch.save wraps some write errors in RuntimeError
        tmp.unlink(missing_ok=True)
        reason = getattr(error, "strerror", None) or first_line(error)
        raise CheckpointError(f"cannot write {path} ({reason}); the previous checkpoint, if any, is untouched") from None


def check_output_dir(path: str | os.PathLike) -> None:
    """Fail now, not after hours of training, if `path` cannot be created or written to. Creates
    nothing: a run that fails to start leaves no folder behind."""
    path = Path(path).expanduser()
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise CheckpointError(f"--output-dir {path}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise CheckpointError(f"--output-dir {path}: cannot write in {existing} (permission denied)")


def _remove_orphans(path: Path) -> None:
    """Delete temporary files of `path` whose writer process no longer exists (it was killed)."""
    for orphan in path.parent.glob(f".{path.name}.tmp-*"):
        pid = orphan.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not _process_exists(int(pid)):
            orphan.unlink(missing_ok=True)


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def safe_load(path: str | os.PathLike) -> dict:
    """A checkpoint written by this project, read with weights.load_weights_only (never
    unpickles code)."""
    try:
        checkpoint = load_weights_only(path)
    except WeightsError as error:
        raise CheckpointError(str(error)) from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise CheckpointError(f"{path}: not a checkpoint written by this project (no state_dict)")
    return checkpoint
