"""The job benchmark runs as a user would run the job (a subprocess, cold caches) and reports it."""

import re

from tests.conftest import DATA, run_module


def test_job_benchmark_prints_the_phase_table_and_the_wall_time():
    result = run_module("-m", "benchmarks.job", "--data", str(DATA), "--tiny")
    assert result.returncode == 0, result.stderr[-2000:]
    rows = dict(re.findall(r"^ *(\w+) +(\d+\.\d) ", result.stdout, re.M))
    assert {"startup", "weights", "data", "compile", "train", "eval", "save", "other", "total", "wall"} <= set(rows)
    assert float(rows["train"]) > 0 and float(rows["total"]) <= float(rows["wall"]) + 0.1
    assert "epoch 1/1:" in result.stdout
