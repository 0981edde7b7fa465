"""`infer --prepare`: measure every precision this CPU offers on the user's images, let
infer/precision.py choose, keep the verdict.

    python -m infer --checkpoint CK --prepare --data FOLDER    # once per checkpoint and machine

For each candidate of `precision.cpu_precisions()` (fp32 compiled among them), a package is
built (infer/compiled.py) and timed, and so is each installed runtime's (infer/runtimes.py: ONNX
Runtime); training's precision is timed eagerly too. A runtime that cannot build or load this model
is left out with a note; ours failing stops the prepare. The candidates are then checked, fastest
first: each one's top-1 answers against training's, run eagerly, on up to CHECK_IMAGES images, and
the close calls that would restore AGREEMENT (precision.close_calls). `precision.choose` takes the
fastest that agrees, its close calls' cost counted; a candidate no faster than one that already
agreed is not checked (it cannot win, and a check is a pass over every image). Packages not chosen
are deleted, whatever ends the prepare (Ctrl-C too), and only this prepare's own: another running
beside it keeps its work. The verdict is kept (infer/cache.py).
"""

import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from infer import cache, compiled, runtimes
from infer.compiled import CompiledModel, CompileUnavailable
from infer.runtimes import RuntimeModel, RuntimeUnavailable
from infer.images import evenly_spaced
from infer.precision import (CHECK_IMAGES, Measured, OptionError, Precision, choose, close_calls, cpu_precisions,
                             effective_rate, probabilities, second_opinion, top_two_gap)
from vit.checkpoint import ModelCard

TIMED_BATCHES = 4  # batches of 16 per timing run: a sustained rate, not one batch's
TIMING_RUNS = 5  # the median is kept: on a shared 2-core machine one batch's rate varies widely within a second


def check_images(paths: list[Path]) -> list[Path]:
    """The images a precision is checked and timed on: up to CHECK_IMAGES, spread over `paths`."""
    return evenly_spaced(list(paths), CHECK_IMAGES)


def prepare(checkpoint: Path, model: torch.nn.Module, card: ModelCard, images: list[torch.Tensor]) -> dict:
    """Build, time and check every candidate on `images` (model inputs, (1, 3, S, S) each), choose,
    keep and return the verdict: {"precision", "package" (None: eagerly, in training's precision),
    "guard" (the close-call gap, 0: none), "exact_package" (None: close calls decided eagerly; else
    the package, compiled in training's precision, that decides them), "second", "second_package",
    "second_guard", "second_calls" (None: no second opinion; else the candidate that decides the
    close calls first, its package, its own gap and `precision.second_opinion`'s answer),
    "second_opinions" (each one tried: its answer and the cascade's img/s, None where no gap did),
    "img_per_s", "agreement", "close_calls", "checked_on", "card", "seconds"}."""
    start = time.perf_counter()
    trained = "fp32" if card.eval_amp == "none" else card.eval_amp
    verdict = {"precision": trained, "package": None, "guard": 0.0, "exact_package": None, "second": None,
               "second_package": None, "second_guard": 0.0, "second_calls": None, "second_opinions": {},
               "agreement": {},
               "close_calls": {}, "skipped": {}, "unchecked": [], "img_per_s": {}, "checked_on": len(images),
               "card": card.to_dict(), "img_size": card.img_size, "batch_size": compiled.BATCH_SIZE}
    packages = {}  # precision -> the package this prepare built
    try:
        if images:  # (a precision other than training's is never taken unchecked)
            best = measure(checkpoint, model, card, images, trained, verdict, packages)
            if best is not None:
                verdict.update(precision=best.name, package=packages[best.name].name, guard=best.calls["gap"])
        verdict = cache.write_verdict(checkpoint, verdict)
    finally:
        kept = {verdict["package"], verdict["exact_package"], verdict["second_package"]}
        for path in packages.values():
            if path.name not in kept:
                path.unlink(missing_ok=True)
    return {**verdict, "seconds": time.perf_counter() - start}


