"""Load a fine-tuned checkpoint and classify images with exactly training's eval preprocessing."""

import json
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch

from infer.pictures import picture_path, save_explanation
from infer import compiled
from infer.compiled import CloseCalls, CompiledModel, CompileUnavailable
from vit.checkpoint import CheckpointError, ModelCard, load_model
from vit.cli import first_line
from vit.device import AMP_DTYPES, cpu_precisions, native_bf16, pick_device
from vit.explain import attention_maps, check_explainable, last_cls_attention, rollout
from vit.export import ONNX_CARD_KEY
from vit.images import ImageError, evenly_spaced, expand_paths, list_class_folders, load_image
from vit.preprocess import to_model_input
from vit.quantize import QuantizationUnavailable, quantize_int8


class OptionError(ValueError):
    """Options that contradict each other or the checkpoint (a --topk past its classes, say)."""


class NonFiniteOutput(ArithmeticError):
    """The model computed NaN or infinite scores: no prediction is made of them."""


@dataclass
class Prediction:
    path: str
    top: list[tuple[str, float]] | None = None  # (class, probability), most likely first
    error: str | None = None


@dataclass(frozen=True)
class Precision:
    """How the model runs: 'fp32', 'bf16' or 'fp16' (autocast), 'int8' (dynamic, CPU), or, in a
    compiled package (infer/compiled.py), 'int8-bf16' (int8 layers, bf16 between them)."""

    name: str
    note: str | None = None  # one line, when this is not the precision training evaluated in
    compiled: bool = False  # a package compiled ahead of time for this CPU (it autocasts inside)

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        return None if self.compiled else AMP_DTYPES.get(self.name)


def choose_precision(device: torch.device, trained: str, amp: str = "auto", quantize: str = "auto") -> Precision:
    """The precision to classify in.

    trained: the --amp name training evaluated in ('bf16' for a GPU run, 'none' on CPU).
    amp / quantize: the flags; 'auto' lets this rule decide:
      - on a GPU, or for a checkpoint evaluated in fp32: training's precision, so that
        `--data` reproduces the accuracy training reported;
      - a GPU-trained (bf16/fp16) checkpoint on a CPU: bf16 where the CPU computes it natively
        (AMX, AVX512-BF16: vit.device.native_bf16); elsewhere bf16 is emulated, several times
        slower than fp32, so fp32, with a one-line note. int8 only when asked (--quantize int8):
        on real weights it changed 8% of the predictions (benchmarks/README.md).
    Faster precisions come from `infer --prepare` (infer/compiled.py), which checks them against
    training's on the user's images first (Classifier, not this function).
    """
    trained_name = "fp32" if trained == "none" else trained
    if quantize == "int8":
        if device.type != "cpu":
            raise OptionError("--quantize int8 runs on the CPU only (add --device cpu)")
        if amp not in ("auto", "none"):
            raise OptionError(f"--quantize int8 and --amp {amp} exclude each other (int8 layers, the rest fp32)")
        return Precision("int8", None if trained_name == "int8" else f"int8 instead of training's {trained_name}")
    if amp != "auto":
        name = "fp32" if amp == "none" else amp
        return Precision(name, None if name == trained_name else f"{name} instead of training's {trained_name} (--amp)")
    if device.type != "cpu" or trained_name == "fp32":
        return Precision(trained_name)
    if native_bf16() and quantize != "none":
        return Precision("bf16", None if trained_name == "bf16" else f"bf16 instead of training's {trained_name}")
    return Precision("fp32", f"fp32 instead of training's {trained_name}: this CPU emulates bf16, several times slower"
                     if quantize != "none" else f"fp32 instead of training's {trained_name} (--quantize none)")


