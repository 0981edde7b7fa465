"""Classify images with a fine-tuned checkpoint, with exactly training's eval preprocessing:
`Classifier(path).classify([...])`, `.explain(...)`, `.evaluate_folder(...)`. Which precision it
runs in is infer/precision.py's rule; a checkpoint prepared for this CPU (infer/prepare.py) runs
its compiled package (infer/compiled.py)."""

import json
import sys
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch

from infer import cache, compiled, prepare
from infer.compiled import CloseCalls, CompiledModel, CompileUnavailable
from infer.runtimes import RUNTIMES
from infer.export import ONNX_CARD_KEY
from infer.images import ImageError, expand_paths, list_class_folders, load_image
from infer.pictures import picture_path, save_explanation
from infer.precision import NonFiniteOutput, OptionError, Precision, choose_precision, probabilities, to_probabilities
from infer.preprocess import to_model_input
from vit.checkpoint import AMP_DTYPES, CheckpointError, ModelCard, load_model
from vit.cli import first_line, pick_device
from vit.explain import attention_maps, check_explainable, last_cls_attention, rollout
from weights.load import not_a_file

__all__ = ["Classifier", "Prediction", "OptionError", "NonFiniteOutput", "Precision", "choose_precision"]


@dataclass
class Prediction:
    path: str
    top: list[tuple[str, float]] | None = None  # (class, probability), most likely first
    error: str | None = None


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


def how_it_runs(precision: str) -> str:
    """A verdict's precision, said: ours compiled, or another runtime (infer/runtimes.py)."""
    if precision in RUNTIMES:
        return "run by ONNX Runtime (the checkpoint's own ONNX export)"
    return "compiled for this CPU"


class CloseCallQueue:
    """A job's close calls (infer/compiled.CloseCalls), gathered across batches and decided
    CLOSE_BATCH at a time, instead of one or two per batch. Where the decider is a second opinion
    with close calls of its own (a cascade: infer/prepare.py), those are gathered in turn, a step
    further. The batches wait, in order, until every close call of theirs is decided (at most
    MAX_WAITING of them); a batch with none undecided, at the head of the queue, goes at once."""

    MAX_WAITING = 64  # batches held back at most (1,024 images of 16): a long run's results keep coming

    def __init__(self, model: CloseCalls):
        self.model, self.batches = model, deque()  # [paths, logits (B, classes), rows undecided]
        self.steps = []  # per step of the cascade: [batch, row, input (3, S, S)] waiting for its decider

    def add(self, paths: list, inputs: torch.Tensor):
        """Run a batch's fast model; yield (paths, logits) of every batch now decided, in order."""
        logits, close = self.model.split(inputs)
        batch = [paths, logits, int(close.sum())]
        self.batches.append(batch)
        self.wait(0, [[batch, row, image] for row, image in zip(close.nonzero().flatten().tolist(), inputs[close])])
        step = 0
        while step < len(self.steps):  # (a step's decisions may add to the next)
            while len(self.steps[step]) >= compiled.CLOSE_BATCH:
                self.decide(step)
            step += 1
        if len(self.batches) > self.MAX_WAITING:
            yield from self.settle()
        while self.batches and self.batches[0][2] == 0:
            paths_, logits_, _ = self.batches.popleft()
            yield paths_, logits_

    def wait(self, step: int, items: list):
        """Queue close calls ([batch, row, input] each) for the decider of `step`."""
        if items:
            self.steps += [[] for _ in range(step + 1 - len(self.steps))]
            self.steps[step] += items

    def decide(self, step: int):
        """Decide up to CLOSE_BATCH close calls waiting at `step`: the decider's logits replace the
        rows; a second opinion's own close calls go on to the next step."""
        items, self.steps[step] = self.steps[step][:compiled.CLOSE_BATCH], self.steps[step][compiled.CLOSE_BATCH:]
        asking = self.model  # the CloseCalls whose decider decides this step
        for _ in range(step):
            asking = asking.decider()
        decider, images = asking.decider(), torch.stack([image for _, _, image in items])
        if isinstance(decider, CloseCalls):
            logits, again = decider.split(images)
        else:
            logits, again = decider(images).float(), torch.zeros(len(items), dtype=torch.bool)
        for item, row_logits, close in zip(items, logits, again.tolist()):
            item[0][1][item[1]] = row_logits
            if close:
                self.wait(step + 1, [item])
            else:
                item[0][2] -= 1

    def settle(self):
        """Decide every waiting close call, CLOSE_BATCH at a time, step by step; yield every batch, in order."""
        step = 0
        while step < len(self.steps):
            while self.steps[step]:
                self.decide(step)
            step += 1
        while self.batches:
            paths_, logits_, _ = self.batches.popleft()
            yield paths_, logits_


