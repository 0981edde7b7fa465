"""Fine-tuning end to end on real CIFAR-10 images (JPEG q75 copy), on CPU."""

import json
import signal

import pytest
import torch
from PIL import Image

from tests.conftest import TINY_TRAIN_ARGS, make_subset, make_timm_file, run_cli, start_training
from train import TrainConfig, train
from train.batches import TensorBatches, random_crop_flip
from train.datasets import Split, dataset_name


def epochs(out):
    return [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if r["kind"] == "epoch"]


def test_tiny_model_learns_clearly_above_chance(tiny_run):
    records = epochs(tiny_run["out"])
    assert [r["epoch"] for r in records] == [1, 2, 3, 4, 5, 6]
    assert records[-1]["test_images"] == 300
    # 10 classes: chance is 10%; 16% on 300 held-out images is > 3 standard deviations above it.
    assert records[-1]["test_acc"] >= 0.16, records[-1]
    assert records[-1]["train_loss"] < records[0]["train_loss"] - 0.05


def test_final_checkpoint_loads_weights_only_with_what_inference_needs(tiny_run):
    card = torch.load(tiny_run["out"] / "vit_cifar10_finetuned.pth", weights_only=True)
    assert card["model_name"] == "vit_tiny_patch16_224" and card["img_size"] == 32
    assert card["class_names"] == sorted(card["class_names"]) and len(card["class_names"]) == 10
    assert card["source_size"] == 32 and card["mean"] == [0.5, 0.5, 0.5]
    assert card["metrics"]["test_acc"] == epochs(tiny_run["out"])[-1]["test_acc"]
    assert card["state_dict"]["head.weight"].shape == (10, 192)
    last = torch.load(tiny_run["out"] / "last.pt", weights_only=True)
    assert {"optimizer", "scheduler", "scaler", "rng", "epoch", "step"} <= set(last) and last["epoch"] == 6


def test_plots_are_written(tiny_run):
    for name in ("curves.png", "confusion_matrix.png"):
        with Image.open(tiny_run["out"] / name) as image:
            assert image.format == "PNG" and image.size[0] > 300


def test_summary_line_per_epoch(tiny_run):
    lines = [l for l in tiny_run["stdout"].splitlines() if l.startswith("epoch ") and "test loss" in l]
    assert len(lines) == 6 and "img/s" in lines[0]


def test_pretrained_local_file_really_initialises_the_weights(cifar_dir, tmp_path):
    """With lr 0 nothing moves, so the trained model must hold exactly the file's tensors (the
    position embedding resampled from 224 to 32 px, the head replaced by 10 classes)."""
    from weights import resample_position_embedding

    timm_model = make_timm_file("vit_tiny_patch16_224", tmp_path / "model.safetensors")
    data = make_subset(cifar_dir, tmp_path / "data", 4, 2)
    cfg = TrainConfig(data=str(data), model="vit_tiny_patch16_224", pretrained=str(tmp_path / "model.safetensors"),
                      img_size=32, epochs=1, batch_size=8, lr=0.0, device="cpu", output_dir=str(tmp_path / "out"),
                      cache_dir=str(tmp_path / "cache"), num_workers=1)
    train(cfg)
    state = torch.load(tmp_path / "out" / "vit_data_finetuned.pth", weights_only=True)["state_dict"]
    reference = timm_model.state_dict()
    assert torch.equal(state["blocks.3.attention.qkv.weight"], reference["blocks.3.attn.qkv.weight"])
    assert torch.equal(state["patch_embedding.projection.weight"], reference["patch_embed.proj.weight"])
    assert torch.equal(state["position_embedding"], resample_position_embedding(reference["pos_embed"], 2))
    assert state["head.weight"].shape == (10, 192)


