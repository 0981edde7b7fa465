"""Find pretrained weights (local file, Hugging Face cache or hub), read them, fit them to a model.

A `pretrained` argument is one of:
  - None or "none": no weights;
  - a path: a `.safetensors`, `.pth`/`.bin` or `.npz` file in any layout weights/layouts.py
    knows (timm, torchvision, OpenCLIP, transformers, Meta's DINO, the JAX releases, ours), a
    folder holding `model.safetensors` (and maybe `config.json`), or a `.pth` written by `train`;
  - a Hugging Face hub id such as "timm/vit_base_patch16_224.augreg2_in21k_ft_in1k", fetched with
    huggingface_hub (which honours HF_HUB_OFFLINE=1 and HF_HOME / HF_HUB_CACHE).

Nothing here unpickles: safetensors holds only tensors, `.npz` files are read by numpy with
allow_pickle=False, and `.pth` files with `torch.load(weights_only=True)`.
"""

import json
import math
import os
import re
import socket
import stat
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open

from weights.layouts import MAE_DECODER_PARTS, Layout, UnknownLayout, detect_layout, mae_decoder_to_ours
from weights.messages import first_line


class WeightsError(Exception):
    """Pretrained weights that cannot be had or do not fit; the message is one readable line."""


@dataclass
class Pretrained:
    """Weights in our layout, with what the file says about how to use them."""

    state_dict: dict[str, torch.Tensor]
    source: str
    layout: str  # the layout the file was in (weights/layouts.py's LAYOUTS: "timm", "torchvision", ...)
    layer_norm_eps: float | None = None  # None: the model's default
    activation: str | None = None  # the MLP's, where a transformers config.json names it; None: the model's
    position_resize: str | None = None  # how the file's code resizes its position table; None: the model's
    ignored: tuple[str, ...] = ()  # a larger model's tensors outside its ViT (an .onnx graph's decoder, ...)
    mean: tuple[float, float, float] | None = None  # None: the file does not say (the model's default)
    std: tuple[float, float, float] | None = None
    extra: dict = field(default_factory=dict)


def is_none(pretrained) -> bool:
    return pretrained is None or (isinstance(pretrained, str) and pretrained.lower() == "none")


def _looks_like_path(spec: str) -> bool:
    return spec.startswith((".", "/", "~")) or spec.endswith((".safetensors", ".npz", *TORCH_SUFFIXES))


class HubUnavailable(WeightsError):
    """The hub could not give a repo: what happened and the ways around it, worded for whoever
    asked. str() speaks to the Python API (pretrained=...); a command names its own flag by
    `advice`: "--pretrained" (train, infer.figures) or "SRC" (weights convert)."""

    def __init__(self, repo_id: str, reason: str):
        self.repo_id, self.reason = repo_id, reason
        super().__init__(self.advice("pretrained="))

    def advice(self, argument: str) -> str:
        cache = "fill the Hugging Face cache on a machine with network and set HF_HUB_OFFLINE=1 here"
        readable = "any layout python -m weights inspect reads"
        if argument == "SRC":
            return (f"cannot get '{self.repo_id}' from the Hugging Face hub ({self.reason}); give a local "
                    f"checkpoint or folder ({readable}) as SRC, or {cache}")
        if argument == "pretrained=":
            local, none = "pretrained='path/to/model.safetensors'", "pretrained=None"
        else:  # a command's flag
            local, none = f"{argument} path/to/model.safetensors", f"{argument} none"
        ways = (f"use {local} (a local checkpoint, {readable}), {cache}, "
                f"or {none} to start from random weights")
        return f"cannot get '{self.repo_id}' from the Hugging Face hub ({self.reason}); {ways}"


