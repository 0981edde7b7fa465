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


def test_levers_benchmark_measures_each_lever_beside_its_alternative():
    result = run_module("-m", "benchmarks.levers", "--data", str(DATA), "--device", "cpu", "--model",
                        "vit_tiny_patch16_224", "--img-size", "32", "--batch-size", "32",
                        "--max-train-samples", "256", "--max-eval-samples", "128")
    assert result.returncode == 0, result.stderr[-2000:]
    assert re.search(r"^decode, +4 processes .*: +\d+\.\d+ s$", result.stdout, re.M)
    assert re.search(r"^eval, 128 images: eager \d+\.\d+ s", result.stdout, re.M)
    waited, written = map(float, re.search(r"training waits (\d+\.\d+) s, the file is on disk after (\d+\.\d+) s",
                                           result.stdout).groups())
    assert waited <= written