@pytest.mark.long
def test_resumed_run_ends_with_the_same_weights(cifar_dir, tmp_path):
    """Kill a run with SIGINT partway (in its second epoch), resume it, and compare with an
    uninterrupted run: the weights, and the EMA of the weights, with stochastic depth drawing
    random numbers and layer-wise learning rates in the optimiser."""
    data = make_subset(cifar_dir, tmp_path / "cifar10-small", 40, 5)
    common = ["-m", "train", "--data", str(data), "--epochs", "2", "--cache-dir", str(tmp_path / "cache"),
              *TINY_TRAIN_ARGS, "--batch-size", "16", "--ema", "0.9", "--drop-path", "0.1", "--layer-decay", "0.75"]
    whole = run_cli(*common[1:], "--output-dir", str(tmp_path / "whole"))
    assert whole.returncode == 0, whole.stderr[-2000:]

    process = start_training([*common[2:], "--output-dir", str(tmp_path / "cut")], until="epoch 1/2:")
    process.send_signal(signal.SIGINT)  # the first epoch is done: interrupt the second
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 128 + signal.SIGINT, stderr[-2000:]
    assert "--resume" in stderr and "Traceback" not in stderr
    last = torch.load(tmp_path / "cut" / "last.pt", weights_only=True)
    assert (1, 0) <= (last["epoch"], last["step"]) < (2, 0)

    resumed = run_cli(*common[1:], "--output-dir", str(tmp_path / "cut"), "--resume", str(tmp_path / "cut" / "last.pt"))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    for name in ("vit_cifar10_finetuned.pth", "vit_cifar10_finetuned_ema.pth"):
        a = torch.load(tmp_path / "whole" / name, weights_only=True)
        b = torch.load(tmp_path / "cut" / name, weights_only=True)
        assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"]), name
        timing = ("train_img_per_s",)
        assert {k: v for k, v in a["metrics"].items() if k not in timing} == \
            {k: v for k, v in b["metrics"].items() if k not in timing}
    epochs = [json.loads(line) for line in (tmp_path / "whole" / "metrics.jsonl").read_text().splitlines()]
    averaged = torch.load(tmp_path / "whole" / "vit_cifar10_finetuned_ema.pth", weights_only=True)
    assert [r for r in epochs if r["kind"] == "epoch"][-1]["test_acc_ema"] == averaged["metrics"]["test_acc"]
    from infer import Classifier

    assert Classifier(tmp_path / "whole" / "vit_cifar10_finetuned_ema.pth", device="cpu").card.num_classes == 10


def test_resume_refuses_changed_settings(tiny_run, tmp_path):
    result = run_cli("train", "--data", str(tiny_run["data"]), "--epochs", "6", *TINY_TRAIN_ARGS,
                        "--lr", "5e-4", "--output-dir", str(tmp_path), "--cache-dir", str(tmp_path / "c"),
                        "--resume", str(tiny_run["out"] / "last.pt"))
    assert result.returncode == 1
    assert "changed: lr: 0.001 -> 0.0005" in result.stderr and "Traceback" not in result.stderr


def test_device_augmentation_is_a_padded_crop_and_flip():
    images = torch.arange(2 * 3 * 6 * 6, dtype=torch.uint8).view(2, 3, 6, 6)
    generator = torch.Generator().manual_seed(0)
    out = random_crop_flip(images, 2, generator)
    assert out.shape == images.shape and out.dtype == torch.uint8
    for original, crop in zip(images, out):
        padded = torch.nn.functional.pad(original, (2, 2, 2, 2))
        windows = [padded[:, y:y + 6, x:x + 6] for y in range(5) for x in range(5)]
        assert any(torch.equal(crop, w) or torch.equal(crop, w.flip(2)) for w in windows)


def test_epoch_order_is_a_seeded_permutation_and_eval_is_not_augmented():
    split = Split(labels=torch.arange(10), images=torch.zeros(10, 3, 4, 4, dtype=torch.uint8))
    train_batches = TensorBatches(split, 4, torch.device("cpu"), 8, (0.5,) * 3, (0.5,) * 3, train=True, seed=1)
    assert len(train_batches) == 2  # the partial last batch is dropped
    assert sorted(train_batches.order(0).tolist()) == list(range(10))
    assert torch.equal(train_batches.order(3), train_batches.order(3))
    assert not torch.equal(train_batches.order(0), train_batches.order(1))
    eval_batches = TensorBatches(split, 4, torch.device("cpu"), 8, (0.5,) * 3, (0.5,) * 3, train=False)
    assert len(eval_batches) == 3 and [l.tolist() for _, l in eval_batches.epoch(0)][-1] == [8, 9]


