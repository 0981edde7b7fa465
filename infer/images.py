"""Read any image a user may have into an RGB uint8 tensor, or say in one line why not.

Training and inference both read images through `load_image`, so a model sees the same pixels
when it is evaluated during training and when it classifies a file later.

Handles RGBA / LA / palette transparency (composited on white), grayscale, 16- and 32-bit
integer and float images (scaled, not clipped), CMYK and other colour spaces, EXIF rotation,
very large images (decoded at reduced scale where the format allows it) and 1 x 1 images.
Refuses decompression bombs, truncated or corrupt files, empty files and non-images.
"""

import os
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from vit.cli import first_line

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".jfif"}
MAX_PIXELS = 100_000_000  # above this an image is treated as a decompression bomb
# What one image's pixels may take once decoded, in its own mode (a 16-bit 9999 x 9999 PNG of
# 194 KB would be 200 MB): larger ones are refused from their header, before decoding. JPEGs count
# at the reduced scale they are decoded at. 85 megapixels of 8-bit RGB fit.
MAX_DECODED_BYTES = 256 * 1024 * 1024
STRIP = 1024  # rows converted at once from a high bit depth: a strip's copies, never the whole image's
ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file is an error, not a half-grey image
# `_opened` refuses images over MAX_PIXELS from the header, before decoding, in one line. Pillow's
# own check would first print a two-line DecompressionBombWarning, which a warnings filter cannot
# silence everywhere (a catch_warnings block, -W, a fresh worker process undo it): it is off.
Image.MAX_IMAGE_PIXELS = None


class ImageError(Exception):
    """An input that is not a usable image; the message names the reason."""


def decoded_bytes(image: Image.Image) -> int:
    """The bytes an image's pixels take once decoded, in its own mode: bands x bytes per band."""
    per_band = 2 if "16" in image.mode else 4 if image.mode in ("I", "F") or "32" in image.mode else 1
    return image.width * image.height * len(image.getbands()) * per_band


