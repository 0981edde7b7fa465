"""Which precision a checkpoint is classified in: the one owner of that rule.

Two ways to decide, both here:

  - `choose_precision`: without measurements (a plain `python -m infer`), from the flags, the
    device and the precision training evaluated in;
  - `choose`: from measurements (`infer --prepare`, infer/prepare.py): every candidate's img/s
    and its agreement with training's precision on the user's images, close calls counted.

Building and loading compiled packages is infer/compiled.py's; timing them is infer/prepare.py's.
The figures behind the rule (img/s per CPU kind, agreement on real weights) are in
benchmarks/README.md, "CPU inference against ONNX Runtime and OpenVINO" and "Close calls".
"""

import math
from dataclasses import dataclass

import torch

from infer import cpu
from vit.checkpoint import AMP_DTYPES

AGREEMENT = 0.99  # the share of top-1 predictions a faster precision must leave unchanged
STANDARD_ERRORS = 1.0  # ...and the check must show it that far below what it measured (`lower_bound`): checked at
#   99.1% on 1,000 images, bf16 agreed on 98.9% of 1,000 others (the real DINOv2-S checkpoint, benchmarks/README.md)
CHECK_IMAGES = 1000  # images a faster precision is checked on, spread over those given: on 300, bf16
#                     passed a real checkpoint at 99.0% that agreed on 98.6% of 1,000 (benchmarks/README.md)
MAX_GAP = 1.0  # the widest close-call gap (logits): a precision that swaps answers further apart is not one to keep
#   (benchmarks/README.md, "Close calls": on the real DINOv2-S checkpoint bf16 agreed at 0.1, re-running 2.1%)


class OptionError(ValueError):
    """Options that contradict each other or the checkpoint (a --topk past its classes, say)."""


class NonFiniteOutput(ArithmeticError):
    """The model computed NaN or infinite scores: no prediction is made of them."""


@dataclass(frozen=True)
class Precision:
    """How the model runs: 'fp32', 'bf16' or 'fp16' (autocast), or, in a package compiled for this
    CPU (infer/compiled.py), 'int8' (int8 layers, fp32 between) or 'int8-bf16' (bf16 between)."""

    name: str
    note: str | None = None  # one line, when this is not the precision training evaluated in
    compiled: bool = False  # a package compiled ahead of time for this CPU (it autocasts inside)

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        return None if self.compiled else AMP_DTYPES.get(self.name)


def cpu_precisions() -> list[str]:
    """This CPU's candidate precisions for inference, fastest first as measured on each CPU kind
    (benchmarks/README.md, "CPU inference against ONNX Runtime and OpenVINO"): int8 layers with
    bf16 between them, then bf16, where the CPU computes bf16 itself (AMX, AVX512-BF16); elsewhere
    bf16 is emulated, several times slower than fp32, and not a candidate. A precision other than
    training's is taken only after `choose` checked it on the user's images."""
    if cpu.cpu_has_amx_bf16() or cpu.cpu_has_avx512_bf16():
        return ["int8-bf16", "bf16", "fp32"]
    return ["int8", "fp32"]


def native_bf16() -> bool:
    """Whether this CPU multiplies bf16 itself (AMX, AVX512-BF16); elsewhere it is emulated, slow."""
    return "bf16" in cpu_precisions()


def choose_precision(device: torch.device, trained: str, amp: str = "auto", quantize: str = "auto") -> Precision:
    """The precision to classify in without measurements.

    trained: the --amp name training evaluated in ('bf16' for a GPU run, 'none' on CPU).
    amp / quantize: the flags; 'auto' lets this rule decide:
      - on a GPU, or for a checkpoint evaluated in fp32: training's precision, so that
        `--data` reproduces the accuracy training reported;
      - a GPU-trained (bf16/fp16) checkpoint on a CPU: bf16 where the CPU computes it natively;
        elsewhere fp32, with a one-line note.
    int8 is never chosen here unchecked (on real weights it changed 8-17% of the predictions):
    it comes from `choose`, checked on the user's images, or from --quantize int8, asked for (the
    PT2E int8 package of infer/compiled.py, on the CPU)."""
    trained_name = "fp32" if trained == "none" else trained
    if quantize == "int8":
        if device.type != "cpu":
            raise OptionError("--quantize int8 runs on the CPU only (add --device cpu)")
        if amp not in ("auto", "none"):
            raise OptionError(f"--quantize int8 and --amp {amp} exclude each other (int8 layers, the rest fp32)")
        return Precision("int8", None if trained_name == "int8" else f"int8 instead of training's {trained_name}",
                         compiled=True)
    if amp != "auto":
        name = "fp32" if amp == "none" else amp
        return Precision(name, None if name == trained_name else f"{name} instead of training's {trained_name} (--amp)")
    if device.type != "cpu" or trained_name == "fp32":
        return Precision(trained_name)
    if native_bf16() and quantize != "none":
        return Precision("bf16", None if trained_name == "bf16" else f"bf16 instead of training's {trained_name}")
    return Precision("fp32", f"fp32 instead of training's {trained_name}: this CPU emulates bf16, several times slower"
                     if quantize != "none" else f"fp32 instead of training's {trained_name} (--quantize none)")


