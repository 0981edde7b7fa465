"""`python -m infer`: print each image's predicted class and confidence, or evaluate a folder.

    python -m infer --checkpoint runs/cifar10/vit_cifar10_finetuned.pth --image cat.jpg photos/
    python -m infer --checkpoint ... --image cat.jpg --topk 3 --json
    python -m infer --checkpoint ... --data ../shared/data/cifar10-jpg/test

Exit status: 0 when every image was classified, 1 when any input failed (each failure is one
line on stderr, naming the file and the reason), 2 for bad arguments.
"""

import json
import re
import sys

from infer import cache
from infer.compiled import AUTO_BUILD_IMAGES
from infer.images import ImageError, expand_paths
from infer.predict import Classifier, NonFiniteOutput, OptionError, how_it_runs
from vit.checkpoint import CheckpointError
from vit.cli import ArgumentParser, device_name, first_line, is_out_of_memory, positive_int


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="python -m infer", description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True,
                        help="a vit_<name>_finetuned.pth written by train, or a .onnx exported from one")
    source = parser.add_mutually_exclusive_group()  # (one of them, but with --prepare)
    source.add_argument("--image", nargs="+", help="image files and/or folders of images")
    source.add_argument("--data", help="labelled folder (<class>/<image>) to evaluate: top-1, top-5, per class")
    parser.add_argument("--explain", metavar="OUT_DIR",
                        help="also write OUT_DIR/<image>.png: the input, its attention rollout, and the last "
                             "block's CLS attention per head (default: off)")
    parser.add_argument("--topk", type=positive_int, default=1, help="show the K most likely classes (default: 1)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    parser.add_argument("--batch-size", type=positive_int, default=None,
                        help="images per forward pass (default: 64 on a GPU, 8 on CPU, 16 for a checkpoint "
                             "compiled by --prepare)")
    parser.add_argument("--workers", type=positive_int, default=2, help="image-decoding threads (default: 2)")
    parser.add_argument("--device", default="auto", type=device_name, help="cpu, cuda or cuda:N (default: auto, a GPU if there is one, else the CPU)")
    parser.add_argument("--amp", default="auto", choices=["auto", "bf16", "fp16", "none"],
                        help="autocast precision (default auto: the one training evaluated in, where the "
                             "hardware runs it natively; see --quantize)")
    parser.add_argument("--quantize", default="auto", choices=["auto", "int8", "none"],
                        help="int8: the CPU's int8 package, unchecked (PT2E's, built once and kept); none: training's "
                             "precision as it is (default auto: training's where the hardware runs it natively, or "
                             "this CPU's fastest checked one once the checkpoint is prepared, see --prepare)")
    parser.add_argument("--prepare", action="store_true",
                        help="compile the checkpoint for this CPU, at the fastest precision whose predictions agree "
                             "with training's on >= 99%% of the images of --data or --image (ViT-S/16: ~30 s a "
                             "precision on 2 cores; ONNX Runtime weighed too, where installed), then exit; kept "
                             "for every later run, which loads it in a "
                             f"second. A job of {AUTO_BUILD_IMAGES} images or more does this first by itself "
                             "(default: off)")
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.prepare and args.explain:
        parser.error("argument --prepare: compiles and exits; --explain runs the PyTorch model as it is")
    if not (args.image or args.data):
        parser.error("one of the arguments --image --data is required (with --prepare: the images to check on)")

    try:
        quantize = "none" if args.explain and args.quantize == "auto" else args.quantize  # exact maps: fp32
        classifier = Classifier(args.checkpoint, args.device, args.batch_size, args.workers, args.amp, quantize)
        paths = expand_paths(args.image) if args.image else None  # (--data: evaluate_folder finds its images)
        if args.prepare:
            return report_prepared(classifier.prepare(paths or expand_paths([args.data])))
        for note in classifier.notes:
            print(f"note: {note}", file=sys.stderr)
        if classifier.may_compile and classifier.verdict is None and not classifier.notes and not args.explain:
            job = paths or expand_paths([args.data])
            if len(job) >= AUTO_BUILD_IMAGES:
                prepare_first(classifier, args.checkpoint, job)
        if not 1 <= args.topk <= len(classifier.class_names):
            parser.error(f"argument --topk: choose 1 to {len(classifier.class_names)} (the model's classes)")
        if classifier.precision.note:
            print(f"note: {classifier.precision.note}", file=sys.stderr)
        if args.data:
            if args.explain:
                parser.error("--explain goes with --image, not --data")
            return report_evaluation(classifier.evaluate_folder(args.data), args.json, classifier)
        if args.explain:
            return report_explanations(classifier.iter_explain(paths, args.explain))
        return report_predictions(classifier.iter_classify(paths, args.topk), args.json)
    except OptionError as error:
        parser.error(str(error))
    except cache.CacheUnsafe as error:  # --prepare or --quantize int8, asked for, in a cache not the user's alone
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("stopped (Ctrl-C); nothing half-built was kept", file=sys.stderr)
        return 130
    except (CheckpointError, ImageError, NonFiniteOutput) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except OSError as error:  # --explain's folder cannot be created or written
        print(f"error: cannot write {error.filename} ({error.strerror})", file=sys.stderr)
        return 1
    except (RuntimeError, MemoryError) as error:  # torch.cuda.OutOfMemoryError is a RuntimeError
        if not is_out_of_memory(error):
            raise
        print(f"error: out of memory at --batch-size {args.batch_size}; lower --batch-size", file=sys.stderr)
        return 1