def measure(checkpoint: Path, model: torch.nn.Module, card: ModelCard, images: list[torch.Tensor], trained: str,
            verdict: dict, packages: dict) -> Measured | None:
    """Time training's precision eagerly, build and time every candidate, check them fastest first
    (recording each in `verdict` and its package in `packages`), and return `choose`'s answer.

    A check runs the candidate over every image, so it is skipped where it cannot change the
    answer: a candidate no faster than the best effective rate already found (close calls
    counted: `precision.effective_rate` is never above the raw rate) cannot win.

    Close calls are decided in training's precision at the faster of its two rates: eagerly, or
    by its own package (compiled fp32, where it runs faster: benchmarks/README.md, "Whole runs"),
    once that package gave training's answer on every close call of the check."""
    candidates = cpu_precisions() + runtimes.available()
    # A bar on a terminal (the build is minutes on 2 cores); none where stderr is a file or a pipe.
    steps = tqdm(total=2 + 3 * len(candidates), desc="prepare", unit="step", leave=False,
                 disable=not sys.stderr.isatty())
    exact = Precision(trained)
    steps.set_postfix_str(f"{trained}, as trained")
    reference = batched_probabilities(model, exact, images).argmax(dim=1)  # (N,) training's top-1
    eager = verdict["img_per_s"][f"{trained} (eager)"] = rate(model, exact, images)
    steps.update()
    timed = []  # the candidates built (their packages loaded again to be checked: one in memory at a time)
    for name in candidates:
        steps.set_postfix_str(f"building {name}")
        packages[name] = cache.new_package_path(checkpoint, name)
        try:
            package = build(model, card, name, packages[name], packages)
        except CompileUnavailable as error:
            steps.close()
            raise OptionError(f"--prepare: {error}") from None
        except RuntimeUnavailable as error:  # another runtime's: a candidate the less
            verdict["skipped"][name] = str(error)
            steps.update(3)
            continue
        steps.update()
        steps.set_postfix_str(f"timing {name}")
        verdict["img_per_s"][name] = rate(package, Precision(name, compiled=True), images)
        timed.append(name)
        del package
        steps.update()
    decided_at = max(eager, verdict["img_per_s"].get(trained, 0.0))  # close calls: eagerly, or compiled if faster
    measured, found, best = [], {}, eager
    for name in sorted(timed, key=verdict["img_per_s"].get, reverse=True):
        if verdict["img_per_s"][name] <= best:  # (and so is every one after it)
            verdict["unchecked"].append(name)
            steps.update()
            continue
        steps.set_postfix_str(f"checking {name} on {len(images)} images")
        package = load(packages[name], name, card.img_size)
        found[name] = batched_probabilities(package, Precision(name, compiled=True), images)  # (N, classes)
        del package
        verdict["agreement"][name] = (found[name].argmax(dim=1) == reference).float().mean().item()
        calls = verdict["close_calls"][name] = close_calls(found[name], reference)
        measured.append(Measured(name, verdict["img_per_s"][name], calls))
        best = choose(eager, measured, decided_at)[1]
        steps.update()
    chosen = choose(eager, measured, decided_at)[0]
    if chosen is not None and chosen.name != trained and chosen.calls["share"] > 0 and decided_at > eager:
        steps.set_postfix_str(f"checking {trained}, compiled, on the close calls")
        if decides_close_calls(packages[trained], trained, card.img_size, images, found[chosen.name],
                               chosen.calls["gap"], reference):
            verdict["exact_package"] = packages[trained].name
        else:  # (then eagerly, as trained)
            verdict["skipped"][f"{trained} for close calls"] = "compiled, it changed a close call's answer"
            chosen = choose(eager, measured)[0]
    if chosen is not None and chosen.name != trained and chosen.calls["share"] > 0:
        steps.set_postfix_str("a second opinion for the close calls")
        exact_rate = decided_at if verdict["exact_package"] else eager
        find_second_opinion(chosen, found[chosen.name], exact_rate, timed, verdict, packages, card, images, reference)
    steps.update()
    steps.close()
    return chosen