def _hub_unreachable() -> str | None:
    """Why the hub's endpoint cannot be reached (one short phrase), or None if it answers. Asked
    before downloading so that a machine without network fails in seconds, not after
    huggingface_hub's five retries (~25 s). Behind a proxy the answer is left to the download."""
    from urllib.parse import urlsplit

    from huggingface_hub import constants

    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")):
        return None
    url = urlsplit(constants.ENDPOINT)
    host, port = url.hostname or "", url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((host, port), timeout=5).close()
    except OSError as error:
        return f"no network: cannot reach {host}:{port} ({getattr(error, 'strerror', None) or first_line(error)})"
    return None


def download_from_hub(repo_id: str) -> Path:
    """`model.safetensors` (and `config.json`, if any) of a hub repo, from the local Hugging Face
    cache when it is there, else downloaded into it; returns the weights file's path."""
    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub.utils import logging as hub_logging

    def fetch(filename: str, local_only: bool) -> Path:
        return Path(hf_hub_download(repo_id, filename, local_files_only=local_only))

    try:
        return fetch("model.safetensors", local_only=True)  # a weights file never changes: no need to ask
    except (OSError, ValueError):
        pass
    reason = "not in the local Hugging Face cache, and HF_HUB_OFFLINE=1" if constants.HF_HUB_OFFLINE else _hub_unreachable()
    if reason is None:
        verbosity = hub_logging.get_verbosity()
        hub_logging.set_verbosity_error()  # no 'Retrying in 2s' lines around our one-line error
        try:
            weights_file = fetch("model.safetensors", local_only=False)
            try:
                fetch("config.json", local_only=False)  # lands beside the weights in the cache snapshot
            except (OSError, ValueError):
                pass  # optional: it only refines normalisation and LayerNorm eps
            return weights_file
        except (OSError, ValueError) as error:  # network down, unknown repo, no such file
            reason = f"{type(error).__name__}: {first_line(error)}"
        finally:
            hub_logging.set_verbosity(verbosity)
    raise HubUnavailable(repo_id, reason)


def resolve(pretrained: str | os.PathLike) -> Path:
    """A pretrained spec (path or hub id) -> a local weights file."""
    spec = str(pretrained)
    path = Path(spec).expanduser()
    if path.is_dir():
        path = path / "model.safetensors"
        if not path.is_file():
            raise WeightsError(f"{spec}: folder has no model.safetensors")
        return path
    if path.is_file():
        return path
    if path.exists():  # a FIFO, a device, ...: named, never opened
        raise WeightsError(f"{spec}: {not_a_file(path)}")
    if _looks_like_path(spec) or spec.count("/") != 1:
        raise WeightsError(
            f"{spec}: no such file, and not a Hugging Face hub id of the form 'org/name'"
        )
    return download_from_hub(spec)


