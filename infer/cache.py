"""The compiled-package cache: where `infer --prepare` keeps its packages and verdicts, and what it
trusts when it reads them back. A package is native code (an AOTInductor .pt2 holds a shared
library), so the cache trusts nothing it did not write, for this user, for these weights:

  - the folder is private: made 0700, and one owned by another user, or writable by group or
    others, is not used at all (CacheUnsafe): nothing in it is read, nothing written;
  - a verdict is found by the checkpoint's path, this CPU's exact features (the code is built
    for them) and PyTorch's version, and is believed only for the checkpoint's contents: it
    records the file's SHA-256, and its inode, size, modification and change times to spare
    hashing an unchanged file (the change time is the kernel's: `cp -p`, rsync, tar or unzip can
    set a file's modification time back, never its change time);
  - a package is loaded only from this folder, by the plain file name its verdict gives, a
    regular file (not a link) owned by this user, whose SHA-256 is the one recorded when it was
    built (another runtime's model, an .onnx file of infer/runtimes.py, is kept and checked alike);
  - anything unreadable, malformed or mismatched is "not prepared" (VerdictUnusable says why, in
    one line); the caller runs the eager path.

Where it is: $VIT_CACHE_DIR/compiled, else ~/.cache/vit-from-scratch/compiled ($XDG_CACHE_HOME).
Deleting the folder clears it; the next `--prepare` builds again.
"""

import hashlib
import json
import math
import os
import re
import stat
import uuid
from pathlib import Path

import torch

from infer import cpu
from infer.runtimes import RUNTIMES
from vit.checkpoint import ModelCard
from weights.files import atomic_write

PRECISIONS = ("fp32", "bf16", "fp16", "int8", "int8-bf16", *RUNTIMES)  # what a verdict may name
PACKAGES = ("package", "exact_package", "second_package")  # a verdict's files: what runs, what decides its close
#   calls in training's precision, and what gives them a second opinion first (infer/prepare.py; each may be None)
PACKAGE_NAME = re.compile(r"[\w.-]+\.(pt2|onnx)")  # a plain file name in the cache folder, no path


class CacheUnsafe(Exception):
    """The cache folder is not this user's alone: nothing in it is trusted."""


class VerdictUnusable(Exception):
    """A kept verdict or its package cannot be trusted or read (malformed, stale, tampered with)."""


def cache_dir() -> Path:
    """$VIT_CACHE_DIR/compiled, else the user's cache folder ($XDG_CACHE_HOME or ~/.cache)."""
    if os.environ.get("VIT_CACHE_DIR"):
        return Path(os.environ["VIT_CACHE_DIR"]) / "compiled"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "vit-from-scratch" / "compiled"


def private_dir() -> Path:
    """The cache folder, made 0700 where it is new; CacheUnsafe where another user owns it or could
    write into it (a link to a folder counts as the folder it leads to, checked as such)."""
    folder = cache_dir()
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = folder.lstat()
    except OSError as error:
        raise CacheUnsafe(f"cannot use the cache folder {folder} ({error.strerror})") from None
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode):
        raise CacheUnsafe(f"the cache folder {folder} is a link or not a folder: not used (set VIT_CACHE_DIR to a "
                          "folder of your own)")
    if info.st_uid != os.getuid() or info.st_mode & 0o022:
        raise CacheUnsafe(f"the cache folder {folder} is not yours alone (owner uid {info.st_uid}, mode "
                          f"{stat.S_IMODE(info.st_mode):o}): not used; set VIT_CACHE_DIR to a folder of your own")
    return folder


def cpu_key() -> str:
    """This CPU's exact instruction set as PyTorch uses it, and PyTorch's version: what a package's
    native code was built for (-march=native)."""
    facts = [sorted(cpu.cpu_flags()), torch.backends.cpu.get_cpu_capability(),
             os.environ.get("ONEDNN_MAX_CPU_ISA", ""), torch.__version__]
    return hashlib.sha256(json.dumps(facts).encode()).hexdigest()[:16]


def verdict_path(checkpoint: str | Path) -> Path:
    """Where the checked choice for this checkpoint path on this CPU and PyTorch is kept."""
    checkpoint = Path(checkpoint).resolve()
    key = hashlib.sha256(json.dumps([str(checkpoint), cpu_key()]).encode()).hexdigest()[:16]
    return private_dir() / f"{checkpoint.stem}-{key}.json"


def new_package_path(checkpoint: str | Path, precision: str) -> Path:
    """A fresh name for a package about to be built (.pt2, or .onnx for another runtime's model):
    a prepare never writes over, or deletes, the packages of another one running beside it."""
    return private_dir() / f"{Path(checkpoint).stem}-{precision}-{uuid.uuid4().hex[:12]}{package_suffix(precision)}"


def package_suffix(precision: str) -> str:
    """What kind of file a precision's package is: another runtime's .onnx model, or our .pt2."""
    return ".onnx" if precision in RUNTIMES else ".pt2"


def sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def signature(path: str | Path) -> list[int]:
    """A file's identity short of its contents: device, inode, size, modification and change times."""
    info = os.stat(path)
    return [info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns]