def _high_depth_to_uint8(image: Image.Image) -> Image.Image:
    """16/32-bit integer or float single-channel image -> 8-bit 'L', scaling the full range:
    round(v / top * 255), top the format's maximum. Integers in integer arithmetic, floats in
    float32, a strip of rows at a time: the extra memory is a strip's, never a copy of the image."""
    width, height = image.size
    rows = range(0, height, STRIP)

    def strip(row: int) -> np.ndarray:  # rows row.. of the image, (<= STRIP, W): a copy of those rows only
        return np.asarray(image.crop((0, row, width, min(row + STRIP, height))))

    high = max(strip(row).max(initial=0) for row in rows)  # two passes over the strips: one for the range
    if image.mode == "F":
        top = 1.0 if high <= 1.0 else 255.0
    else:  # "I;16*" or "I": 16-bit data unless values say otherwise
        top = 65535 if high > 255 or image.mode.startswith("I;16") else 255
    scaled = np.empty((height, width), dtype=np.uint8)
    for row in rows:
        pixels = strip(row)
        if image.mode == "F":
            pixels = np.clip(pixels.astype(np.float32) / np.float32(top) * 255 + 0.5, 0, 255)
        else:  # (v * 255 + top / 2) // top rounds as v / top * 255 + 0.5 does
            pixels = (np.clip(pixels, 0, top).astype(np.uint32) * 255 + top // 2) // top
        scaled[row:row + STRIP] = pixels.astype(np.uint8)
    return Image.fromarray(scaled, mode="L")


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode -> 'RGB'. Transparent pixels become white (their stored colour is arbitrary)."""
    if image.mode in ("I", "F") or image.mode.startswith("I;16"):
        image = _high_depth_to_uint8(image)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")  # L, 1, P, CMYK, YCbCr, LAB, HSV, RGB


@contextmanager
def _opened(path: Path):
    """Image.open(path) for a `with` block, with every way a file can fail to be an image (in the
    block too) turned into one ImageError that names the reason."""
    if not path.exists():
        raise ImageError("no such file")
    if path.is_dir():
        raise ImageError("is a folder" if expand_paths([path]) != [path] else
                         f"is a folder with no image files ({', '.join(sorted(IMAGE_EXTENSIONS))})")
    if path.stat().st_size == 0:
        raise ImageError("empty file (0 bytes)")
    try:
        with Image.open(path) as image:
            width, height = image.size
            if width * height > MAX_PIXELS:
                raise ImageError(f"refused: {width}x{height} is over {MAX_PIXELS:,} pixels (possible decompression bomb)")
            yield image
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise ImageError("not an image, or a format Pillow cannot read") from None
    except (OSError, SyntaxError, ValueError) as error:  # truncated or corrupt data
        raise ImageError(f"unreadable image ({first_line(error)})") from None


def load_image(path: str | Path, target_size: int) -> torch.Tensor:
    """Read `path` -> (3, H, W) uint8, EXIF-upright. Images much larger than target_size are
    reduced while decoding (JPEG draft mode) or by box-averaging, to save time and memory; the
    final antialiased resize happens in infer.preprocess.to_model_input."""
    with _opened(Path(path)) as image:
        image.draft(None, (2 * target_size, 2 * target_size))  # JPEG: decode at 1/2, 1/4 or 1/8 scale
        _check_decoded_size(image)
        image.load()
        image = ImageOps.exif_transpose(image)
        factor = min(image.size) // (2 * target_size)
        if factor >= 2:
            if image.mode in ("I", "F") or image.mode.startswith("I;16"):
                image = _high_depth_to_uint8(image)  # 8-bit grey first: Image.reduce refuses I;16
            elif image.mode in ("1", "P"):
                image = to_rgb(image)  # Image.reduce refuses these modes ("image has wrong mode")
            image = image.reduce(factor)
        rgb = to_rgb(image)
    return torch.from_numpy(np.asarray(rgb).copy()).permute(2, 0, 1)


def _check_decoded_size(image: Image.Image) -> None:
    """Refuse, from the header, an image whose decoded pixels would exceed MAX_DECODED_BYTES."""
    needed = decoded_bytes(image)
    if needed > MAX_DECODED_BYTES:
        raise ImageError(f"refused: {image.width}x{image.height} {image.mode} pixels would take {needed / 2**20:,.0f} MB "
                         f"decoded, over the {MAX_DECODED_BYTES // 2**20} MB one image may")


def check_image(path: str | Path) -> str | None:
    """Why `path` is not a usable image, from its header (and, for formats with checksums such as
    PNG, its data) without decoding the pixels; None if it looks fine. Cheap enough to run over
    a whole folder of large images before training reads them."""
    try:
        with _opened(Path(path)) as image:
            image.verify()
    except ImageError as error:
        return str(error)
    return None


def list_class_folders(folder: str | Path) -> list[str]:
    """The class names of an ImageFolder split (folder/<class>/<image>): its subfolders, sorted,
    hidden ones (.ipynb_checkpoints, .DS_Store folders) left out. Training and `infer --data`
    both list classes here, so they agree on them."""
    return sorted(d.name for d in Path(folder).iterdir() if d.is_dir() and not d.name.startswith("."))


def expand_paths(paths: list[str | Path]) -> list[Path]:
    """Files as given; folders -> their image files (recursively, sorted, hidden files and folders
    left out). A folder with no image files stays in the list as itself, so that reading it
    reports "is a folder with no image files" instead of silently doing nothing."""
    found = []
    for path in map(Path, paths):
        if path.is_dir():
            images = []  # (parts below `path`) tuples: sorted as Paths sort, without a Path per file yet
            for folder, subfolders, files in os.walk(path):  # scandir: no stat() per file
                subfolders[:] = [d for d in subfolders if not d.startswith(".")]
                below = Path(folder).relative_to(path).parts
                images += [(*below, f) for f in files
                           if not f.startswith(".") and os.path.splitext(f)[1].lower() in IMAGE_EXTENSIONS]
            found += [path.joinpath(*parts) for parts in sorted(images)] or [path]
        else:
            found.append(path)  # a missing path is reported when it is read
    return found


def evenly_spaced(paths: list[Path], count: int) -> list[Path]:
    """At most `count` of `paths`, spread evenly over the list: over a sorted ImageFolder tree,
    every class gets its share."""
    return paths[:: max(1, len(paths) // count)][:count]