def not_a_file(path: Path) -> str | None:
    """What `path` is when it is not a regular file to read weights from (one phrase), else None.
    A FIFO or a device would block or never end: they are named, not opened."""
    if path.is_file():
        return None
    if not path.exists():
        return "no such checkpoint file"
    mode = path.stat().st_mode
    kind = ("a folder" if stat.S_ISDIR(mode) else "a named pipe (FIFO)" if stat.S_ISFIFO(mode) else
            "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "a socket" if stat.S_ISSOCK(mode) else "not a file")
    return f"{kind}, not a checkpoint file"


def check_finite(tensors: dict, source) -> None:
    """WeightsError, naming the tensor, if any floating-point weight is NaN or infinite, also once
    cast to the model's float32 (a float64 1e300 is finite until then): such a model computes NaN
    for every input, which must never be printed as a prediction."""
    for name, tensor in tensors.items():
        if isinstance(tensor, torch.Tensor) and tensor.is_floating_point() and not torch.isfinite(
                tensor.to(torch.float32) if tensor.dtype == torch.float64 else tensor).all():
            raise WeightsError(f"{source}: weight {name} holds NaN or infinite values (a damaged file, or a run that "
                               "diverged); refusing to load it")


def check_tensors(tensors, source) -> dict:
    """`tensors` if it is a dict of name -> tensor (a checkpoint's state_dict), else WeightsError."""
    if not isinstance(tensors, dict):
        raise WeightsError(f"{source}: its state_dict is a {type(tensors).__name__}, not a dict of tensors")
    wrong = next((name for name, value in tensors.items() if not isinstance(value, torch.Tensor)), None)
    if wrong is not None:
        raise WeightsError(f"{source}: state_dict entry {wrong!r} is a {type(tensors[wrong]).__name__}, not a tensor")
    return tensors


def is_layer_norm_eps(value) -> bool:
    """A LayerNorm epsilon as a file or card may give it: a number between 0 and 1."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value < 1


def normalisation(mean, std, source) -> tuple[tuple, tuple]:
    """(mean, std) as tuples of 3 floats, or WeightsError: std must be positive (it divides)."""
    for name, values in (("mean", mean), ("std", std)):
        if (not isinstance(values, (list, tuple)) or len(values) != 3
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values)):
            raise WeightsError(f"{source}: {name} {str(values)[:60]} is not 3 finite numbers, one per colour channel")
    if min(std) <= 0:
        raise WeightsError(f"{source}: std {list(std)} must be positive in every channel (inputs are divided by it)")
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)


def load_weights_only(path: str | os.PathLike):
    """torch.load with weights_only=True: tensors and plain containers only. A pickle that asks
    for anything else (a code payload) is refused before it can run. The project's one place
    that reads .pth/.pt files."""
    path = Path(path)
    if (what := not_a_file(path)) is not None:
        raise WeightsError(f"{path}: {what}")
    with open(path, "rb") as file:
        start = file.read(64)
    if not start.startswith((b"PK\x03\x04", b"\x80")):  # torch.save's zip, or its older pickle
        looks = "a text file" if start and all(32 <= b < 127 or b in b"\t\r\n" for b in start) else "some other file"
        raise WeightsError(f"{path}: not a PyTorch checkpoint (it is {looks})")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # truncated zip, foreign pickle (refused by weights_only), ...
        text = str(error)
        if "Weights only load failed" in text or "Unsupported global" in text:
            raise WeightsError(f"{path}: refused, it holds Python objects other than weights "
                               "(loading it could run code)") from None
        raise WeightsError(f"{path}: truncated or not a PyTorch checkpoint ({type(error).__name__})") from None


TORCH_SUFFIXES = (".pth", ".pt", ".bin")  # torch.save's files (a .bin: transformers' and OpenCLIP's older ones)


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    """A JAX/Flax .npz file's arrays, by their paths in the parameter tree ("params/img/..."),
    as numpy holds them (weights/layouts.py turns them into our tensors). Pickles refused."""
    try:
        with np.load(path, allow_pickle=False) as file:
            return {key: file[key] for key in file.files}
    except ValueError as error:  # an object array: it would need unpickling
        raise WeightsError(f"{path}: refused, it holds Python objects other than arrays ({error})") from None
    except Exception as error:  # not a zip, truncated, ...
        raise WeightsError(f"{path}: not a readable .npz file ({type(error).__name__}: {error})") from None


def _read_onnx(path: Path) -> tuple[dict, dict]:
    """An ONNX graph's weights under their parameter names (weights/onnx_graph.py), and the names
    of those left anonymous (extra["anonymous"])."""
    try:
        from weights.onnx_graph import read_onnx

        tensors, anonymous = read_onnx(path)
    except ImportError:
        raise WeightsError(f"{path}: reading .onnx files needs the onnx package: pip install -e \".[onnx]\"") from None
    except Exception as error:  # onnx's DecodeError and others for a file that is not a graph
        raise WeightsError(f"{path}: not a readable ONNX graph ({type(error).__name__}: {first_line(error)[:120]})") from None
    return tensors, {"anonymous": anonymous}


def find_vit(tensors: dict) -> tuple[str, Layout, dict]:
    """Where the ViT is among a larger model's tensors: (its prefix, its layout, its tensors in
    our layout). The prefix is "" for a file that is a ViT, "backbone." (or any one or two leading
    names) for one inside a model, whichever leaves keys that a layout reads whole; ValueError,
    one line, where none does."""
    candidates = [""] + sorted({m.group(0) for key in tensors for m in [re.match(r"[^.]+\.([^.]+\.)?", key)] if m}
                               | {key.split(".", 1)[0] + "." for key in tensors if "." in key}, key=len)
    for prefix in candidates:
        inside = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        try:
            layout = detect_layout(inside)
            return prefix, layout, layout.to_ours(inside)
        except ValueError:
            continue
    raise UnknownLayout(f"no ViT of a known layout among its {len(tensors)} tensors, nor under a prefix of them "
                        f"(first keys: {', '.join(list(tensors)[:4])})")


def _read_tensors(path: Path) -> tuple[dict, dict]:
    """Tensors of a .safetensors, .npz, .onnx or weights-only .pth file, and the .pth's other entries."""
    if path.suffix == ".npz":
        return _read_npz(path), {}
    if path.suffix == ".onnx":
        return _read_onnx(path)
    if path.suffix in TORCH_SUFFIXES:
        checkpoint = load_weights_only(path)
        if not isinstance(checkpoint, dict):
            raise WeightsError(f"{path}: expected a dict checkpoint, found {type(checkpoint).__name__}")
        weights_key = "model" if isinstance(checkpoint.get("model"), dict) else "state_dict"  # Meta's MAE: "model"
        tensors = check_tensors(checkpoint.get(weights_key, checkpoint), path)
        extra = {k: v for k, v in checkpoint.items() if k != weights_key}
        return tensors, extra
    with open(path, "rb") as file:
        if file.read(4) == b"PK\x03\x04":  # a zip: an .npz or a torch.save file, whatever its name
            raise WeightsError(f"{path}: a zip archive, not a .safetensors file: name it .npz (JAX) or .pth (PyTorch)")
    try:
        with safe_open(path, framework="pt") as file:
            metadata = file.metadata() or {}
            tensors = {key: file.get_tensor(key) for key in file.keys()}
    except (SafetensorError, OSError) as error:
        raise WeightsError(f"{path}: not a readable .safetensors file ({error})") from None
    # Files written by `python -m weights convert` carry what the original's config said.
    extra = {}
    for key in ("mean", "std", "layer_norm_eps", "activation"):
        if key in metadata:
            try:
                extra[key] = json.loads(metadata[key])
            except ValueError:
                raise WeightsError(f"{path}: its metadata {key}={metadata[key][:40]!r} is not JSON (not a file "
                                   "`python -m weights convert` wrote)") from None
    return tensors, extra


