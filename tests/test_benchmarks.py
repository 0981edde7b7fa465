"""The job benchmark runs as a user would run the job (a subprocess, cold caches) and reports it."""

import re

import pytest

from tests.conftest import DATA, run_cli


@pytest.mark.long
def test_job_benchmark_prints_the_phase_table_and_the_wall_time():
    result = run_cli("benchmarks.job", "--data", str(DATA), "--tiny")
    assert result.returncode == 0, result.stderr[-2000:]
    rows = dict(re.findall(r"^ *(\w+) +(\d+\.\d) ", result.stdout, re.M))
    assert {"startup", "weights", "data", "compile", "train", "eval", "save", "other", "total", "wall"} <= set(rows)
    assert float(rows["train"]) > 0 and float(rows["total"]) <= float(rows["wall"]) + 0.1
    assert "epoch 1/1:" in result.stdout


def test_levers_benchmark_measures_each_lever_beside_its_alternative():
    result = run_cli("benchmarks.levers", "--data", str(DATA), "--device", "cpu", "--model",
                        "vit_tiny_patch16_224", "--img-size", "32", "--batch-size", "32",
                        "--max-train-samples", "256", "--max-eval-samples", "128")
    assert result.returncode == 0, result.stderr[-2000:]
    assert re.search(r"^decode, +4 processes .*: +\d+\.\d+ s$", result.stdout, re.M)
    assert re.search(r"^eval, 128 images: eager \d+\.\d+ s", result.stdout, re.M)
    waited, written = map(float, re.search(r"training waits (\d+\.\d+) s, the file is on disk after (\d+\.\d+) s",
                                           result.stdout).groups())
    assert waited <= written and "holds the model exactly" in result.stdout


def test_train_benchmark_sets_the_attention_kernel_and_inductor_settings_it_names():
    import torch
    import torch._inductor.config as inductor

    from benchmarks.train import attention_kernel, set_inductor

    with attention_kernel("math"):
        assert torch.backends.cuda.math_sdp_enabled() and not torch.backends.cuda.flash_sdp_enabled()
    assert torch.backends.cuda.flash_sdp_enabled()
    before = inductor.triton.cudagraphs
    try:
        set_inductor("triton.cudagraphs=True")
        assert inductor.triton.cudagraphs is True
    finally:
        inductor.triton.cudagraphs = before
    for bad in ("triton.nope=1", "max_autotune", "nope.x=1"):
        with pytest.raises(ValueError, match="not KEY=VALUE"):
            set_inductor(bad)
    with pytest.raises(ValueError, match="true is not a Python literal"):
        set_inductor("max_autotune=true")