def test_dataset_names():
    from pathlib import Path

    assert dataset_name(Path("/x/cifar10-jpg")) == "cifar10"
    assert dataset_name(Path("/x/CIFAR-10")) == "cifar10"
    assert dataset_name(Path("/x/Flowers 102")) == "flowers-102"


@pytest.mark.long
def test_compiled_training_matches_eager(cifar_dir, tmp_path):
    """torch.compile (inductor, on CPU here) must train the same model as eager mode."""
    data = make_subset(cifar_dir, tmp_path / "cifar10", 3, 2)
    runs = {}
    for mode in ("--compile", "--no-compile"):
        out = tmp_path / mode.strip("-")
        result = run_cli("train", "--data", str(data), "--epochs", "1", "--output-dir", str(out),
                            "--cache-dir", str(tmp_path / "cache"), *TINY_TRAIN_ARGS, "--batch-size", "10", mode)
        assert result.returncode == 0, result.stderr[-3000:]
        assert (", compiled" in result.stdout) == (mode == "--compile")
        runs[mode] = torch.load(out / "vit_cifar10_finetuned.pth", weights_only=True)
        timing = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
        assert (timing["compile"] > 0) == (mode == "--compile"), timing  # compile_ahead, beside the decoding
    compiled, eager = runs["--compile"], runs["--no-compile"]
    assert compiled["metrics"]["test_loss"] == pytest.approx(eager["metrics"]["test_loss"], abs=1e-3)
    for key, value in eager["state_dict"].items():
        assert torch.allclose(compiled["state_dict"][key], value, atol=5e-3), key


@pytest.mark.timing
def test_every_run_accounts_for_its_time(tiny_run):
    """One timing record whose phases add up to the total, counted from the process's start."""
    records = [json.loads(l) for l in (tiny_run["out"] / "metrics.jsonl").read_text().splitlines()]
    timing = records[-1]
    assert timing["kind"] == "timing" and [r["kind"] for r in records].count("timing") == 1
    phases = ("startup", "weights", "data", "compile", "train", "eval", "save", "other")
    assert all(timing[p] >= -0.01 for p in phases), timing
    assert sum(timing[p] for p in phases) == pytest.approx(timing["total"], abs=0.01)
    assert timing["train"] > 0 and timing["eval"] > 0 and timing["save"] > 0 and timing["startup"] > 0.3  # imports
    assert timing["compile"] == 0  # eager on CPU by default
    # The process's whole life, seen from outside, is a little longer (start-up of the interpreter, exit).
    assert 0.7 * tiny_run["seconds"] <= timing["total"] <= tiny_run["seconds"]
    line = next(l for l in tiny_run["stdout"].splitlines() if l.startswith("time: "))
    assert line.endswith(f"total {timing['total']:.1f} s") and f"train {timing['train']:.1f} s" in line


def test_regional_compilation_gives_eager_outputs_and_evaluation_stays_eager(cifar_dir):
    """Each block compiled in place (inductor, on CPU here): same outputs and gradients as eager,
    the same state_dict keys, and evaluation under `eager()` compiles nothing more."""
    import copy

    from torch._dynamo.utils import counters

    import vit
    from tests.conftest import real_images
    from train.preflight import compile_blocks, eager

    torch.manual_seed(0)
    model = vit.create_model("vit_tiny_patch16_224", num_classes=10, img_size=32)
    torch.nn.init.normal_(model.head.weight, std=0.02)
    compiled = copy.deepcopy(model)
    compile_blocks(compiled)
    assert all(block._compiled_call_impl is not None for block in compiled.blocks)
    assert list(compiled.state_dict()) == list(model.state_dict())
    images = real_images(cifar_dir, 10, 32)  # test_compiled_training_matches_eager's batch: its graphs, if cached
    expected, got = model(images), compiled(images)
    assert (got - expected).abs().max() <= 1e-5
    expected.square().sum().backward()
    got.square().sum().backward()
    for (name, a), b in zip(model.named_parameters(), compiled.parameters()):
        assert torch.allclose(a.grad, b.grad, atol=1e-5, rtol=1e-4), name
    graphs = counters["stats"]["unique_graphs"]
    with torch.no_grad(), eager():
        assert (compiled(images) - model(images)).abs().max() <= 1e-5
    assert counters["stats"]["unique_graphs"] == graphs  # no inference graph was compiled