def _read_config(weights_file: Path) -> dict:
    """The config.json beside a weights file (timm's and Hugging Face's hub repos have one)."""
    config_file = weights_file.with_name("config.json")
    if not config_file.is_file():
        return {}
    try:
        return json.loads(config_file.read_text())
    except (OSError, ValueError):
        return {}


# Ours (vit/config.py's ACTIVATIONS) -> transformers' hidden_act, as an export writes it; reading,
# transformers' older name for the tanh GELU is taken too.
HF_ACTIVATION_NAMES = {"gelu": "gelu", "gelu_tanh": "gelu_pytorch_tanh", "quick_gelu": "quick_gelu"}
HF_ACTIVATIONS = {**{theirs: ours for ours, theirs in HF_ACTIVATION_NAMES.items()}, "gelu_new": "gelu_tanh"}


def load_pretrained(pretrained: str | os.PathLike) -> Pretrained:
    """Read pretrained weights from a path or hub id and convert them to our layout."""
    path = resolve(pretrained)
    tensors, extra = _read_tensors(path)
    ignored: list[str] = extra.pop("anonymous", [])
    try:
        if path.suffix == ".onnx":  # a graph may hold a whole model with the ViT inside it
            prefix, layout, state_dict = find_vit(tensors)
            ignored = sorted(k for k in tensors if not k.startswith(prefix)) + ignored
            tensors = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}  # (for resize_for)
        else:
            layout = detect_layout(tensors)
            state_dict = layout.to_ours(tensors)
    except ValueError as error:  # UnknownLayout, or keys the layout's table does not know
        raise WeightsError(f"{path}: {error}") from None
    check_finite(state_dict, path)
    result = Pretrained(state_dict=state_dict, source=str(path), layout=layout.name, extra=extra,
                        position_resize=layout.resize_for(set(tensors)), ignored=tuple(ignored))

    config = _read_config(path)
    if "layer_norm_eps" in extra:  # our own .pth checkpoints record it (and converted files, activation too)
        eps = extra["layer_norm_eps"]
        if not is_layer_norm_eps(eps):
            raise WeightsError(f"{path}: layer_norm_eps {str(eps)[:40]!r} is not a small positive number")
        result.layer_norm_eps = float(eps)
        result.activation = extra.get("activation")
    elif layout.hf_defaults:  # transformers' config.json, or its defaults where it is silent
        config = config.get("vision_config", config)  # a whole SiglipModel's or CLIPModel's: the image tower's
        eps, act = layout.hf_defaults
        result.layer_norm_eps = float(config.get("layer_norm_eps", eps))
        act = config.get("hidden_act", act)
        result.activation = HF_ACTIVATIONS.get(act)
        if result.activation is None:
            raise WeightsError(f"{path}: activation {act!r} in config.json is not one of {sorted(HF_ACTIVATIONS)}")
    stats = config.get("pretrained_cfg", {})  # timm's config.json
    if "image_mean" in config:  # transformers' preprocessor convention, if present
        stats = {"mean": config["image_mean"], "std": config["image_std"]}
    if "mean" in extra:
        stats = extra
    if "mean" in stats and "std" in stats:
        result.mean, result.std = normalisation(stats["mean"], stats["std"], path)
    return result


