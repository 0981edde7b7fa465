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


def test_int8_error_simulates_each_layer_in_int8_and_gives_the_model_back_as_it_was():
    import torch

    import vit
    from benchmarks.int8_error import KINDS, int8_weights, simulated, uint8_inputs

    torch.manual_seed(0)
    weight = torch.randn(8, 32)
    step = weight.abs().amax(dim=1, keepdim=True) / 127  # (8, 1) one int8 step per output row
    assert ((int8_weights(weight) - weight).abs() <= step / 2 + 1e-7).all()
    x = torch.randn(4, 5, 32) * torch.tensor([1.0, 10.0, 100.0, 1000.0]).view(4, 1, 1)  # images far apart in scale
    per_batch, per_image = uint8_inputs(x, (0, 1, 2)), uint8_inputs(x, (1, 2))
    assert (per_image - x)[0].abs().max() < (per_batch - x)[0].abs().max()  # the small image keeps its own steps

    model = vit.create_model("vit_tiny_patch16_224", num_classes=10, img_size=32).eval()
    images = torch.randn(20, 3, 32, 32)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.02)  # (a zero head: every logit 0 in any precision)
        reference = model(images)
        assert torch.equal(simulated(model, images, "the batch", KINDS), reference)  # every kind kept fp32: fp32
        int8 = simulated(model, images, "the batch")
        assert not torch.equal(int8, reference) and (int8 - reference).abs().mean() < 0.1 * reference.std()
        assert torch.equal(model(images), reference)  # every layer's own forward is back