@torch.inference_mode()
def probabilities(model, inputs: torch.Tensor, precision: Precision, device: torch.device) -> torch.Tensor:
    """(B, 3, S, S) model input -> (B, num_classes) class probabilities, `model` run in `precision`
    (autocast, unless a compiled package casts inside). NonFiniteOutput for NaN or inf."""
    dtype = precision.autocast_dtype
    with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
        logits = model(inputs)
    return to_probabilities(logits, precision)


def to_probabilities(logits: torch.Tensor, precision: Precision) -> torch.Tensor:
    """(B, classes) logits -> probabilities; NonFiniteOutput for NaN or inf."""
    result = logits.float().softmax(dim=1)
    if not torch.isfinite(result).all():
        raise NonFiniteOutput(f"the model's outputs are NaN or infinite in {precision.name}; no prediction "
                              "is made of them" + (" (try --amp none)" if precision.autocast_dtype is not None else ""))
    return result


def top_two_gap(logits: torch.Tensor) -> torch.Tensor:
    """(N, classes) logits, or log-probabilities (softmax's normaliser cancels) -> (N,) how far
    the highest lies above the second: a close call is one below the gap."""
    top2 = logits.topk(2, dim=1).values  # (N, 2)
    return top2[:, 0] - top2[:, 1]


def lower_bound(share: float, count: int) -> float:
    """Wilson's lower bound, STANDARD_ERRORS below, of a share measured on `count` images:
    (p + z^2/2n - z sqrt(p(1-p)/n + z^2/4n^2)) / (1 + z^2/n). What the check measured is a sample:
    on images it did not see the share lies lower about half the time; this bound, about one time in
    six. Fewer images, a wider margin (100 images: only 100% shows 99%)."""
    z, n = STANDARD_ERRORS, count
    spread = z * (share * (1 - share) / n + z * z / (4 * n * n)) ** 0.5
    return (share + z * z / (2 * n) - spread) / (1 + z * z / n)


def allowed_changes(count: int) -> int | None:
    """The most answers of `count` a faster path may change and still show AGREEMENT by the check's
    lower bound (`lower_bound`); None where even 100% of so few images cannot show it."""
    allowed = -1
    while allowed + 1 <= count and lower_bound(1 - (allowed + 1) / count, count) >= AGREEMENT:
        allowed += 1
    return None if allowed < 0 else allowed


def narrowest_gap(gaps: torch.Tensor, changed: torch.Tensor, allowed: int) -> float | None:
    """The narrowest close-call gap (to 0.001, at most MAX_GAP) that leaves at most `allowed` of the
    `changed` answers (N,) bool outside it, given each image's top-two gap (N,); None where none
    does. It is the largest gap among the changed answers but those few, rounded up, with 0.001 to
    spare: the run computes the gap from logits, the check from probabilities."""
    widest = gaps[changed].sort(descending=True).values  # (changed,) the gaps a re-run must reach
    if len(widest) <= allowed:
        return 0.0
    needed = widest[allowed].item()
    if not math.isfinite(needed):  # an answer changed with its runner-up's probability underflowed to 0
        return None
    gap = (math.floor(needed * 1000 + 1) + 1) / 1000
    return gap if gap <= MAX_GAP else None