class OnnxModel:
    """A model exported with `python -m weights export --format onnx`, run by ONNX Runtime on the
    CPU behind the same call as our nn.Module: (B, 3, S, S) float tensor -> (B, classes) logits.
    Its ModelCard travels in the file's metadata."""

    def __init__(self, path: str | Path):
        try:
            import onnxruntime
        except ImportError:
            raise CheckpointError(f"{path}: running .onnx models needs onnxruntime: pip install -e \".[onnx]\"") from None
        try:
            self.session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            card = json.loads(self.session.get_modelmeta().custom_metadata_map[ONNX_CARD_KEY])
        except Exception as error:  # onnxruntime raises its own exception types for broken files
            raise CheckpointError(f"{path}: not an ONNX model exported by this project ({first_line(error)[:160]})") from None
        self.card = ModelCard.from_dict(card, path)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.session.run(["logits"], {"images": images.cpu().float().numpy()})[0])

    def to(self, device):  # inputs are handed over as numpy arrays on the CPU
        return self


class Classifier:
    """A fine-tuned ViT and what it needs to read images: `Classifier("vit_cifar10_finetuned.pth")`."""

    def __init__(self, checkpoint_path: str | Path, device: str = "auto", batch_size: int | None = None,
                 workers: int = 2, amp: str = "auto", quantize: str = "auto"):
        """amp: "bf16", "fp16", "none", or "auto"; quantize: "int8", "none" or "auto": see
        `choose_precision` (auto: training's precision where the hardware runs it natively).
        batch_size: None picks 64 on a GPU, on the CPU 8 (small batches keep the activations
        in cache), or a compiled package's own batch (16). workers: image-decoding threads, beside the model's threads."""
        if amp not in ("auto", *AMP_DTYPES) or quantize not in ("auto", "int8", "none"):
            raise OptionError(f"amp {amp!r} / quantize {quantize!r}: amp is auto, bf16, fp16 or none; "
                              "quantize is auto, int8 or none")
        if Path(checkpoint_path).suffix == ".onnx":  # exported: ONNX Runtime on the CPU, in fp32
            if amp not in ("auto", "none") or quantize == "int8" or device not in ("auto", "cpu"):
                raise OptionError("an .onnx model runs on the CPU in fp32: drop --amp, --quantize and --device")
            self.model = OnnxModel(checkpoint_path)
            self.checkpoint_path, self.may_compile, self.verdict = Path(checkpoint_path), False, None  # (ORT runs it as it is)
            self.card, self.device, self.precision = self.model.card, torch.device("cpu"), Precision("fp32")
        else:
            self._load_pytorch(checkpoint_path, device, amp, quantize)
        self.class_names = list(self.card.class_names)
        self.asked_batch_size = batch_size
        self.batch_size = batch_size or self.default_batch_size()
        self.workers = workers

    def _load_pytorch(self, checkpoint_path, device: str, amp: str, quantize: str) -> None:
        try:
            self.device = pick_device(device)
        except ValueError as error:
            raise OptionError(str(error)) from None
        self.checkpoint_path = Path(checkpoint_path)
        self.may_compile = self.device.type == "cpu" and amp == "auto" and quantize == "auto"
        self.verdict = compiled.prepared(checkpoint_path) if self.may_compile else None  # `prepare`'s, kept
        if self.verdict is not None and self.verdict["package"] is not None:
            self._load_package(self.verdict)
            return
        self.model, self.card = load_model(checkpoint_path)  # CheckpointError if it is not one
        self.precision = choose_precision(self.device, self.card.eval_amp, amp, quantize)
        self.model.to(self.device)
        if self.precision.name == "int8":
            try:
                self.model = quantize_int8(self.model)
            except QuantizationUnavailable as error:
                if quantize == "int8":
                    raise OptionError(str(error)) from None
                self.precision = Precision("fp32", f"fp32: {error}")

    def default_batch_size(self) -> int:
        """64 on a GPU; on the CPU a compiled package's own (its batches are fixed: a shorter one
        would be filled up), else 8, where small batches keep the activations in cache."""
        if self.device.type == "cuda":
            return 64
        return getattr(self.model, "batch_size", 8)

    @property
    def trained_precision(self) -> str:
        return "fp32" if self.card.eval_amp == "none" else self.card.eval_amp

    def _load_package(self, verdict: dict) -> None:
        """The verdict's compiled package as the model, with the card kept beside it (the
        checkpoint itself is not read: the verdict is found by its size and modification time)."""
        self.card = ModelCard.from_dict(verdict["card"], self.checkpoint_path)
        self.model = CompiledModel(Path(verdict["package"]))
        name, trained, gap = verdict["precision"], self.trained_precision, verdict["guard"]
        if gap:
            self.model = CloseCalls(self.model, gap, self._exact)
        close = f", close calls (top two logits within {gap}) in {trained}" if gap else ""
        self.precision = Precision(name, None if name == trained else
                                   f"{name} instead of training's {trained}: compiled for this CPU{close}, checked to "
                                   "agree with it on >= 99% of your images (--quantize none for training's)",
                                   compiled=True)

    def _exact(self):
        """Training's precision, eagerly, as a function of a batch: what decides close calls."""
        model, _ = load_model(self.checkpoint_path)
        dtype = AMP_DTYPES.get(self.trained_precision)

        def run(images: torch.Tensor) -> torch.Tensor:
            with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
                return model(images)
        return run

    def prepare(self, check_paths: list[Path]) -> dict:
        """Compile this checkpoint for this CPU (infer/compiled.py) and run, from now on, at the
        fastest precision whose top-1 predictions agree with training's on >= 99% of up to
        CHECK_IMAGES of `check_paths`. "Fastest" is measured here, on these images: every
        candidate of this CPU (vit.device.cpu_precisions) is built and timed, as is training's
        precision run eagerly; each faster than the choice so far is checked (training's own
        precision needs no check), its img/s counting the close calls it must re-run
        (compiled.close_calls). Keeps the verdict and returns it, with "seconds" spent."""
        if not self.may_compile:
            raise OptionError("--prepare compiles for the CPU at the automatic precision: drop --amp, --quantize "
                              "and --device (or use --device cpu)")
        if self.verdict is not None:
            return {**self.verdict, "seconds": 0.0}
        start = time.perf_counter()
        images = [item for _, item in self.read_all(evenly_spaced(list(check_paths), compiled.CHECK_IMAGES))
                  if not isinstance(item, str)]
        trained, model = self.trained_precision, self.model
        verdict = {"precision": trained, "package": None, "guard": 0.0, "agreement": {}, "close_calls": {},
                   "img_per_s": {}, "checked_on": len(images), "card": self.card.to_dict()}
        if images:  # (a precision other than training's is never taken unchecked)
            self.precision = Precision(trained)
            reference = self._probabilities(images).argmax(dim=1)  # (N,) training's precision, eagerly
            eager = verdict["img_per_s"][f"{trained} (eager)"] = self._rate(images)
            packages, best = {}, eager  # best: img/s of the choice so far
            for name in cpu_precisions():
                if name == "fp32":  # compiled fp32 runs as fast as eager fp32 (benchmarks/README.md)
                    continue
                packages[name] = compiled.package_path(self.checkpoint_path, name)
                try:
                    compiled.build(model, self.card.img_size, name, packages[name])
                except CompileUnavailable as error:
                    raise OptionError(f"--prepare: {error}") from None
                self.model, self.precision = CompiledModel(packages[name]), Precision(name, compiled=True)
                rate = verdict["img_per_s"][name] = self._rate(images)
                if rate <= best:
                    continue  # no faster than training's precision as it is, or than a choice already made
                if name == trained:
                    calls = {"gap": 0.0, "share": 0.0, "agreement": 1.0}
                else:
                    probabilities = self._probabilities(images)  # (N, classes)
                    verdict["agreement"][name] = (probabilities.argmax(dim=1) == reference).float().mean().item()
                    calls = verdict["close_calls"][name] = compiled.close_calls(probabilities, reference)
                    if calls is None:
                        continue
                    rate = 1 / (1 / rate + calls["share"] / eager)  # its close calls run again, eagerly
                if rate > best:
                    best = rate
                    verdict.update(precision=name, package=str(packages[name]), guard=calls["gap"])
            for name, path in packages.items():
                if str(path) != verdict["package"]:
                    path.unlink(missing_ok=True)
        self.model = model
        compiled.keep_verdict(self.checkpoint_path, verdict)
        self.verdict = verdict
        if verdict["package"] is not None:
            self._load_package(verdict)
        else:
            self.precision = choose_precision(self.device, self.card.eval_amp)
        self.batch_size = self.asked_batch_size or self.default_batch_size()
        return {**verdict, "seconds": time.perf_counter() - start}

    @torch.inference_mode()
    def _rate(self, images: list[torch.Tensor]) -> float:
        """Images per second of the model and precision the classifier holds now, on a batch of
        16 of `images` (a compiled package's own size): the median of 5 runs after a first one.
        (Not the best: on a shared 2-core machine one run of the same batch took 53 to 89 img/s
        within a second, and the best of a few was 1.6x what a run of 1,000 images kept up.)"""
        batch = torch.cat((images * 16)[:16])
        seconds = []
        for _ in range(6):
            begin = time.perf_counter()
            self.probabilities(batch)
            seconds.append(time.perf_counter() - begin)
        return len(batch) / sorted(seconds[1:])[2]

    def _probabilities(self, images: list[torch.Tensor]) -> torch.Tensor:
        """(N, classes) probabilities of N images (model inputs), as `classify` gives them with the
        model and precision the classifier holds now."""
        batch = 16  # (a compiled package's own)
        return torch.cat([self.probabilities(torch.cat(images[i:i + batch])) for i in range(0, len(images), batch)])

    def preprocess(self, image: torch.Tensor) -> torch.Tensor:
        """(3, H, W) uint8 -> (1, 3, S, S) model input: training's evaluation preprocessing."""
        card = self.card
        return to_model_input(image[None].to(self.device), card.img_size, card.mean, card.std, card.source_size)

    @torch.inference_mode()
    def probabilities(self, inputs: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) model input -> (B, num_classes) class probabilities."""
        dtype = self.precision.autocast_dtype
        with torch.autocast(self.device.type, dtype=dtype, enabled=dtype is not None):
            probabilities = self.model(inputs).float().softmax(dim=1)
        if not torch.isfinite(probabilities).all():
            raise NonFiniteOutput(f"the model's outputs are NaN or infinite in {self.precision.name}; no prediction "
                                  "is made of them" + (" (try --amp none)" if dtype is not None else ""))
        return probabilities

    def _read(self, path: Path):
        try:
            return self.preprocess(load_image(path, self.card.source_size or self.card.img_size))
        except ImageError as error:
            return str(error)

    def read_all(self, paths: list[str | Path]):
        """Yield (path, model input or error message) in input order. Threads decode up to two
        batches ahead, so reading the next batch overlaps the model's work on this one."""
        with ThreadPoolExecutor(max(1, self.workers)) as pool:
            ahead = deque()
            for path in paths:
                ahead.append((path, pool.submit(self._read, path)))
                if len(ahead) > 2 * self.batch_size:
                    path_, future = ahead.popleft()
                    yield path_, future.result()
            while ahead:
                path_, future = ahead.popleft()
                yield path_, future.result()

    def classify(self, paths: list[str | Path], topk: int = 1) -> list[Prediction]:
        """A Prediction per path, in order (an unreadable image's has `.error` instead of `.top`)."""
        return list(self.iter_classify(paths, topk))

    def iter_classify(self, paths: list[str | Path], topk: int = 1):
        """classify's Predictions one by one, as they are ready (batching the readable images)."""
        if not 1 <= topk <= len(self.class_names):
            raise OptionError(f"--topk {topk}: choose 1 to {len(self.class_names)} (the model's classes)")
        pending = []

        def flush():
            probs = self.probabilities(torch.cat([x for _, x in pending]))
            values, indices = probs.topk(topk, dim=1)
            for (path, _), v, i in zip(pending, values.tolist(), indices.tolist()):
                yield Prediction(str(path), top=[(self.class_names[c], p) for c, p in zip(i, v)])
            pending.clear()

        for path, item in self.read_all(paths):
            if isinstance(item, str):
                yield from flush() if pending else ()
                yield Prediction(str(path), error=item)
                continue
            pending.append((path, item))
            if len(pending) == self.batch_size:
                yield from flush()
        if pending:
            yield from flush()

    def explain(self, paths: list[str | Path], out_dir: str | Path) -> list[tuple[Prediction, Path | None]]:
        """Classify each image and write OUT_DIR/<stem>.png showing what the model looked at
        (vit/explain.py: attention rollout, and the last block's CLS attention per head):
        (Prediction, the picture's path, None for an unreadable image) per path. A picture from an
        earlier call for the same input is overwritten; two inputs of one name get <stem>-2.png."""
        return list(self.iter_explain(paths, out_dir))

    def iter_explain(self, paths: list[str | Path], out_dir: str | Path):
        """explain's (Prediction, picture) pairs one by one, each picture written before it is yielded."""
        if not isinstance(self.model, torch.nn.Module) or self.precision.name == "int8":
            raise OptionError("--explain needs the PyTorch model in full precision: a .pth checkpoint, --quantize none")
        try:
            check_explainable(self.model.cfg)
        except ValueError as error:
            raise OptionError(f"--explain: {error}") from None
        out_dir, taken = Path(out_dir), set()
        out_dir.mkdir(parents=True, exist_ok=True)
        for path, item in self.read_all(paths):
            if isinstance(item, str):
                yield Prediction(str(path), error=item), None
                continue
            probs = self.probabilities(item)[0]
            confidence, index = probs.max(0)
            prediction = Prediction(str(path), top=[(self.class_names[index], confidence.item())])
            maps = attention_maps(self.model, item)  # one pass serves the rollout and the per-head views
            picture = picture_path(out_dir, Path(path).stem, taken)
            cfg = self.model.cfg  # where the prefix tokens (CLS, ...) are
            save_explanation(picture, item[0], self.card.mean, self.card.std, rollout(maps, cfg)[0],
                             last_cls_attention(maps, cfg)[0],
                             f"{Path(path).name}: {prediction.top[0][0]} ({confidence.item():.1%})",
                             patch_size=cfg.token_stride, reader="CLS" if cfg.class_token else "mean patch-token")
            yield prediction, picture

    def evaluate_folder(self, folder: Path) -> dict:
        """Accuracy over a labelled folder (folder/<class>/<image>, class names as in training)."""
        folder = Path(folder)
        if not folder.is_dir():
            raise ImageError(f"{folder}: no such folder")
        classes = list_class_folders(folder)
        if not set(classes) <= set(self.class_names):
            for split in ("test", "val"):
                if (folder / split).is_dir():
                    return self.evaluate_folder(folder / split)
            unknown = sorted(set(classes) - set(self.class_names))
            raise ImageError(f"{folder}: class folders {unknown} are not classes of this model ({', '.join(self.class_names)})")

        paths, labels = [], []
        for name in classes:
            files = expand_paths([folder / name])
            paths += files
            labels += [self.class_names.index(name)] * len(files)
        if not paths:
            raise ImageError(f"{folder}: no images found (expected {folder}/<class>/<image>)")
        k = min(5, len(self.class_names))
        correct1 = correct5 = 0
        per_class = {name: [0, 0] for name in classes}  # [correct, total]
        errors = []
        for prediction, label in zip(self.iter_classify(paths, topk=k), labels):
            if prediction.error:
                errors.append((prediction.path, prediction.error))
                continue
            names = [c for c, _ in prediction.top]
            truth = self.class_names[label]
            correct1 += names[0] == truth
            correct5 += truth in names
            per_class[truth][0] += names[0] == truth
            per_class[truth][1] += 1
        counted = len(paths) - len(errors)
        return {"images": counted, "top1": correct1 / max(1, counted), f"top{k}": correct5 / max(1, counted),
                "per_class": {n: c / t for n, (c, t) in per_class.items() if t}, "errors": errors}
