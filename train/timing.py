"""Where a run's time goes: every run ends with one line and one metrics.jsonl record, e.g.

    time: startup 6.7 s, weights 0.9 s, data 8.4 s, compile 7.2 s, train 44.0 s, eval 3.1 s, save 2.0 s, other 1.1 s, total 73.4 s

The phases add up to the total, which counts from the process's start (imports included) when
the run comes from `python -m train`, and from the call of `train()` otherwise. `compile` is the
compilation of the blocks' training graphs, done while the images decode (`data` is then what
decoding took beyond it), plus anything the first step took beyond an ordinary step of the same
run (a recompilation), taken out of `train`; `other` is everything no phase claims (the speed
forecast, metrics, logging).
"""

import os
import time
from contextlib import contextmanager

PHASES = ("startup", "weights", "data", "compile", "train", "eval", "save")


def process_start() -> float:
    """The time.time() at which this process started (Linux: from /proc), else now."""
    try:
        with open("/proc/self/stat") as file:
            after_name = file.read().rsplit(")", 1)[1].split()  # fields 3.. of proc(5); the name may hold spaces
        start_ticks = int(after_name[19])  # field 22, starttime: clock ticks after boot
        with open("/proc/stat") as file:
            boot = next(int(line.split()[1]) for line in file if line.startswith("btime"))
        return boot + start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return time.time()


class PhaseTimer:
    """Wall-clock seconds per phase: `with timer.phase("data"): ...`."""

    def __init__(self, started: float | None = None):
        """started: a time.time() value the total counts from (default: now)."""
        now = time.time()
        self.started = now if started is None else started
        self.seconds = dict.fromkeys(PHASES, 0.0)
        self.seconds["startup"] = now - self.started  # imports and argument parsing, before train()

    @contextmanager
    def phase(self, name: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] += time.perf_counter() - start

    def move(self, seconds: float, source: str, target: str) -> None:
        """Re-attribute time measured inside one phase to another (compile time out of train)."""
        self.seconds[source] -= seconds
        self.seconds[target] += seconds

    def record(self) -> dict:
        """{"kind": "timing", phase: seconds..., "other": ..., "total": ...}, summing to total."""
        total = time.time() - self.started
        phases = {name: round(seconds, 3) for name, seconds in self.seconds.items()}
        return {"kind": "timing", **phases, "other": round(total - sum(phases.values()), 3), "total": round(total, 3)}


def timing_line(record: dict) -> str:
    parts = [f"{name} {record[name]:.1f} s" for name in (*PHASES, "other", "total")]
    return "time: " + ", ".join(parts)
