"""CPU inference: ours against ONNX Runtime and OpenVINO, on the same model, images and machine.

    python -m benchmarks.cpu_runtimes                    # ViT-S/16 and ViT-B/16 at 224 px, 1,000 images
    python -m benchmarks.cpu_runtimes --agreement runs/probe/vit_data_finetuned.pth
    python -m benchmarks.cpu_runtimes --models --agreement runs/probe/vit_cifar10_linear_probe.pth   # that alone
    python -m benchmarks.cpu_runtimes --models --agreement CK --defaults-only    # infer's defaults alone
    python -m benchmarks.cpu_runtimes --isa avx2         # ours capped at AVX2 (ATEN_CPU_CAPABILITY, ONEDNN_MAX_CPU_ISA)

For each model it prints, in one run:

  model only     img/s at batch 16 of each path: ours in fp32, bf16 (autocast) and compiled
                 (infer/compiled.py's package, in each of this CPU's precisions); ONNX Runtime fp32 and dynamic int8 (its quantize_dynamic); OpenVINO
                 with its defaults (bf16 where the CPU has bf16 instructions) and in f32;
  whole process  seconds from launch to the last prediction for --num-images CIFAR-10 test images:
                 `python -m infer` with its defaults (after `infer --prepare --data` on these images,
                 which keeps the fastest precision that agrees on >= 99%) and in training's fp32, and a
                 lean script per runtime (numpy and PIL, no torch), best of --repeats;
  start-up       the same commands on one image: seconds from launch to the first prediction;
  agreement      top-1 agreement of every path with ours in fp32, and of `infer`'s defaults after
                 `infer --prepare` (with their close calls re-run), on the same inputs: CIFAR-10 test
                 images other than those the prepare checked on.

The timed checkpoints are stand-ins: the model's architecture with random weights, saved as
`train` saves an fp32 fine-tune (speed does not depend on the weights). Agreement needs a model
that learned something: --agreement CHECKPOINT (a real fine-tune) measures it on that model and
the same images; without it the row is left out. Preparing each path (our package, the ONNX
exports, ORT's int8 file) is timed and printed apart, as the ahead-of-time step it is.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CIFAR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cifar10-jpg"
CLASSES = "airplane automobile bird cat deer dog frog horse ship truck".split()
BATCH = 16
AVX2 = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}


# --- The lean scripts a deployer would write for ONNX Runtime and OpenVINO (no torch imported)

def lean_worker(kind: str, model_path: str, folder: str, f32: bool) -> None:
    """Classify every image of `folder` and print one line each: what `--worker` runs."""
    import numpy as np
    from PIL import Image

    meta = json.loads(Path(model_path).with_suffix(".json").read_text())
    size, mean, std = meta["img_size"], np.array(meta["mean"], np.float32), np.array(meta["std"], np.float32)
    if kind == "ort":
        import onnxruntime

        session = onnxruntime.InferenceSession(model_path, providers=["CPUExecutionProvider"])
        run = lambda batch: session.run(None, {"images": batch})[0]  # noqa: E731
    else:
        import openvino

        config = {"INFERENCE_PRECISION_HINT": "f32"} if f32 else {}
        compiled = openvino.Core().compile_model(model_path, "CPU", config)
        request = compiled.create_infer_request()
        run = lambda batch: request.infer({0: batch})[0]  # noqa: E731
    paths = sorted(p for p in Path(folder).iterdir() if p.suffix == ".jpg")
    for start in range(0, len(paths), BATCH):
        chunk = paths[start:start + BATCH]
        pixels = [np.asarray(Image.open(p).convert("RGB").resize((size, size), Image.BILINEAR), np.float32) / 255
                  for p in chunk]
        batch = ((np.stack(pixels) - mean) / std).transpose(0, 3, 1, 2).copy()
        for path, logits in zip(chunk, run(batch)):
            print(f"{path.name}: {meta['class_names'][int(logits.argmax())]}")


# --- Setting up: stand-in checkpoints, exports, packages

def stand_in(name: str, folder: Path) -> Path:
    """A checkpoint of `name` at 224 px, 10 classes, random weights, saved as `train` saves an fp32 run."""
    import torch

    import vit
    from vit.checkpoint import ModelCard, save_model

    torch.manual_seed(0)
    model = vit.create_model(name, num_classes=10)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.02)  # (a zero head would make every prediction a tie)
    path = folder / f"{name}.pth"
    save_model(path, model, ModelCard(name, 224, tuple(CLASSES), (0.5,) * 3, (0.5,) * 3, architecture=model.cfg))
    return path


def prepare(checkpoint: Path, folder: Path, images: Path) -> dict:
    """The ahead-of-time steps of each path, timed: `infer --prepare` (checked on `images`: the
    default's choice), the ONNX export, ORT's int8 file; and each compiled precision built alone."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from infer import compiled
    from infer.predict import Classifier
    from vit.checkpoint import load_model
    from infer.precision import cpu_precisions
    from infer.export import export
    from infer.images import expand_paths

    seconds = {}
    verdict = Classifier(checkpoint, device="cpu").prepare(expand_paths([images]))
    seconds["ours: infer --prepare"] = verdict["seconds"]
    model, card = load_model(checkpoint)
    packages = {}
    for precision in cpu_precisions():  # (fp32 compiled too: what decides close calls where it is faster)
        packages[precision] = folder / f"{checkpoint.stem}-{precision}.pt2"
        if not packages[precision].exists():
            compiled.build(model, card.img_size, precision, packages[precision])
    onnx = folder / f"{checkpoint.stem}.onnx"
    start = time.perf_counter()
    export(checkpoint, "onnx", onnx)
    seconds["weights export --format onnx"] = time.perf_counter() - start
    int8 = onnx.with_name(f"{checkpoint.stem}.int8.onnx")
    start = time.perf_counter()
    quantize_dynamic(str(onnx), str(int8), weight_type=QuantType.QInt8)
    seconds["ORT quantize_dynamic"] = time.perf_counter() - start
    meta = {"img_size": card.img_size, "mean": list(card.mean), "std": list(card.std), "class_names": list(card.class_names)}
    for path in (onnx, int8):
        path.with_suffix(".json").write_text(json.dumps(meta))
    return {"seconds": seconds, "onnx": onnx, "int8": int8, "packages": packages, "verdict": verdict}


def chose(verdict: dict) -> str:
    """What `infer --prepare` chose, and what it measured to choose it, in one line."""
    from infer.predict import how_it_runs

    how = how_it_runs(verdict["precision"]) if verdict["package"] else "eagerly"
    decided = "compiled" if verdict.get("exact_package") else "eagerly"
    second = (f"close calls within {verdict['guard']} in {verdict['second']}, its own within "
              f"{verdict['second_guard']} in fp32, {decided}: {json.dumps(verdict['second_calls'])}"
              if verdict.get("second") else f"close calls within {verdict['guard']} in fp32, {decided}")
    return (f"chose {verdict['precision']} ({how}, {second}); "
            f"agreement on {verdict['checked_on']} images: "
            f"{json.dumps(verdict['agreement'])}, with close calls re-run: {json.dumps(verdict['close_calls'])}"
            + (f"; not checked (no faster than one that agreed): {', '.join(verdict['unchecked'])}"
               if verdict.get("unchecked") else ""))


# --- Model only

def model_paths(checkpoint: Path, files: dict, skip_other_runtimes: bool) -> dict:
    """name -> (B, 3, S, S) float tensor -> (B, classes) logits, for each path."""
    import numpy as np
    import torch

    from infer.compiled import CompiledModel
    from vit.checkpoint import load_model

    model, _ = load_model(checkpoint)

    def bf16(x):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return model(x).float()

    paths = {"ours fp32": model, "ours bf16 (autocast)": bf16}
    size = files["verdict"]["card"]["img_size"]
    paths.update({f"ours compiled {precision}": CompiledModel(package, size) for precision, package in files["packages"].items()})
    if skip_other_runtimes:
        return paths
    import onnxruntime
    import openvino

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    for label, key in (("ORT fp32", "onnx"), ("ORT int8", "int8")):
        session = onnxruntime.InferenceSession(str(files[key]), options, providers=["CPUExecutionProvider"])
        paths[label] = lambda x, s=session: torch.from_numpy(s.run(None, {"images": x.numpy()})[0])
    core = openvino.Core()
    for label, config in (("OpenVINO default", {}), ("OpenVINO f32", {"INFERENCE_PRECISION_HINT": "f32"})):
        request = core.compile_model(str(files["onnx"]), "CPU", config).create_infer_request()
        paths[label] = lambda x, r=request: torch.from_numpy(np.array(r.infer({0: x.numpy()})[0]))
    paths["OpenVINO default"].precision = core.compile_model(str(files["onnx"]), "CPU").get_property(
        "INFERENCE_PRECISION_HINT").get_type_name()  # what its defaults chose on this CPU
    return paths


def throughput(fn, batch, rounds: int = 4) -> float:
    import torch

    with torch.inference_mode():
        fn(batch), fn(batch)  # warm-up: first-call allocation and kernel selection
        start = time.perf_counter()
        for _ in range(rounds):
            fn(batch)
        return rounds * len(batch) / (time.perf_counter() - start)


def agreement(paths: dict, images) -> dict[str, float]:
    """Top-1 agreement of each path with ours in fp32, on the same preprocessed images."""
    import torch

    with torch.inference_mode():
        reference = torch.cat([paths["ours fp32"](chunk) for chunk in images.split(BATCH)]).argmax(1)
        return {label: (torch.cat([fn(chunk).float() for chunk in images.split(BATCH)]).argmax(1) == reference)
                .float().mean().item() for label, fn in paths.items()}


def real_inputs(checkpoint: Path, count: int, skip: int):
    """`count` CIFAR-10 test images (the same per class), after the first `skip` of each class
    (those `infer --prepare` checked on), as the checkpoint's model input."""
    import torch

    from infer.predict import Classifier
    from infer.images import load_image

    classifier = Classifier(checkpoint, device="cpu", quantize="none")
    files = [CIFAR / "test" / name / f"{i:04d}.jpg" for i in range(skip, skip + count // 10) for name in CLASSES]
    size = classifier.card.source_size or classifier.card.img_size
    return torch.cat([classifier.preprocess(load_image(path, size)) for path in files])


# --- Whole process

def image_folder(count: int, root: Path, keep: int | None = None) -> Path:
    """`count` CIFAR-10 test images (the same number per class) as one flat folder of links; with
    `keep`, only the first `keep` of them."""
    folder = root / f"images-{count if keep is None else keep}"
    folder.mkdir(exist_ok=True)
    links = [(folder / f"{name}-{i:04d}.jpg", CIFAR / "test" / name / f"{i:04d}.jpg")
             for i in range(count // 10) for name in CLASSES]
    for link, image in links[:keep]:
        if not link.exists():
            link.symlink_to(image)
    return folder


def whole_process(commands: dict, repeats: int, env: dict) -> dict[str, float]:
    """Seconds from launch to exit of each command, best of `repeats` (alternating, so drift hits all)."""
    best = {label: float("inf") for label in commands}
    for _ in range(repeats):
        for label, command in commands.items():
            start = time.perf_counter()
            result = subprocess.run(command, capture_output=True, text=True, env={**os.environ, **env})
            seconds = time.perf_counter() - start
            if result.returncode != 0:
                raise RuntimeError(f"{label} failed: {result.stderr.strip().splitlines()[-1:]}")
            best[label] = min(best[label], seconds)
    return best


def run(args) -> None:
    import torch

    from infer.cpu import cpu_kind

    capped = os.environ.get("ATEN_CPU_CAPABILITY") == "avx2" and "TORCHINDUCTOR_CACHE_DIR" in os.environ
    if args.isa == "avx2" and not capped:  # the caps are read at import: start again under them,
        with tempfile.TemporaryDirectory(prefix="inductor-avx2-") as fresh:  # compiling afresh (removed after)
            sys.exit(subprocess.call([sys.executable, "-m", "benchmarks.cpu_runtimes", *sys.argv[1:]],
                                     env={**os.environ, **AVX2, "TORCHINDUCTOR_CACHE_DIR": fresh}))
    env = {**AVX2, "TORCHINDUCTOR_CACHE_DIR": os.environ["TORCHINDUCTOR_CACHE_DIR"]} if args.isa == "avx2" else {}
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="cpu-runtimes-"))
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("VIT_CACHE_DIR", str(work / "cache"))  # a fresh package cache, unless one is given
    print(f"machine: {cpu_kind()}; PyTorch {torch.__version__}; date {time.strftime('%Y-%m-%d')}")
    others = args.isa != "avx2"  # capped: ours alone (the other runtimes do not read PyTorch's caps)
    if not others:  # ...in --prepare too: ONNX Runtime, uncapped, would be an AVX-512 candidate among capped ones
        from infer import runtimes

        runtimes.available = lambda: []
    if others:
        import onnxruntime
        import openvino

        print(f"ONNX Runtime {onnxruntime.__version__} (its own ISA: {onnxruntime.get_device()}, "
              f"all of this CPU's); OpenVINO {openvino.get_version()} "
              f"({', '.join(openvino.Core().get_property('CPU', 'OPTIMIZATION_CAPABILITIES'))})")
    folder = image_folder(args.num_images, work)
    for name in args.models:
        checkpoint = stand_in(name, work)
        files = prepare(checkpoint, work, folder)
        print(f"\n== {name} at 224 px (stand-in weights), batch {BATCH}, {torch.get_num_threads()} threads")
        print("prepared ahead: " + ", ".join(f"{k} {v:.1f} s" for k, v in files["seconds"].items()))
        verdict = files["verdict"]
        print(f"infer --prepare {chose(verdict)}")
        paths = model_paths(checkpoint, files, skip_other_runtimes=not others)
        batch = torch.randn(BATCH, 3, 224, 224)
        rates = {label: throughput(fn, batch) for label, fn in paths.items()}
        best_other = max((v for k, v in rates.items() if not k.startswith("ours")), default=None)
        print("model only, img/s:")
        for label, rate in rates.items():
            extra = f" ({paths[label].precision})" if hasattr(paths[label], "precision") else ""
            ratio = f"   {rate / best_other:.2f}x the best other" if best_other and label.startswith("ours") else ""
            print(f"  {label + extra:<34} {rate:7.1f}{ratio}")
        infer = [sys.executable, "-m", "infer", "--checkpoint", str(checkpoint), "--image", str(folder)]
        commands = {"ours: python -m infer (defaults)": infer, "ours: python -m infer --quantize none (fp32)":
                    [*infer, "--quantize", "none"]}
        if others:
            lean = [sys.executable, "-m", "benchmarks.cpu_runtimes", "--worker"]
            commands.update({"ONNX Runtime fp32": [*lean, "ort", str(files["onnx"]), str(folder)],
                             "ONNX Runtime int8": [*lean, "ort", str(files["int8"]), str(folder)],
                             "OpenVINO default": [*lean, "openvino", str(files["onnx"]), str(folder)],
                             "OpenVINO f32": [*lean, "openvino", str(files["onnx"]), str(folder), "--f32"]})
        if args.num_images and args.repeats:
            seconds = whole_process(commands, args.repeats, env)
            best_other = min((v for k, v in seconds.items() if not k.startswith("ours")), default=None)
            print(f"whole process, {args.num_images} images, best of {args.repeats}, seconds:")
            for label, value in seconds.items():
                ratio = f"   {best_other / value:.2f}x the best other" if best_other and label.startswith("ours") else ""
                print(f"  {label:<44} {value:7.1f}  ({args.num_images / value:5.1f} img/s){ratio}")
        if args.startup_repeats:  # the same commands on one image: launch to first prediction
            one = image_folder(10, work, keep=1)
            seconds = whole_process({label: [str(one) if part == str(folder) else part for part in command]
                                     for label, command in commands.items()}, args.startup_repeats, env)
            print(f"start-up, one image, whole process, best of {args.startup_repeats}, seconds:")
            for label, value in seconds.items():
                print(f"  {label:<44} {value:7.2f}")
    if args.agreement:  # one model is enough: the rule is the same for every size
        report_agreement(Path(args.agreement), work, others, folder, args.agreement_images, args.defaults_only)


def report_agreement(checkpoint: Path, work: Path, others: bool, images: Path, count: int, defaults_only: bool) -> None:
    """Every path's top-1 agreement with ours in fp32 (or, defaults_only, that of `infer`'s defaults
    after `infer --prepare` alone) on `count` CIFAR-10 test images other than those in `images`
    (which `infer --prepare` checks on)."""
    if defaults_only:
        from infer.images import expand_paths
        from infer.predict import Classifier
        from vit.checkpoint import load_model

        verdict = Classifier(checkpoint, device="cpu").prepare(expand_paths([images]))
        print(f"infer --prepare on {checkpoint} (in {verdict['seconds']:.0f} s) {chose(verdict)}")
        real = {"ours fp32": load_model(checkpoint)[0].eval(),
                "ours: infer defaults (prepared)": Classifier(checkpoint, device="cpu").probabilities}
    else:
        real = prepare_real(checkpoint, work, others, images)
    inputs = real_inputs(checkpoint, count, skip=len(list(images.iterdir())) // 10)
    print(f"top-1 agreement with ours fp32, {checkpoint} on {len(inputs)} other CIFAR-10 test images:")
    for label, share in agreement(real, inputs).items():
        print(f"  {label:<34} {share:7.2%}")


def prepare_real(checkpoint: Path, work: Path, others: bool, images: Path) -> dict:
    """The agreement checkpoint's paths: its own packages, exports and sessions."""
    files = prepare(checkpoint, work, images)
    verdict = files["verdict"]
    print(f"infer --prepare on {checkpoint} {chose(verdict)}")
    from infer.predict import Classifier

    default = Classifier(checkpoint, device="cpu")  # what `python -m infer` runs after that
    return {**model_paths(checkpoint, files, skip_other_runtimes=not others),
            "ours: infer defaults (prepared)": default.probabilities}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.cpu_runtimes", description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=["vit_small_patch16_224", "vit_base_patch16_224"],
                        help="stand-ins timed (none: --agreement alone)")
    parser.add_argument("--num-images", type=int, default=1000, help="whole process: images (0: skip)")
    parser.add_argument("--repeats", type=int, default=2, help="whole process: runs of each, the best kept")
    parser.add_argument("--startup-repeats", type=int, default=2,
                        help="start-up (one image, whole process): runs of each (0: skip)")
    parser.add_argument("--agreement", help="a real fine-tuned checkpoint to measure top-1 agreement on")
    parser.add_argument("--agreement-images", type=int, default=1000)
    parser.add_argument("--defaults-only", action="store_true",
                        help="agreement: of infer's defaults alone (no other path built: minutes, not twenty)")
    parser.add_argument("--isa", choices=["native", "avx2"], default="native")
    parser.add_argument("--work-dir", help="where checkpoints, exports and packages go (default: a new temporary one)")
    parser.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)  # KIND MODEL FOLDER [--f32]
    args, rest = parser.parse_known_args(argv)
    if args.worker:
        kind, model, folder = args.worker[:3]
        return lean_worker(kind, model, folder, "--f32" in rest)
    run(args)


if __name__ == "__main__":
    main()
