"""Data sets: find the images (ImageFolder trees, CIFAR-10's python archive, its download) and
decode small ones once into a uint8 tensor, cached on disk.

Small images (CIFAR-10's 32 x 32) are decoded once into one (N, 3, h, w) uint8 tensor, which
train/batches.py keeps whole on the training device. Folders of large images are listed and
checked here, and read during training by DataLoader workers.
"""

import hashlib
import json
import os
import pickle
import re
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file, save

# Everything the decoding thread needs is imported here, in the main thread, before it starts
# (train.loop.prepare): a Ctrl-C that lands inside an import in the main thread (compiling
# imports much of Inductor) can leave Python's import lock held, and a thread that imports
# after that waits for it forever, so the run would hang instead of stopping. PIL loads its
# format plugins on first use: loaded now.
Image.init()

from vit.checkpoint import CheckpointError
from weights.files import atomic_write
from infer.images import ImageError, check_image, expand_paths, list_class_folders, load_image

SMALL_IMAGE_MAX_SIDE = 64  # up to this, a data set is decoded whole into memory
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"


class DataError(Exception):
    """A data set that cannot be used; the message says why, in one line."""


@dataclass
class Split:
    """One split: either decoded images (small-image data) or files to read (large images)."""

    labels: torch.Tensor  # (N,) int64
    images: torch.Tensor | None = None  # (N, 3, h, w) uint8
    files: list[Path] | None = None


@dataclass
class Dataset:
    name: str
    class_names: list[str]
    train: Split
    test: Split
    source_size: int | None  # side of the small images (32 for CIFAR-10); None for large images


# ---------------------------------------------------------------- finding and decoding images


def list_image_folder(split_dir: Path) -> tuple[list[str], list[Path], list[int]]:
    """ImageFolder layout: split_dir/<class>/<image>. Returns classes, files, labels."""
    classes = list_class_folders(split_dir)
    if not classes:
        raise DataError(f"{split_dir}: no class folders (expected {split_dir}/<class>/<image>)")
    files, labels = [], []
    for label, name in enumerate(classes):
        found = expand_paths([split_dir / name])
        if found == [split_dir / name]:  # a folder with no image files in it
            raise DataError(f"{split_dir / name}: class folder has no images")
        files += found
        labels += [label] * len(found)
    return classes, files, labels


def decode_small(path: Path) -> tuple[bytes, tuple[int, int]] | str:
    """One image -> (RGB bytes in HWC order, (w, h)), or the reason it cannot be read. Images
    larger than SMALL_IMAGE_MAX_SIDE may come back reduced (still larger than it)."""
    try:
        pixels = load_image(path, SMALL_IMAGE_MAX_SIDE)  # (3, h, w) uint8
    except ImageError as error:
        return str(error)
    return pixels.permute(1, 2, 0).contiguous().numpy().tobytes(), (pixels.shape[2], pixels.shape[1])


def decode_files(files: list[Path], num_workers: int) -> list:
    if num_workers <= 1 or len(files) < 1000:
        return [decode_small(f) for f in files]
    pool = ProcessPoolExecutor(num_workers)
    try:
        return list(pool.map(decode_small, files, chunksize=256))
    finally:  # after Ctrl-C (the workers get it too), drop the chunks not started rather than decode them
        pool.shutdown(cancel_futures=True)


def report_unreadable(bad: list[tuple[Path, str]], skip_bad: bool, total: int | None = None) -> None:
    """Unreadable images, (file, reason) pairs: one line naming a few and --skip-bad-images,
    or, with skip_bad, a warning. The one rule for small and large images alike."""
    if bad and not skip_bad:
        shown = "; ".join(f"{f}: {r}" for f, r in bad[:3])
        raise DataError(f"{len(bad)} unreadable image(s), e.g. {shown} (use --skip-bad-images to skip them)")
    if bad and len(bad) == total:
        raise DataError(f"no readable images (e.g. {bad[0][0]}: {bad[0][1]})")
    if bad:
        print(f"warning: skipped {len(bad)} unreadable image(s), e.g. {bad[0][0]}")


def check_large_images(files: list[Path], labels: list[int], workers: int, skip_bad: bool) -> tuple[list, list]:
    """Large images are decoded during training, by DataLoader workers; check every file first
    (in threads: it is mostly I/O), so a bad one is reported before the first step, as a bad
    small image is, and not as a traceback from inside a worker."""
    with ThreadPoolExecutor(max(1, workers)) as pool:
        problems = list(pool.map(check_image, files))
    report_unreadable([(f, r) for f, r in zip(files, problems) if r], skip_bad, total=len(files))
    keep = [i for i, r in enumerate(problems) if r is None]
    return [files[i] for i in keep], [labels[i] for i in keep]