class Classifier:
    """A fine-tuned ViT and what it needs to read images: `Classifier("vit_cifar10_finetuned.pth")`."""

    def __init__(self, checkpoint_path: str | Path, device: str = "auto", batch_size: int | None = None,
                 workers: int = 2, amp: str = "auto", quantize: str = "auto"):
        """amp: "bf16", "fp16", "none", or "auto"; quantize: "int8", "none" or "auto": see
        infer/precision.py (auto: training's precision where the hardware runs it natively, or what
        `prepare` checked). batch_size: None picks 64 on a GPU, on the CPU 8 (small batches keep
        the activations in cache), or a compiled package's own batch (16). workers: image-decoding
        threads, beside the model's threads."""
        if amp not in ("auto", *AMP_DTYPES) or quantize not in ("auto", "int8", "none"):
            raise OptionError(f"amp {amp!r} / quantize {quantize!r}: amp is auto, bf16, fp16 or none; "
                              "quantize is auto, int8 or none")
        self.checkpoint_path, self.exact_model, self.verdict = Path(checkpoint_path), None, None
        self.exact_decider = self.second_decider = None  # what decides close calls, loaded on the first (`decider`)
        self.notes: list[str] = []  # one line each, for whoever runs it (python -m infer prints them)
        if self.checkpoint_path.suffix == ".onnx":  # exported: ONNX Runtime on the CPU, in fp32
            if (what := not_a_file(self.checkpoint_path)) is not None:  # a FIFO or a device would never end
                raise CheckpointError(f"{checkpoint_path}: {what}")
            if amp not in ("auto", "none") or quantize == "int8" or device not in ("auto", "cpu"):
                raise OptionError("an .onnx model runs on the CPU in fp32: drop --amp, --quantize and --device")
            self.model = OnnxModel(checkpoint_path)
            self.may_compile = False  # (ONNX Runtime runs it as it is)
            self.card, self.device, self.precision = self.model.card, torch.device("cpu"), Precision("fp32")
        else:
            self._load_pytorch(device, amp, quantize)
        self.class_names = list(self.card.class_names)
        self.asked_batch_size = batch_size
        self.batch_size = batch_size or self.default_batch_size()
        self.workers = workers

    def _load_pytorch(self, device: str, amp: str, quantize: str) -> None:
        try:
            self.device = pick_device(device)
        except ValueError as error:
            raise OptionError(str(error)) from None
        self.may_compile = self.device.type == "cpu" and amp == "auto" and quantize == "auto"
        self.verdict = self._kept_verdict() if self.may_compile else None  # `prepare`'s, checked
        if self.verdict is not None and self.verdict["package"] is not None:
            try:
                self._load_package(self.verdict)
                return
            except Exception as error:  # it passed every check, but its native code will not load here
                self.notes.append(f"not using the compiled package: it cannot be loaded ({first_line(error)[:160]}); "
                                  "running the model as trained")
                self.verdict = None
        self.model, self.card = load_model(self.checkpoint_path)  # CheckpointError if it is not one
        self.exact_model = self.model
        self.precision = choose_precision(self.device, self.card.eval_amp, amp, quantize)
        self.model.to(self.device)
        if self.precision.name == "int8":  # asked for: the int8 package, built once (compiled.int8_package)
            try:
                package = compiled.int8_package(self.checkpoint_path, self.model, self.card.img_size)
            except (CompileUnavailable, cache.CacheUnsafe) as error:
                raise OptionError(f"--quantize int8: {error}") from None
            self.model = CompiledModel(package, self.card.img_size)

    def _kept_verdict(self) -> dict | None:
        """`prepare`'s verdict for this checkpoint, where the cache can be trusted with it
        (infer/cache.py); otherwise None, with the reason as a note: the exact model runs."""
        try:
            return cache.read_verdict(self.checkpoint_path)
        except (cache.CacheUnsafe, cache.VerdictUnusable) as error:
            self.notes.append(f"not using the compiled package: {error}; running the model as trained")
            return None

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
        checkpoint itself is not read unless a close call or an explanation needs the exact model).
        The verdict is one cache.read_verdict checked, package and all, or one `prepare` just wrote."""
        self.card = ModelCard.from_dict(verdict["card"], self.checkpoint_path)
        name, trained, gap = verdict["precision"], self.trained_precision, verdict["guard"]
        self.model = prepare.load(cache.package_path(verdict), name, verdict["img_size"])
        second = verdict.get("second") if gap else None
        if gap:
            self.model = CloseCalls(self.model, gap, (lambda: self.second_opinion(verdict)) if second else
                                    lambda: self.decider(verdict))
        exact = f"{trained}{', compiled' if verdict.get('exact_package') else ''}"
        close = (f", close calls (top two logits within {gap}) in {second}, and its own (within "
                 f"{verdict['second_guard']}) in {exact}" if second else
                 f", close calls (top two logits within {gap}) in {exact}" if gap else "")
        self.precision = Precision(name, None if name == trained else
                                   f"{name} instead of training's {trained}: {how_it_runs(name)}{close}, checked to "
                                   "agree with it on >= 99% of your images (--quantize none for training's)",
                                   compiled=True)

    def exact(self) -> torch.nn.Module:
        """The PyTorch model as trained (read from the checkpoint once, where a package runs instead):
        what decides close calls and what explanations read."""
        if self.exact_model is None:
            self.exact_model, _ = load_model(self.checkpoint_path)
            self.exact_model.to(self.device)
        return self.exact_model

    def decider(self, verdict: dict):
        """Training's precision, deciding close calls: (b, 3, S, S) -> (b, classes) logits. The
        package compiled in it where the verdict has one (exact_package), else the model as trained,
        eagerly; loaded once, on the first close call. A package that will not load (it passed every
        check, but its native code fails here) gives way to the model as trained, said once on stderr."""
        if self.exact_decider is None and verdict.get("exact_package"):
            try:
                self.exact_decider = prepare.load(cache.package_path(verdict, "exact_package"),
                                                  self.trained_precision, verdict["img_size"])
            except Exception as error:  # an optional speed-up never stops a job
                print(f"note: close calls run eagerly: their compiled package cannot be loaded "
                      f"({first_line(error)[:160]})", file=sys.stderr)
        if self.exact_decider is None:
            model, dtype = self.exact(), AMP_DTYPES.get(self.card.eval_amp)

            @torch.inference_mode()
            def eager(images):  # in training's precision, as its package would have run
                with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
                    return model(images)
            self.exact_decider = eager
        return self.exact_decider

    def second_opinion(self, verdict: dict):
        """The verdict's second opinion on close calls (infer/prepare.py): its package, whose own
        close calls (within second_guard) go on to training's precision (`decider`); loaded once, on
        the first close call. Where it will not load, training's precision decides them all (said
        once on stderr): slower, never less exact."""
        if self.second_decider is None:
            try:
                package = prepare.load(cache.package_path(verdict, "second_package"), verdict["second"],
                                       verdict["img_size"])
                self.second_decider = CloseCalls(package, verdict["second_guard"], lambda: self.decider(verdict))
            except Exception as error:  # an optional speed-up never stops a job
                print(f"note: close calls run in {self.trained_precision}: their second opinion cannot be loaded "
                      f"({first_line(error)[:160]})", file=sys.stderr)
                self.second_decider = self.decider(verdict)
        return self.second_decider

    def prepare(self, check_paths: list[Path]) -> dict:
        """Compile this checkpoint for this CPU and run, from now on, at the fastest precision that
        agrees with training's on the user's images: infer/prepare.py measures, infer/precision.py
        chooses. Returns the kept verdict, with "seconds" spent."""
        if not self.may_compile:
            raise OptionError("--prepare compiles for the CPU at the automatic precision: drop --amp, --quantize "
                              "and --device (or use --device cpu)")
        if self.verdict is not None:
            return {**self.verdict, "seconds": 0.0}
        images = [item for _, item in self.read_all(prepare.check_images(check_paths)) if not isinstance(item, str)]
        verdict = prepare.prepare(self.checkpoint_path, self.exact(), self.card, images)
        self.verdict = {key: value for key, value in verdict.items() if key != "seconds"}
        if verdict["package"] is not None:
            self._load_package(verdict)
        else:
            self.precision = choose_precision(self.device, self.card.eval_amp)
        self.batch_size = self.asked_batch_size or self.default_batch_size()
        return verdict

    def preprocess(self, image: torch.Tensor) -> torch.Tensor:
        """(3, H, W) uint8 -> (1, 3, S, S) model input: training's evaluation preprocessing."""
        card = self.card
        return to_model_input(image[None].to(self.device), card.img_size, card.mean, card.std, card.source_size)

    def probabilities(self, inputs: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) model input -> (B, num_classes) class probabilities."""
        return probabilities(self.model, inputs, self.precision, self.device)

    def _decode(self, path: Path):
        """One image decoded, (3, H, W) uint8, or why it cannot be: what the decoding threads do."""
        try:
            return load_image(path, self.card.source_size or self.card.img_size)
        except ImageError as error:
            return str(error)

    def read_all(self, paths: list[str | Path]):
        """Yield (path, model input or error message) in input order. Threads decode up to two
        batches ahead, so reading the next batch overlaps the model's work on this one; the
        resize to the model's input runs here, in the calling thread: a PyTorch op in a decoding
        thread starts a team of OpenMP threads of its own, which fights the model's for the
        cores (on 2 cores the model's batches ran slower: benchmarks/README.md, "Whole runs")."""
        def model_input(item):
            return item if isinstance(item, str) else self.preprocess(item)

        with ThreadPoolExecutor(max(1, self.workers)) as pool:
            ahead = deque()
            for path in paths:
                ahead.append((path, pool.submit(self._decode, path)))
                if len(ahead) > 2 * self.batch_size:
                    path_, future = ahead.popleft()
                    yield path_, model_input(future.result())
            while ahead:
                path_, future = ahead.popleft()
                yield path_, model_input(future.result())

    def classify(self, paths: list[str | Path], topk: int = 1) -> list[Prediction]:
        """A Prediction per path, in order (an unreadable image's has `.error` instead of `.top`)."""
        return list(self.iter_classify(paths, topk))

    def iter_classify(self, paths: list[str | Path], topk: int = 1):
        """classify's Predictions one by one, as they are ready (batching the readable images)."""
        if not 1 <= topk <= len(self.class_names):
            raise OptionError(f"--topk {topk}: choose 1 to {len(self.class_names)} (the model's classes)")
        pending = []  # (path, model input) of the batch being gathered
        waiting = CloseCallQueue(self.model) if isinstance(self.model, CloseCalls) else None

        def predictions(paths_, probs):
            values, indices = probs.topk(topk, dim=1)
            for path_, v, i in zip(paths_, values.tolist(), indices.tolist()):
                yield Prediction(str(path_), top=[(self.class_names[c], p) for c, p in zip(i, v)])

        def flush():
            inputs, paths_ = torch.cat([x for _, x in pending]), [path_ for path_, _ in pending]
            pending.clear()
            if waiting is None:
                yield from predictions(paths_, self.probabilities(inputs))
                return
            for batch_paths, logits in waiting.add(paths_, inputs):  # those whose close calls are decided, in order
                yield from predictions(batch_paths, to_probabilities(logits, self.precision))

        for path, item in self.read_all(paths):
            if isinstance(item, str):
                yield from flush() if pending else ()
                for batch_paths, logits in waiting.settle() if waiting else ():  # (kept in input order)
                    yield from predictions(batch_paths, to_probabilities(logits, self.precision))
                yield Prediction(str(path), error=item)
                continue
            pending.append((path, item))
            if len(pending) == self.batch_size:
                yield from flush()
        if pending:
            yield from flush()
        for batch_paths, logits in waiting.settle() if waiting else ():
            yield from predictions(batch_paths, to_probabilities(logits, self.precision))

    def explain(self, paths: list[str | Path], out_dir: str | Path) -> list[tuple[Prediction, Path | None]]:
        """Classify each image and write OUT_DIR/<stem>.png showing what the model looked at
        (vit/explain.py: attention rollout, and the last block's CLS attention per head):
        (Prediction, the picture's path, None for an unreadable image) per path. A picture from an
        earlier call for the same input is overwritten; two inputs of one name get <stem>-2.png."""
        return list(self.iter_explain(paths, out_dir))

    def iter_explain(self, paths: list[str | Path], out_dir: str | Path):
        """explain's (Prediction, picture) pairs one by one, each picture written before it is yielded."""
        if isinstance(self.model, OnnxModel):
            raise OptionError("--explain reads the PyTorch model's attention: a .pth checkpoint, not an .onnx file")
        model = self.exact()  # the attention maps are the model's as trained (a package has none to read)
        try:
            check_explainable(model.cfg)
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
            maps = attention_maps(model, item)  # one pass serves the rollout and the per-head views
            picture = picture_path(out_dir, Path(path).stem, taken)
            cfg = model.cfg  # where the prefix tokens (CLS, ...) are
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