# How a position table is resized for another grid (ViTConfig.position_resize), as each code base
# does it; a file is resized as its own code would (Layout.position_resize), so it gives that
# code's outputs at any size:
POSITION_RESIZES = {
    "bicubic": "bicubic, antialiased (timm's default)",
    "bilinear": "bilinear, not antialiased (FlexiViT, RADIO; timm's reader of the JAX .npz files)",
    "bilinear_antialiased": "bilinear, antialiased (NaFlex's SigLIP 2, at every forward pass)",
    "bilinear_corners": "bilinear with the corners aligned (RADIO v3's base and huge)",
    "bicubic_plain": "bicubic, not antialiased (transformers' ViTs, at every forward pass)",
    "bicubic_offset": "bicubic, not antialiased, by the scale factor (G' + 0.1) / G (Meta's DINOv2 code)",
}


def resample_position_embedding(pos_embed: torch.Tensor, new_grid: int, num_prefix: int = 1,
                                mode: str = "bicubic") -> torch.Tensor:
    """(1, prefix+G*G, D) -> (1, prefix+new_grid**2, D): the entries of the prefix tokens (CLS,
    ...; none where positions cover only the patches) are kept, the patch entries are viewed as a
    G x G image with D channels and resized as `mode` says (POSITION_RESIZES)."""
    prefix_entries, patch_entries = pos_embed[:, :num_prefix], pos_embed[:, num_prefix:]
    old_grid = math.isqrt(patch_entries.shape[1])
    if old_grid == new_grid:
        return pos_embed
    grid = patch_entries.float().reshape(1, old_grid, old_grid, -1).permute(0, 3, 1, 2)  # (1, D, G, G)
    grid = resize_grid(grid, (new_grid, new_grid), mode)
    patch_entries = grid.permute(0, 2, 3, 1).reshape(1, new_grid * new_grid, -1).to(pos_embed.dtype)
    return torch.cat([prefix_entries, patch_entries], dim=1)