def decode_to_tensor(files: list[Path], labels: list[int], size: int, num_workers: int, skip_bad: bool) -> Split:
    """Decode small images into one (N, 3, size, size) uint8 tensor; report unreadable files."""
    decoded = decode_files(files, num_workers)
    report_unreadable([(f, r) for f, r in zip(files, decoded) if isinstance(r, str)], skip_bad, total=len(files))
    odd = [f for f, r in zip(files, decoded) if not isinstance(r, str) and r[1] != (size, size)]
    if odd:
        raise DataError(f"{len(odd)} image(s) are not {size}x{size}, e.g. {odd[0]}; small-image data sets need one size")
    keep = [i for i, r in enumerate(decoded) if not isinstance(r, str)]
    pixels = np.frombuffer(b"".join(decoded[i][0] for i in keep), dtype=np.uint8)
    images = torch.from_numpy(pixels.copy()).view(len(keep), size, size, 3).permute(0, 3, 1, 2).contiguous()
    return Split(labels=torch.tensor([labels[i] for i in keep]), images=images)


def cached(key_parts: dict, cache_dir: Path, build) -> Split:
    """build() once per distinct input; later runs load the decoded tensor from disk."""
    key = hashlib.sha1(json.dumps(key_parts, sort_keys=True).encode()).hexdigest()[:20]
    path = cache_dir / f"decoded-{key}.safetensors"
    if path.is_file():
        try:
            tensors = load_file(path)
            return Split(labels=tensors["labels"], images=tensors["images"])
        except Exception:
            path.unlink(missing_ok=True)  # a damaged cache entry is rebuilt
    split = build()
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda file: file.write(save({"labels": split.labels, "images": split.images})))
    except (OSError, CheckpointError) as error:  # a read-only or full disk: go on without the cache
        print(f"warning: decoded images not cached in {cache_dir} ({getattr(error, 'strerror', None) or error})")
    return split


def subset(files: list, labels: list, limit: int | None, seed: int) -> tuple[list, list]:
    """A seeded random subset of `limit` items (all items if limit is None), in file order."""
    if limit is None or limit >= len(files):
        return files, labels
    chosen = sorted(torch.randperm(len(files), generator=torch.Generator().manual_seed(seed))[:limit].tolist())
    return [files[i] for i in chosen], [labels[i] for i in chosen]


UNLABELLED_HELD_OUT = (0.05, 1000)  # an unlabelled folder's held-out share for MAE's evaluation, and its cap


def list_unlabelled(root: Path, seed: int) -> tuple[list[str], list[Path], list[int], list[Path], list[int]]:
    """Any folder of images (`--objective mae` needs no labels): every image below it, a seeded
    5% (at most 1,000) held out for the evaluation, all under one class, "images"."""
    files = expand_paths([root])
    if files == [root]:
        raise DataError(f"{root}: no images in it (nor train/ and test/ folders)")
    if len(files) < 2:
        raise DataError(f"{root}: one image; pretraining needs some to train on and some held out")
    held = min(UNLABELLED_HELD_OUT[1], max(1, int(len(files) * UNLABELLED_HELD_OUT[0])))
    order = torch.randperm(len(files), generator=torch.Generator().manual_seed(seed)).tolist()
    test, train = sorted(order[:held]), sorted(order[held:])
    return ["images"], [files[i] for i in train], [0] * len(train), [files[i] for i in test], [0] * len(test)


def load_image_folder(root: Path, cfg) -> Dataset:
    root = root.resolve()  # absolute file paths, as the cache key needs, without resolving each file
    test_dir = next((root / s for s in ("test", "val") if (root / s).is_dir()), None)
    if cfg.objective == "mae" and not (root / "train").is_dir():
        classes, train_files, train_labels, test_files, test_labels = list_unlabelled(root, cfg.seed)
        return decoded(root, cfg, classes, (train_files, train_labels), (test_files, test_labels))
    if not (root / "train").is_dir() or test_dir is None:
        raise DataError(f"{root}: expected train/ and test/ (or val/) folders in ImageFolder layout"
                        + ("" if cfg.objective == "mae" else " (--objective mae takes any folder of images)"))
    classes, train_files, train_labels = list_image_folder(root / "train")
    test_classes, test_files, test_labels = list_image_folder(test_dir)
    if classes != test_classes:
        only_train, only_test = set(classes) - set(test_classes), set(test_classes) - set(classes)
        raise DataError(f"{root}: train and {test_dir.name} have different classes "
                        f"(only in train: {sorted(only_train)}, only in {test_dir.name}: {sorted(only_test)})")
    return decoded(root, cfg, classes, (train_files, train_labels), (test_files, test_labels))