def prepare_first(classifier: Classifier, checkpoint: str, job: list) -> None:
    """A long job prepares first (compiled once, checked on its images, kept). A speed-up only: where
    it cannot be had (no torchao, a cache it may not use, any failure), one line says so and the job
    runs eagerly, in the precision it would have had."""
    print(f"note: compiling {checkpoint} for this CPU first, checked on these images (once; kept for later "
          "runs)", file=sys.stderr)
    try:
        classifier.prepare(job)
    except Exception as error:  # whatever stopped it, the job itself goes on
        print(f"note: not compiled ({first_line(error)[:200]}); classifying with the model as trained",
              file=sys.stderr)


def report_prepared(verdict: dict) -> int:
    measured = ", ".join(f"{name} {rate:.1f}" for name, rate in verdict["img_per_s"].items())
    checked = ", ".join(f"{name} {share:.1%}" + (f" ({calls['agreement']:.1%} with its close calls, "
                                                   f"{calls['share']:.1%} of the images, re-run)"
                                                   if (calls := verdict["close_calls"].get(name)) and calls["gap"] else "")
                        for name, share in verdict["agreement"].items())
    skipped = "".join(f"; {name} left out: {why}" for name, why in verdict.get("skipped", {}).items())
    if verdict.get("unchecked"):
        skipped += f"; not checked, no faster than one that agreed: {', '.join(verdict['unchecked'])}"
    found = skipped + (f"; img/s here: {measured}" if measured else "") + (
        f"; agreement with training's precision on {verdict['checked_on']} images: {checked}" if checked else "")
    if verdict["package"] is None:
        print(f"prepared in {verdict['seconds']:.0f} s: runs in {verdict['precision']}, eagerly (no faster precision "
              f"agreed on >= 99%{found})")
    else:
        exact = f"training's precision{', compiled' if verdict.get('exact_package') else ', eagerly'}"
        second = verdict.get("second") and (
            f" (images whose top two logits lie within {verdict['guard']} again in {verdict['second']}, and its own "
            f"within {verdict['second_guard']} in {exact})")
        close = second or (f" (images whose top two logits lie within {verdict['guard']} again in {exact})"
                           if verdict["guard"] else "")
        print(f"prepared in {verdict['seconds']:.0f} s: runs in {verdict['precision']}, {how_it_runs(verdict['precision'])}"
              f"{close}{found}; "
              "every later python -m infer with this checkpoint loads it")
    return 0


def shown(path: str) -> str:
    """A file name as one line of output: control characters (a newline in a name could forge a
    prediction line) written as escapes, \\n for a newline."""
    return re.sub(r"[\x00-\x1f\x7f]", lambda match: repr(match.group())[1:-1], path)


def report_predictions(predictions, as_json: bool) -> int:
    failed, records = 0, []
    for p in predictions:
        failed += p.error is not None
        if as_json:
            records.append({"path": p.path, "error": p.error} if p.error else
                           {"path": p.path, "predictions": [{"class": c, "confidence": round(v, 6)} for c, v in p.top]})
        elif p.error:
            print(f"error: {shown(p.path)}: {p.error}", file=sys.stderr)
        else:
            print(f"{shown(p.path)}: " + ", ".join(f"{c} ({v:.1%})" for c, v in p.top), flush=True)
    if as_json:
        print(json.dumps(records, indent=1, allow_nan=False))
    return 1 if failed else 0


def report_explanations(explained) -> int:
    failed = 0
    for prediction, picture in explained:
        if prediction.error:
            failed += 1
            print(f"error: {shown(prediction.path)}: {prediction.error}", file=sys.stderr)
        else:
            label, confidence = prediction.top[0]
            print(f"{shown(prediction.path)}: {label} ({confidence:.1%}), explained in {shown(str(picture))}", flush=True)
    return 1 if failed else 0


def report_evaluation(result: dict, as_json: bool, classifier: Classifier) -> int:
    for path, reason in result["errors"]:
        print(f"error: {shown(str(path))}: {reason}", file=sys.stderr)
    card, precision, trained = classifier.card, classifier.precision, classifier.trained_precision
    if as_json:
        print(json.dumps({**result, "errors": [{"path": p, "error": r} for p, r in result["errors"]],
                          "precision": precision.name, "compiled": precision.compiled,
                          "trained_precision": trained, "trained_top1": card.trained_accuracy}, indent=1,
                         allow_nan=False))
    else:
        top_k = next(k for k in result if k.startswith("top") and k != "top1")
        compiled = f", {how_it_runs(precision.name)}" if precision.compiled else ""
        if precision.compiled and classifier.verdict["guard"]:
            second = classifier.verdict.get("second")
            compiled += f", close calls in {second + ' then ' if second else ''}{trained}"
        beside = "" if card.trained_accuracy is None else (
            f"; training measured {100 * card.trained_accuracy:.2f}% in {trained} on its own test set")
        print(f"top-1: {100 * result['top1']:.2f}%  (in {precision.name}{compiled}{beside})")
        print(f"{top_k[:3]}-{top_k[3:]}: {100 * result[top_k]:.2f}%  ({result['images']} images)")
        for name, accuracy in result["per_class"].items():
            print(f"  {name:>12}: {100 * accuracy:.2f}%")
    return 1 if result["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