def resize_grid(grid: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    """A table laid out as an image, (1, D, rows, columns) float -> (1, D, *size), resized as `mode`
    (POSITION_RESIZES) says."""
    if mode in ("bicubic", "bicubic_plain"):
        return F.interpolate(grid, size=size, mode="bicubic", antialias=mode == "bicubic")
    if mode == "bicubic_offset":  # Meta's "historical kludge" against floating-point error, kept for its weights
        scale = tuple((new + 0.1) / old for new, old in zip(size, grid.shape[-2:]))
        return F.interpolate(grid, scale_factor=scale, mode="bicubic", antialias=False)
    return F.interpolate(grid, size=size, mode="bilinear", antialias=mode == "bilinear_antialiased",
                         align_corners=mode == "bilinear_corners")


def resample_relative_bias(table: torch.Tensor, new_grid: int) -> torch.Tensor:
    """BEiT's relative position table ((2G-1)^2 + 3, heads) for another grid, as timm (after BEiT's
    code) does it: the (2G-1) x (2G-1) offsets are placed at geometrically spaced coordinates
    (dense near offset 0, stretched outwards to span the new range), and the new integer offsets
    are read off by linear interpolation, head by head; the three CLS entries are kept."""
    offsets, extra = table[:-3].float(), table[-3:]
    old_side, new_side = math.isqrt(offsets.shape[0]), 2 * new_grid - 1
    if old_side == new_side:
        return table

    def stretched(src: int, dst: int) -> torch.Tensor:  # where the src offsets sit in the dst range
        left, right = 1.01, 1.5
        while right - left > 1e-6:  # ratio q: 1 + q + ... + q^(src//2 - 1) reaches dst // 2
            q = (left + right) / 2.0
            if (1.0 - q ** (src // 2)) / (1.0 - q) > dst // 2:
                right = q
            else:
                left = q
        distances, current = [], 1.0
        for i in range(src // 2):
            distances.append(current)
            current += q ** (i + 1)
        return torch.tensor([-d for d in reversed(distances)] + [0.0] + distances)

    source = stretched(old_side, new_side)  # (old_side,), increasing
    target = torch.arange(-(new_side // 2), new_side // 2 + 1, dtype=torch.float32)  # (new_side,)
    # Linear interpolation along each axis: index of the interval and the weight of its right end.
    index = torch.searchsorted(source, target, right=True).clamp(1, old_side - 1) - 1
    weight = ((target - source[index]) / (source[index + 1] - source[index])).clamp(0, 1)
    grid = offsets.T.reshape(-1, old_side, old_side)  # (heads, old, old): rows dy, columns dx
    rows = grid[:, index] * (1 - weight)[None, :, None] + grid[:, index + 1] * weight[None, :, None]
    both = rows[:, :, index] * (1 - weight) + rows[:, :, index + 1] * weight  # (heads, new, new)
    return torch.cat([both.reshape(both.shape[0], -1).T.to(table.dtype), extra])


def resample_offsets(table: torch.Tensor, length: int) -> torch.Tensor:
    """SAM's decomposed relative positions, one vector per offset (2G-1, head_dim), for another
    grid (2G'-1 offsets): linear interpolation along the offsets, as SAM's code does at every
    forward pass where the table and the grid differ."""
    if table.shape[0] == length:
        return table
    resized = F.interpolate(table.float().T[None], size=length, mode="linear")  # (1, head_dim, length)
    return resized[0].T.to(table.dtype)


HEADS = ("head.weight", "head.bias", "head_distillation.weight", "head_distillation.bias")


def fit_to_model(state_dict: dict[str, torch.Tensor], model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Adapt weights to `model`: resample the position embedding (and BEiT's relative position
    tables, SAM's decomposed ones) to its grid; where the classes differ (1000 ImageNet classes -> 10, or a backbone file
    without a classifier), the model keeps its fresh, zeroed head; raise WeightsError on anything
    else. (RoPE needs nothing: its angles are computed for the grid at hand.)"""
    expected = model.state_dict()
    state_dict = dict(state_dict)
    pos, model_pos = state_dict.get("position_embedding"), expected.get("position_embedding")
    num_prefix = model.cfg.num_prefix_tokens if model.cfg.positions_cover_prefix else 0
    if (pos is not None and model_pos is not None and pos.ndim == 3 and pos.shape != model_pos.shape
            and pos.shape[2] == model_pos.shape[2]):
        if math.isqrt(pos.shape[1] - num_prefix) ** 2 == pos.shape[1] - num_prefix:  # prefix + a square grid
            state_dict["position_embedding"] = resample_position_embedding(pos, model.cfg.grid_size, num_prefix,
                                                                        model.cfg.position_resize)
    for key in [k for k in state_dict if k.endswith("relative_bias.table")]:
        table = state_dict[key]
        if key in expected and table.shape != expected[key].shape and table.shape[1] == expected[key].shape[1]:
            state_dict[key] = resample_relative_bias(table, model.cfg.grid_size)
    for key in [k for k in state_dict if k.endswith(("relative_positions.rows", "relative_positions.columns"))]:
        if key in expected and state_dict[key].shape[1:] == expected[key].shape[1:]:  # SAM's global blocks
            state_dict[key] = resample_offsets(state_dict[key], expected[key].shape[0])
    theirs = {k: state_dict[k].shape for k in HEADS if k in state_dict}
    ours = {k: expected[k].shape for k in HEADS if k in expected}
    if theirs != ours:
        for key in HEADS:  # the head as a whole: the file's, or the model's fresh one
            state_dict.pop(key, None)
            if key in expected:
                state_dict[key] = expected[key]

    for key in [k for k in state_dict if k not in expected and k.endswith("bias") and not state_dict[k].any()]:
        del state_dict[key]  # a zero bias where the model has none is the same model (DINOv3's distilled files)
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    wrong_shape = [
        f"{k} {tuple(state_dict[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state_dict and state_dict[k].shape != v.shape
    ]
    problems = []
    if wrong_shape:
        problems.append(f"{len(wrong_shape)} with the wrong shape: " + "; ".join(wrong_shape[:6]))
    if missing:
        problems.append(f"{len(missing)} missing: " + ", ".join(missing[:6]))
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected: " + ", ".join(unexpected[:6]))
    if problems:
        raise WeightsError("weights do not fit the model: " + " | ".join(problems))
    return state_dict


def load_mae(pretrained: str | os.PathLike) -> tuple[Pretrained, dict[str, torch.Tensor], dict]:
    """A masked autoencoder's pretraining file (vit/mae.py): its encoder as load_pretrained reads it,
    its decoder in our names ({} for a file that holds an encoder alone: Meta's mae_pretrain_*,
    timm's *.mae) and its config in transformers' names: config.json, or the "mae" entry of a file
    from `train --objective mae` ({} where there is neither)."""
    weights = load_pretrained(pretrained)
    path = resolve(pretrained)
    decoder = {}
    if weights.layout in MAE_DECODER_PARTS:
        tensors, _ = _read_tensors(path)
        try:
            decoder = mae_decoder_to_ours(tensors, weights.layout)
        except ValueError as error:  # keys its decoder's table does not know
            raise WeightsError(f"{path}: its decoder: {first_line(error)}") from None
        check_finite(decoder, path)
    return weights, decoder, _mae_config(weights.extra["mae"], path) if "mae" in weights.extra else _read_config(path)


MAE_CONFIG = {"num_attention_heads": int, "decoder_num_attention_heads": int, "norm_pix_loss": bool}


def _mae_config(entry, path) -> dict:
    """The "mae" entry `train --objective mae` writes, each value of its type (a file can hold anything)."""
    fine = isinstance(entry, dict) and all(type(entry.get(k)) is kind for k, kind in MAE_CONFIG.items())
    if not fine or not 0 < entry["num_attention_heads"] <= 1024 or not 0 < entry["decoder_num_attention_heads"] <= 1024:
        raise WeightsError(f"{path}: its mae entry is not {{{', '.join(f'{k}: {v.__name__}' for k, v in MAE_CONFIG.items())}}}")
    return {k: entry[k] for k in MAE_CONFIG}
