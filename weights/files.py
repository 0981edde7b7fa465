"""Files this project writes: atomically, so that nothing is ever seen half-written.

Writes are atomic: a temporary file in the same folder, flushed to disk, renamed over the
target. A reader (or a crash, or SIGKILL) sees the old file or the new one, never half of one;
a failed write (full disk) removes the temporary file and leaves the old one; temporary files
of killed writers are swept by the next save.
"""

import os
import shutil
import threading
from pathlib import Path
from typing import BinaryIO, Callable

import torch

from weights.messages import first_line


class CheckpointError(Exception):
    """A checkpoint that cannot be written or read; the message is one readable line."""


DISK_FULL = 1024 * 1024  # bytes free below which a failed write is put down to a full disk


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], None]) -> None:
    """Call write(file) on a temporary file beside `path`, flush it to disk, rename it over
    `path`. The project's one way of writing a file that must never be seen half-written."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as file:
            write(file)
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
        # ... a full disk among them ("unexpected pos ..."): say so in plain words
        full = isinstance(error, RuntimeError) and shutil.disk_usage(path.parent).free < DISK_FULL
        tmp.unlink(missing_ok=True)
        reason = "no space left on device" if full else getattr(error, "strerror", None) or first_line(error)
        raise CheckpointError(f"cannot write {path} ({reason}); the previous file, if any, is untouched") from None


def atomic_save(obj, path: str | os.PathLike) -> None:
    """torch.save, atomically."""
    atomic_write(path, lambda file: torch.save(obj, file))


def save_safetensors(tensors: dict[str, torch.Tensor], path: str | os.PathLike, metadata: dict[str, str] | None = None) -> None:
    """A .safetensors file, atomically, readable as any file the user writes (safetensors' own
    save_file makes it 0600, whatever the umask)."""
    from safetensors.torch import save

    atomic_write(path, lambda file: file.write(save(tensors, metadata=metadata)))


class BackgroundSaver:
    """atomic_save on a thread, so that training goes on while ~1 GB of weights and optimiser
    state reach the disk. `save` first copies every tensor to the CPU (a snapshot the next
    optimiser step cannot change), then writes while the caller returns. One write at a time:
    a new save, and `wait`, first finish the one in flight and raise its error. A kill during
    a write leaves the previous file, exactly as atomic_save does."""

    def __init__(self):
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def save(self, obj, path: str | os.PathLike) -> None:
        self.wait()
        snapshot = _to_cpu(obj)
        if torch.cuda.is_initialized():
            torch.cuda.synchronize()  # the copies from the GPU were asynchronous: now they are done
        self._thread = threading.Thread(target=self._write, args=(snapshot, path), name="checkpoint-writer")
        self._thread.start()

    def _write(self, obj, path) -> None:
        try:
            atomic_save(obj, path)
        except BaseException as error:  # handed to the training thread by wait()
            self._error = error

    def wait(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        error, self._error = self._error, None
        if error is not None:
            raise error


def _to_cpu(obj):
    """A copy of `obj` whose tensors are new CPU tensors (clones, also of tensors already there).
    From a GPU the copies go to page-locked memory (reused from save to save by PyTorch's pinned
    memory cache) without waiting for each other: several times faster than one by one into
    ordinary memory; the caller synchronises once."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True, non_blocking=obj.is_cuda)
    if isinstance(obj, dict):
        return {key: _to_cpu(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(value) for value in obj)
    return obj


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