def write_verdict(checkpoint: str | Path, verdict: dict) -> dict:
    """Keep the verdict for this checkpoint's contents (atomically), its package's hash recorded;
    returns it as kept."""
    kept = {**verdict, "checkpoint": {"sha256": sha256(checkpoint), "signature": signature(checkpoint)}}
    for key in PACKAGES:
        if verdict.get(key) is not None:
            kept[f"{key}_sha256"] = sha256(package_path(verdict, key))
    atomic_write(verdict_path(checkpoint), lambda file: file.write(json.dumps(kept, indent=1).encode()))
    return kept


def read_verdict(checkpoint: str | Path) -> dict | None:
    """The kept verdict for this checkpoint's contents on this CPU, checked (see the module
    docstring); None where none was kept, or where it was kept for other contents (stale: the
    checkpoint changed since). CacheUnsafe, VerdictUnusable: one line each."""
    if not Path(checkpoint).is_file():
        return None
    path = verdict_path(checkpoint)
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except OSError as error:
        raise VerdictUnusable(f"cannot read {path} ({error.strerror})") from None
    try:
        verdict = json.loads(text)
    except ValueError:
        raise VerdictUnusable(f"{path} is not a verdict this project wrote (not JSON)") from None
    problem = malformed(verdict)
    if problem:
        raise VerdictUnusable(f"{path}: {problem}")
    kept = verdict["checkpoint"]
    if kept["signature"] != signature(checkpoint) and kept["sha256"] != sha256(checkpoint):
        return None  # the checkpoint is not the one this verdict was made for
    for key in PACKAGES:
        if verdict.get(key) is not None:
            package_file(verdict, key)
    return verdict


def package_path(verdict: dict, key: str = "package") -> Path:
    """Where the verdict's package (or, key "exact_package" or "second_package", one deciding its
    close calls) is:
    its plain name in the private folder (unchecked; `package_file` checks it, and `read_verdict`
    has for every verdict it returns)."""
    return private_dir() / verdict[key]


def package_file(verdict: dict, key: str = "package") -> Path:
    """The verdict's package (`key`: see package_path), checked: in the private folder, a regular
    file of this user's, its contents those recorded when it was built. VerdictUnusable otherwise."""
    path = package_path(verdict, key)
    try:
        info = path.lstat()
    except OSError:
        raise VerdictUnusable(f"its package {path} is gone") from None
    if not stat.S_ISREG(info.st_mode) or info.st_uid != os.getuid():
        raise VerdictUnusable(f"its package {path} is not a file of yours")
    if sha256(path) != verdict.get(f"{key}_sha256"):
        raise VerdictUnusable(f"its package {path} is not the one built (its contents changed)")
    return path


def malformed(verdict) -> str | None:
    """What is wrong with a verdict read back, in a few words; None where it is one this version writes."""
    if not isinstance(verdict, dict):
        return "not a verdict"
    fields = {"precision": str, "guard": (int, float), "img_size": int, "batch_size": int, "card": dict,
              "img_per_s": dict, "agreement": dict, "close_calls": dict, "checked_on": int, "checkpoint": dict}
    for name, kind in fields.items():
        if not isinstance(verdict.get(name), kind) or isinstance(verdict.get(name), bool):
            return f"its {name!r} is missing or not a {getattr(kind, '__name__', 'number')}"
    if verdict["precision"] not in PRECISIONS:
        return f"its precision {verdict['precision']!r} is none of {', '.join(PRECISIONS)}"
    if not (math.isfinite(verdict["guard"]) and verdict["guard"] >= 0):
        return f"its guard {verdict['guard']!r} is not a gap >= 0"
    package = verdict.get("package")
    if package is not None and not (isinstance(package, str) and PACKAGE_NAME.fullmatch(package)):
        return f"its package {package!r} is not a file name in the cache folder"
    if package is not None and Path(package).suffix != package_suffix(verdict["precision"]):
        return f"its package {package!r} is not the kind of file {verdict['precision']} runs"
    exact = verdict.get("exact_package")
    if exact is not None and not (package is not None and isinstance(exact, str) and PACKAGE_NAME.fullmatch(exact)
                                  and Path(exact).suffix == ".pt2"):
        return f"its exact_package {exact!r} is not a package file name in the cache folder beside a package"
    second, second_package = verdict.get("second"), verdict.get("second_package")
    if (second is None) != (second_package is None):
        return "its second opinion has a precision without a package, or a package without a precision"
    if second is not None:
        if second not in PRECISIONS:
            return f"its second opinion's precision {second!r} is none of {', '.join(PRECISIONS)}"
        if not (package is not None and isinstance(second_package, str) and PACKAGE_NAME.fullmatch(second_package)
                and Path(second_package).suffix == package_suffix(second)):
            return f"its second_package {second_package!r} is not a {second} file name in the cache folder beside a package"
        guard = verdict.get("second_guard")
        if not (isinstance(guard, (int, float)) and not isinstance(guard, bool) and math.isfinite(guard) and guard >= 0):
            return f"its second_guard {guard!r} is not a gap >= 0"
    kept = verdict["checkpoint"]
    if not (isinstance(kept.get("sha256"), str) and isinstance(kept.get("signature"), list)):
        return "it records no checkpoint contents"
    try:
        card = ModelCard.from_dict(verdict["card"], "the verdict's card")
    except Exception as error:  # the card's own one-line checks, whatever they raise
        return f"its card is unusable ({str(error)[:120]})"
    if package is not None and card.img_size != verdict["img_size"]:
        return f"its card says {card.img_size} px, its package was built for {verdict['img_size']} px"
    return None