def test_blocks_compiled_ahead_need_no_compilation_and_leave_the_random_state():
    """compile_ahead (a throwaway block, while the images decode) compiles the graphs that the
    model's blocks then use: a training step of the model compiles nothing more. It draws
    nothing from the random generators, so a run's initial weights do not depend on it."""
    from torch._dynamo.utils import counters

    import vit
    from train.preflight import compile_ahead, compile_blocks

    cfg = vit.model_config("deit_tiny_distilled_patch16_224", img_size=48, depth=2)  # a shape no other test compiles
    torch.manual_seed(0)
    state = torch.get_rng_state()
    graphs = counters["stats"]["unique_graphs"]
    compile_ahead(cfg, torch.device("cpu"), None, batch_size=3)
    assert counters["stats"]["unique_graphs"] > graphs  # it compiled
    assert torch.equal(torch.get_rng_state(), state)

    model = vit.create_model("deit_tiny_distilled_patch16_224", num_classes=10, img_size=48, depth=2)
    compile_blocks(model)
    graphs = counters["stats"]["unique_graphs"]
    loss = model(torch.randn(3, 3, 48, 48)).logsumexp(1).mean()
    loss.backward()
    assert counters["stats"]["unique_graphs"] == graphs  # the blocks found compile_ahead's graphs
    assert all(p.grad is not None for p in model.parameters())


def test_recipe_flags_reach_the_model_the_optimiser_and_the_average(cifar_dir, tmp_path):
    """--drop-path, --layer-decay and --ema, as prepare builds the run from them."""
    from train.loop import prepare
    from vit.layers.common import DropPath

    data = make_subset(cifar_dir, tmp_path / "data", 2, 1)
    cfg = TrainConfig(data=str(data), model="vit_tiny_patch16_224", pretrained="none", img_size=32, batch_size=4,
                      device="cpu", num_workers=1, output_dir=str(tmp_path / "out"), cache_dir=str(tmp_path / "c"),
                      drop_path=0.2, layer_decay=0.5, ema=0.99)
    run = prepare(cfg)
    assert isinstance(run.model.blocks[-1].drop_path, DropPath) and run.model.blocks[-1].drop_path.p == pytest.approx(0.2)
    scales = sorted({group["lr_scale"] for group in run.optimizer.param_groups})
    assert scales == [0.5 ** k for k in range(13, -1, -1)]  # 12 blocks: the embeddings at 0.5^13 ... the head at 1
    assert all(group["lr"] == pytest.approx(cfg.lr * group["lr_scale"]) for group in run.optimizer.param_groups)
    assert run.ema.decay == 0.99 and run.ema.model is not run.model
    assert all(torch.equal(a, b) for a, b in zip(run.ema.state_dict().values(), run.model.state_dict().values()))


def test_ema_is_the_moving_average_of_the_weights_after_each_step():
    from train.state import EMA

    model = torch.nn.Linear(3, 2)
    ema = EMA(model, decay=0.75)
    expected = {k: v.clone() for k, v in model.state_dict().items()}
    for step in range(3):
        with torch.no_grad():
            for param in model.parameters():
                param.add_(torch.randn_like(param))
        ema.update(model)
        expected = {k: 0.75 * expected[k] + 0.25 * v for k, v in model.state_dict().items()}
    assert all(torch.allclose(ema.state_dict()[k], expected[k], atol=1e-6) for k in expected)