def find_second_opinion(chosen: Measured, found: torch.Tensor, exact_rate: float, timed: list[str], verdict: dict,
                        packages: dict, card: ModelCard, images: list[torch.Tensor], reference: torch.Tensor) -> None:
    """Where another candidate, faster than training's precision, decides `chosen`'s close calls
    with close calls of its own that few (precision.second_opinion), and the cascade is faster than
    training's precision deciding them all: record it in `verdict` ("second", "second_package",
    "second_guard"). Each such candidate runs on the chosen's close calls of the check, fastest
    cascade kept. Their images reach training's precision only through the second's close calls,
    a subset of the chosen's: the check of training's precision compiled (`decides_close_calls`)
    covers them."""
    close = close_rows(found, chosen.calls["gap"])
    best = effective_rate(chosen, exact_rate)
    for name in timed:
        if name == chosen.name or verdict["img_per_s"][name] <= exact_rate:
            continue  # (a path no faster than training's precision cannot speed its close calls up)
        package = load(packages[name], name, card.img_size)
        opinions = batched_probabilities(package, Precision(name, compiled=True), [images[i] for i in close])
        del package
        calls = second_opinion(found, chosen.calls["gap"], opinions, reference)
        rate_ = calls and effective_rate(chosen, exact_rate, (verdict["img_per_s"][name], calls))
        verdict.setdefault("second_opinions", {})[name] = calls and {**calls, "img_per_s": rate_}  # (None: no gap)
        if calls is not None and rate_ > best:
            best = rate_
            verdict.update(second=name, second_package=packages[name].name, second_guard=calls["gap"],
                           second_calls=calls)


def close_rows(found: torch.Tensor, gap: float) -> list[int]:
    """The close calls of a check: the rows of (N, classes) probabilities `found` whose top two lie
    within `gap`."""
    return (top_two_gap(found.log()) < gap).nonzero().flatten().tolist()


def decides_close_calls(path: Path, name: str, img_size: int, images: list[torch.Tensor], found: torch.Tensor,
                        gap: float, reference: torch.Tensor) -> bool:
    """Whether training's precision compiled (`name`'s package at `path`) gives training's answer
    (`reference`, (N,)) on every close call of the check: the images whose top two of the chosen
    candidate's (N, classes) probabilities `found` lie within `gap`."""
    close = close_rows(found, gap)
    package = load(path, name, img_size)
    answers = batched_probabilities(package, Precision(name, compiled=True), [images[i] for i in close]).argmax(dim=1)
    return bool((answers == reference[close]).all())


def build(model: torch.nn.Module, card: ModelCard, name: str, path: Path, built: dict | None = None):
    """Candidate `name`'s package built at `path` and loaded: ours (infer/compiled.py) or another
    runtime's (infer/runtimes.py). built: the packages built so far (a runtime's model starts
    from the ONNX export already there, if one is)."""
    if name in runtimes.RUNTIMES:
        exported = (built or {}).get(runtimes.EXPORTED)
        runtimes.build(model, card, name, path, exported if exported and exported.exists() else None)
    else:
        compiled.build(model, card.img_size, name, path)
    return load(path, name, card.img_size)


def load(path: Path, name: str, img_size: int):
    """A kept package as a model: (B, 3, S, S) -> (B, classes) logits."""
    if name in runtimes.RUNTIMES:
        return RuntimeModel(path, name, img_size, compiled.BATCH_SIZE)
    return CompiledModel(path, img_size)


def batched_probabilities(model, precision: Precision, images: list[torch.Tensor]) -> torch.Tensor:
    """(N, classes) probabilities of N images, in batches of a package's size, as classify gives them."""
    size = compiled.BATCH_SIZE
    return torch.cat([probabilities(model, torch.cat(images[i:i + size]), precision, torch.device("cpu"))
                      for i in range(0, len(images), size)])


def rate(model, precision: Precision, images: list[torch.Tensor]) -> float:
    """Images per second of `model` in `precision`, sustained: TIMED_BATCHES batches of 16 of
    `images` a run, the median of TIMING_RUNS runs after a first, untimed one."""
    size = compiled.BATCH_SIZE
    batch = torch.cat((images * (size * TIMED_BATCHES))[: size * TIMED_BATCHES])
    seconds = []
    for _ in range(TIMING_RUNS + 1):
        begin = time.perf_counter()
        for chunk in batch.split(size):
            probabilities(model, chunk, precision, torch.device("cpu"))
        seconds.append(time.perf_counter() - begin)
    return len(batch) / sorted(seconds[1:])[TIMING_RUNS // 2]