def close_calls(probabilities: torch.Tensor, reference: torch.Tensor) -> dict | None:
    """How a precision whose (N, classes) `probabilities` gave these top-1 answers can still agree
    with training's `reference` (N,) top-1: the narrowest gap (`narrowest_gap`) at which re-running
    its close calls in training's precision leaves AGREEMENT of the answers as training's, by the
    check's lower bound: {"gap", "share" (of the images re-run), "agreement" (as measured)}; None
    where no gap does.

    A close call: the two highest logits closer than the gap. A lower precision moves every logit
    a little; it can swap the top two classes only where they were close."""
    allowed = allowed_changes(len(reference))
    if allowed is None:
        return None
    gaps = top_two_gap(probabilities.log())  # (N,) logit1 - logit2, inf where p2 underflowed to 0
    changed = probabilities.argmax(dim=1) != reference  # (N,)
    gap = narrowest_gap(gaps, changed, allowed)
    if gap is None:
        return None
    close = gaps < gap  # (N,) these get training's answer
    return {"gap": gap, "share": close.float().mean().item(), "agreement": 1 - (changed & ~close).float().mean().item()}


def second_opinion(found: torch.Tensor, gap: float, second: torch.Tensor, reference: torch.Tensor) -> dict | None:
    """Close calls decided by a second, faster path instead of training's precision, and only its
    own close calls by training's: a cascade. found: the chosen path's (N, classes) probabilities;
    gap: its close-call gap (`close_calls`); second: the second path's probabilities (n, classes) on
    the chosen's close calls, in order; reference: training's top-1 (N,).

    The second's gap is the narrowest that keeps the total of changed answers (the chosen's outside
    its gap, the second's outside its own) within what the check's bound allows: {"gap" (the
    second's), "share" (of all N images that reach training's precision), "agreement"}; None where
    no gap does."""
    count = len(reference)
    close = top_two_gap(found.log()) < gap  # (N,) the chosen's close calls
    kept = (found.argmax(dim=1) != reference) & ~close  # (N,) changed answers left as they are
    allowed = allowed_changes(count)
    if allowed is None or int(kept.sum()) > allowed:
        return None
    gaps = top_two_gap(second.log())  # (n,)
    changed = second.argmax(dim=1) != reference[close]  # (n,)
    second_gap = narrowest_gap(gaps, changed, allowed - int(kept.sum()))
    if second_gap is None:
        return None
    again = gaps < second_gap  # (n,) these get training's answer
    return {"gap": second_gap, "share": again.float().sum().item() / count,
            "agreement": 1 - (int(kept.sum()) + int((changed & ~again).sum())) / count}


@dataclass(frozen=True)
class Measured:
    """One candidate, as infer/prepare.py measured it on the user's images: its img/s, and its
    close-call answer (`close_calls`; None where no gap restores AGREEMENT)."""

    name: str
    img_per_s: float
    calls: dict | None


def effective_rate(candidate: Measured, exact: float, second: tuple[float, dict] | None = None) -> float:
    """img/s of a candidate that agrees once its close calls are run again in training's precision
    at `exact` img/s: 1 / (1 / rate + share / exact). With a second opinion (its img/s and
    `second_opinion`'s answer), the close calls run in the second path and only its own close calls
    in training's precision: 1 / (1 / rate + share / second + second's share / exact)."""
    if second is None:
        return 1 / (1 / candidate.img_per_s + candidate.calls["share"] / exact)
    second_rate, calls = second
    return 1 / (1 / candidate.img_per_s + candidate.calls["share"] / second_rate + calls["share"] / exact)


def choose(eager: float, candidates: list[Measured], exact: float | None = None) -> tuple[Measured | None, float]:
    """The fastest candidate that agrees with training's precision, close calls counted, and its
    effective img/s; (None, eager) where training's precision run eagerly is the fastest.

    eager: training's precision's img/s, eagerly; exact: the img/s its close calls are decided at
    (eagerly, or by a package compiled in training's precision where that is faster: infer/prepare.py);
    eager's where not given. Every candidate needs `calls` (close_calls found a gap), a package
    compiled in training's own precision too: compiled is not training's code."""
    best, rate = None, eager
    for candidate in candidates:
        if candidate.calls is None:
            continue  # it changed too many predictions, whatever the gap
        effective = effective_rate(candidate, exact or eager)
        if effective > rate:
            best, rate = candidate, effective
    return best, rate