def decoded(root: Path, cfg, classes: list[str], train: tuple[list, list], test: tuple[list, list]) -> Dataset:
    """The splits' files (subsets where --max-*-samples say): small images decoded (and cached),
    large ones checked and kept as files."""
    train_files, train_labels = subset(*train, cfg.max_train_samples, cfg.seed)
    test_files, test_labels = subset(*test, cfg.max_eval_samples, cfg.seed)

    first = next((d for d in map(decode_small, train_files) if not isinstance(d, str)), None)
    if first is None:
        raise DataError(f"{root}: no readable training images")
    width, height = first[1]
    name = cfg.name or dataset_name(root)
    if max(width, height) > SMALL_IMAGE_MAX_SIDE or width != height:
        train_files, train_labels = check_large_images(train_files, train_labels, cfg.num_workers, cfg.skip_bad_images)
        test_files, test_labels = check_large_images(test_files, test_labels, cfg.num_workers, cfg.skip_bad_images)
        return Dataset(name, classes, Split(torch.tensor(train_labels), files=train_files),
                       Split(torch.tensor(test_labels), files=test_files), source_size=None)

    cache_dir = Path(cfg.cache_dir or default_cache_dir())
    splits = []
    for files, labels in ((train_files, train_labels), (test_files, test_labels)):
        # every file's size and modification time: an image edited in place is decoded again
        # (os.stat of CIFAR-10's 60,000 files: well under a second)
        key = {"files": [str(f) for f in files], "labels": labels, "size": width,
               "stamp": [(stat.st_size, stat.st_mtime_ns) for stat in map(os.stat, files)],
               "skip_bad": cfg.skip_bad_images}
        splits.append(cached(key, cache_dir, lambda f=files, l=labels: decode_to_tensor(
            f, l, width, cfg.num_workers, cfg.skip_bad_images)))
    return Dataset(name, classes, splits[0], splits[1], source_size=width)


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """CIFAR-10's python batches are pickles. This unpickler builds numpy arrays and plain
    containers only, and refuses any other class, so a doctored batch cannot run code."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"),
               ("_codecs", "encode")}  # how Python 3's protocol-2 pickles spell bytes: str -> bytes, no more

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refused to load {module}.{name} from a CIFAR-10 batch")


def read_cifar_batch(path: Path) -> dict:
    try:
        with open(path, "rb") as file:
            return _NumpyOnlyUnpickler(file, encoding="bytes").load()
    except (OSError, pickle.UnpicklingError, EOFError, ValueError) as error:
        raise DataError(f"{path}: not a readable CIFAR-10 batch ({error})") from None


def load_cifar_batches(folder: Path, cfg) -> Dataset:
    """An extracted `cifar-10-batches-py` folder (data_batch_1..5, test_batch, batches.meta)."""
    def split(names, limit):
        batches = [read_cifar_batch(folder / n) for n in names]
        images = np.concatenate([b[b"data"] for b in batches]).reshape(-1, 3, 32, 32)
        labels = [int(x) for b in batches for x in b[b"labels"]]
        indices, labels = subset(list(range(len(labels))), labels, limit, cfg.seed)
        return Split(labels=torch.tensor(labels), images=torch.from_numpy(images[indices]).contiguous())

    meta = read_cifar_batch(folder / "batches.meta")
    classes = [n.decode() for n in meta[b"label_names"]]
    train = split([f"data_batch_{i}" for i in range(1, 6)], cfg.max_train_samples)
    test = split(["test_batch"], cfg.max_eval_samples)
    return Dataset(cfg.name or "cifar10", classes, train, test, source_size=32)


def download_cifar10(root: Path) -> Path:
    """torchvision's CIFAR-10 download (checked by MD5), extracted under root."""
    folder = root / "cifar-10-batches-py"
    if (folder / "batches.meta").is_file():
        return folder
    from torchvision.datasets.utils import download_and_extract_archive

    try:
        download_and_extract_archive(CIFAR10_URL, str(root), md5=CIFAR10_MD5)
    except Exception as error:  # URLError, socket errors, HTTP errors, bad archive
        raise DataError(
            f"cannot download CIFAR-10 into {root} ({type(error).__name__}: {str(error)[:120]}). "
            "Alternatives: --data an ImageFolder root with train/ and test/ (e.g. ../shared/data/cifar10-jpg), "
            "or --data an extracted cifar-10-batches-py folder"
        ) from None
    return folder


def dataset_name(path: Path) -> str:
    """Name used in vit_<name>_finetuned.pth: 'cifar10' for any CIFAR-10 copy, else the folder's."""
    name = re.sub(r"[^a-z0-9]+", "-", path.resolve().name.lower()).strip("-") or "data"
    return "cifar10" if re.match(r"cifar-?10(\b|-|$)", name) else name


def data_folder(cfg) -> Path | None:
    """--data as a folder, None for 'cifar10'; a DataError at once if it is neither (checked
    before the weights are fetched: a typo should not cost a download)."""
    if cfg.data == "cifar10":
        return None
    path = Path(cfg.data).expanduser()
    if not path.is_dir():
        raise DataError(f"--data {cfg.data}: not 'cifar10' and not a folder")
    return path


def default_cache_dir() -> Path:
    """Where decoded images are cached unless --cache-dir says: $XDG_CACHE_HOME/vit-from-scratch,
    by default ~/.cache/vit-from-scratch."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "vit-from-scratch"


def load_dataset(cfg) -> Dataset:
    """Resolve --data to a Dataset."""
    path = data_folder(cfg)
    if path is None:
        return load_cifar_batches(download_cifar10(Path(cfg.data_root)), cfg)
    if (path / "batches.meta").is_file():
        return load_cifar_batches(path, cfg)
    return load_image_folder(path, cfg)
