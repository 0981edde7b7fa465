"""The giants: FSDP on 2 CPU ranks (gloo), activation checkpointing, LoRA, and the memory plan."""

import copy
import json
import os
import signal
from dataclasses import replace

import pytest
import torch

import vit
from tests.conftest import REPO, TINY_TRAIN_ARGS, make_subset, run_cli, run_module
from train.lora import LoRALinear, add_lora, count_parameters, merged_state_dict, parse_targets
from train.memory import TrainingShape, plan_memory
from vit.model import VisionTransformer


def weights(path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["state_dict"]


def largest_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys(), set(a) ^ set(b)
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


@pytest.mark.long
def test_fsdp_on_two_ranks_equals_ddp_and_resumes_after_one_rank_is_stopped(cifar_dir, tmp_path):
    """tests/giants_worker.py runs the real loop under torchrun: DDP, then FSDP, with EMA, layer
    decay and drop path; FSDP with activation checkpointing stopped by a SIGTERM to rank 1 alone,
    then resumed; LoRA under DDP and FSDP with bf16 autocast; MAE pretraining under DDP and FSDP."""
    data = make_subset(cifar_dir, tmp_path / "cifar10", 8, 2)
    out = tmp_path / "out"
    result = run_module("-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29535",
                        str(REPO / "tests" / "giants_worker.py"), str(data), str(out), env={"OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert [report[k] for k in ("ddp", "fsdp", "resumed", "lora-ddp", "lora-fsdp", "mae-ddp", "mae-fsdp")] == [None] * 7
    # MAE pretraining: FSDP's autoencoder (encoder and decoder) is DDP's
    mae = "vit_cifar10_mae.pth"
    assert largest_difference(weights(out / "mae-ddp" / mae), weights(out / "mae-fsdp" / mae)) < 1e-5

    # FSDP's files are DDP's: the same keys (whole tensors, gathered), the same numbers within float rounding
    model = "vit_cifar10_finetuned.pth"
    assert largest_difference(weights(out / "ddp" / model), weights(out / "fsdp" / model)) < 1e-5
    ema = "vit_cifar10_finetuned_ema.pth"
    assert largest_difference(weights(out / "ddp" / ema), weights(out / "fsdp" / ema)) < 1e-5
    ddp_last, fsdp_last = (torch.load(out / run / "last.pt", weights_only=True) for run in ("ddp", "fsdp"))
    assert ddp_last.keys() == fsdp_last.keys()
    moments = [(ddp_last["optimizer"]["state"][k]["exp_avg"], fsdp_last["optimizer"]["state"][k]["exp_avg"])
               for k in ddp_last["optimizer"]["state"]]  # by parameter name, whole
    assert len(moments) == len(ddp_last["state_dict"]) and all(torch.allclose(a, b, atol=1e-6) for a, b in moments)

    # Only rank 1 was sent SIGTERM (after its 2nd step of epoch 2); rank 0 stopped with it, one step later
    assert "stopped by SIGTERM" in report["stopped"] and report["stopped_at"] == [1, 3]
    # ...and the resumed run (with activation checkpointing) ends where the uninterrupted one did, bit for bit
    assert largest_difference(weights(out / "fsdp" / model), weights(out / "resumed" / model)) == 0
    assert largest_difference(weights(out / "fsdp" / ema), weights(out / "resumed" / ema)) == 0

    # LoRA with bf16 autocast: the same under FSDP as under DDP (bf16's rounding), saved merged (a
    # plain ViT's keys), and infer, in training's precision, reproduces the accuracy training measured
    lora_fsdp = weights(out / "lora-fsdp" / model)
    assert largest_difference(weights(out / "lora-ddp" / model), lora_fsdp) < 2e-4
    assert lora_fsdp.keys() == weights(out / "ddp" / model).keys()
    evaluated = run_cli("infer", "--checkpoint", str(out / "lora-fsdp" / model), "--data", str(data),
                        "--device", "cpu", "--amp", "bf16", "--quantize", "none")
    trained = torch.load(out / "lora-fsdp" / model, weights_only=True)["metrics"]["test_acc"]
    assert evaluated.returncode == 0 and f"top-1: {trained:.2%}" in evaluated.stdout, evaluated.stdout


CHECKPOINTED_KINDS = ["vit_tiny_patch16_224",  # pre-norm
                      "vit_base_patch16_rope_mixed_224",  # RoPE, a rotation per block
                      "vit_small_patch14_dinov2",  # layer scale
                      "vit_medium_patch16_gap_256",  # no bias on q, k, v
                      "vit_small_patch16_18x2_224",  # branched blocks
                      "vit_base_patch16_xp_224",  # parallel blocks
                      "vit_dwee_patch16_reg1_gap_256",  # differential attention
                      "beit_base_patch16_224",  # relative position bias
                      "vit_giant_patch14_dinov2"]  # SwiGLU


@pytest.mark.parametrize("name", CHECKPOINTED_KINDS)
def test_activation_checkpointing_gives_the_same_gradients(name):
    """Every block recomputed in backward, drop path replayed: the same loss and gradients, to the bit."""
    cfg = replace(vit.model_config(name), depth=2, drop_path_rate=0.5, img_size=32, num_classes=10)
    if cfg.embed_dim > 512:
        cfg = replace(cfg, embed_dim=cfg.embed_dim // 8, num_heads=cfg.num_heads // 8)
    torch.manual_seed(0)
    model = VisionTransformer(cfg).train()
    torch.nn.init.normal_(model.head.weight)
    images = torch.randn(4, 3, 32, 32)
    gradients = []
    for checkpointing in (False, True):
        model.grad_checkpointing = checkpointing
        model.zero_grad()
        torch.manual_seed(1)  # the drop-path masks
        model(images).square().mean().backward()
        gradients.append({n: p.grad.clone() for n, p in model.named_parameters()})
    assert all(torch.equal(gradients[0][n], gradients[1][n]) for n in gradients[0])
    assert any(gradients[0][n].abs().sum() > 0 for n in gradients[0] if n.startswith("blocks.0."))


@pytest.mark.parametrize("name,targets", [("vit_tiny_patch16_224", "qkv"), ("vit_tiny_patch16_224", "q,v,out"),
                                          ("vit_tiny_patch16_224", "mlp"),
                                          ("vit_small_patch16_18x2_224", "k,fc2"),  # branched blocks
                                          ("vit_giant_patch14_dinov2", "v,fc1")])  # SwiGLU's packed fc1
def test_lora_adapters_merge_into_a_plain_model_with_the_same_outputs(name, targets):
    cfg = replace(vit.model_config(name), depth=2, img_size=32, num_classes=10)
    if cfg.embed_dim > 512:
        cfg = replace(cfg, embed_dim=cfg.embed_dim // 8, num_heads=cfg.num_heads // 8)
    torch.manual_seed(0)
    base = VisionTransformer(cfg).eval()
    torch.nn.init.normal_(base.head.weight)
    for name, param in base.named_parameters():
        if name.endswith("scale.gamma"):  # DINOv2's layer scale starts at 1e-5: the blocks would hardly count
            torch.nn.init.ones_(param)
    images = torch.randn(3, 3, 32, 32)
    adapted = add_lora(copy.deepcopy(base), rank=4, alpha=8, targets=parse_targets(targets))
    with torch.no_grad():
        assert torch.equal(adapted(images), base(images))  # B = 0: training starts from the model itself
        for module in adapted.modules():
            if isinstance(module, LoRALinear):
                module.lora_b.normal_(std=0.1)
        changed = adapted(images)
    trainable = {n for n, p in adapted.named_parameters() if p.requires_grad}
    assert trainable and all(n.endswith(("lora_a", "lora_b")) or n.startswith("head.") for n in trainable)
    assert count_parameters(adapted)[0] == sum(p.numel() for n, p in adapted.named_parameters() if n in trainable)

    plain = copy.deepcopy(base)
    plain.load_state_dict(merged_state_dict(adapted))  # strict: exactly a plain model's keys
    with torch.no_grad():
        assert not torch.allclose(plain(images), base(images), atol=1e-3)  # the adapters did change it
        torch.testing.assert_close(plain(images), changed, atol=2e-5, rtol=1e-5)


def test_lora_targets_are_slices_of_the_fused_qkv():
    model = add_lora(vit.create_model("vit_tiny_patch16_224", pretrained="none"), 2, targets=parse_targets("q,v"))
    qkv = model.blocks[0].attention.qkv
    assert [(p.start, p.stop) for p in qkv.parts] == [(0, 192), (384, 576)]
    with torch.no_grad():
        qkv.lora_b.fill_(1.0)
    delta = qkv.delta()
    assert delta[192:384].abs().sum() == 0 and delta[:192].abs().sum() > 0 and delta[384:].abs().sum() > 0
    with pytest.raises(ValueError, match="not a LoRA target"):
        parse_targets("q,attn")


class StopAfterSteps:
    """A StopRequest that sends this process SIGINT after `steps` steps, as Ctrl-C would."""

    def __init__(self, real, steps: int):
        self.real, self.steps, self.done = real, steps, 0

    def __call__(self, *args, **kwargs):
        request = self.real(*args, **kwargs)
        finished = request.step_finished

        def step_finished():
            finished()
            self.done += 1
            if self.done == self.steps:
                os.kill(os.getpid(), signal.SIGINT)

        request.step_finished = step_finished
        return request


def test_lora_run_resumes_exactly_and_saves_a_plain_model(cifar_dir, tmp_path, monkeypatch):
    """Fine-tune with LoRA, stop it with SIGINT in epoch 2 and resume it (with activation
    checkpointing, which must change nothing): the same merged model as an uninterrupted run,
    which infer, export and create_model read as any fine-tuned model, with training's accuracy."""
    import train.loop as loop

    data = make_subset(cifar_dir, tmp_path / "cifar10", 12, 4)
    common = ["--data", str(data), "--epochs", "2", "--cache-dir", str(tmp_path / "cache"), *TINY_TRAIN_ARGS,
              "--batch-size", "16", "--lora", "4", "--lora-alpha", "8", "--lora-targets", "q,v,fc1", "--drop-path", "0.1"]
    whole = run_cli("train", *common, "--output-dir", str(tmp_path / "whole"))
    assert whole.returncode == 0, whole.stderr[-2000:]
    assert "LoRA rank 4 on q,v,fc1: training" in whole.stdout

    monkeypatch.setattr(loop, "StopRequest", StopAfterSteps(loop.StopRequest, steps=9))  # epoch 2, step 2 of 7
    cut = run_cli("train", *common, "--output-dir", str(tmp_path / "cut"))
    assert cut.returncode == 128 + signal.SIGINT, cut.stderr[-2000:]
    monkeypatch.undo()
    last = torch.load(tmp_path / "cut" / "last.pt", weights_only=True)
    assert (last["epoch"], last["step"]) == (1, 2) and any("lora_a" in k for k in last["state_dict"])
    resumed = run_cli("train", *common, "--grad-checkpointing", "--output-dir", str(tmp_path / "cut"),
                      "--resume", str(tmp_path / "cut" / "last.pt"))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    path = tmp_path / "whole" / "vit_cifar10_finetuned.pth"
    assert largest_difference(weights(path), weights(tmp_path / "cut" / "vit_cifar10_finetuned.pth")) == 0

    plain = weights(path)
    assert plain.keys() == vit.create_model("vit_tiny_patch16_224", num_classes=10, img_size=32).state_dict().keys()
    evaluated = run_cli("infer", "--checkpoint", str(path), "--data", str(data), "--device", "cpu")
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    trained = torch.load(path, weights_only=True)["metrics"]["test_acc"]
    assert f"top-1: {trained:.2%}" in evaluated.stdout
    model = vit.create_model("vit_tiny_patch16_224", pretrained=str(path))
    assert torch.equal(model.blocks[0].attention.qkv.weight, plain["blocks.0.attention.qkv.weight"])
    exported = run_cli("weights", "export", "--format", "timm", str(path), str(tmp_path / "model.safetensors"))
    assert exported.returncode == 0, exported.stderr[-2000:]


@pytest.mark.long
def test_memory_plan_is_within_a_quarter_of_the_measured_peak(cifar_dir, tmp_path):
    """benchmarks/memory.py measures the loop's own steps in a fresh process (peak RSS); it checks
    the options (checkpointing, LoRA, bf16, FSDP) on larger models, benchmarks/README.md has them."""
    from benchmarks.memory import Case, run_case

    result = run_case(Case("vit_tiny_patch16_224", 16), str(cifar_dir), tmp_path / "memory")
    assert 0.75 <= result["planned"] / result["measured"] <= 1.25, result


def test_options_shrink_the_plan_where_they_should():
    cfg, cpu = vit.model_config("vit_base_patch16_224"), torch.device("cpu")
    plain = plan_memory(cfg, TrainingShape(32), cpu)
    checkpointed = plan_memory(cfg, TrainingShape(32, grad_checkpointing=True), cpu)
    lora = plan_memory(cfg, TrainingShape(32, lora_rank=8), cpu)
    sharded = plan_memory(cfg, TrainingShape(32, shards=4), cpu)
    assert checkpointed.activations < plain.activations / 4 and checkpointed.weights == plain.weights
    assert lora.optimizer < plain.optimizer / 50 and lora.activations < plain.activations
    assert sharded.optimizer == plain.optimizer // 4 and sharded.activations == plain.activations
    assert plan_memory(cfg, TrainingShape(64), cpu).activations > 1.9 * plain.activations


def test_a_run_that_will_not_fit_stops_before_any_data_with_what_would_fit(cifar_dir, tmp_path, monkeypatch):
    import train.loop as loop
    import train.memory as memory

    def no_data(cfg):
        raise AssertionError("data decoded")

    monkeypatch.setattr(loop, "load_dataset", no_data)
    cpu = torch.device("cpu")

    def refused(name: str, batch: int, free_as: TrainingShape) -> str:
        """The error line of a run of `name` at `batch`, on a device with just more than what `free_as` plans."""
        free = int(plan_memory(vit.model_config(name), free_as, cpu).total * 1.1)
        monkeypatch.setattr(memory, "device_free_bytes", lambda device: free)
        result = run_cli("train", "--data", str(cifar_dir), "--model", name, "--pretrained", "none",
                         "--batch-size", str(batch), "--device", "cpu", "--output-dir", str(tmp_path / "out"))
        assert result.returncode == 1 and not (tmp_path / "out").exists()
        line = result.stderr.strip()
        assert "\n" not in line and line.startswith("error: the memory plan needs about"), line
        return line

    # Activations dominate: checkpointing or a smaller batch
    line = refused("vit_small_patch16_224", 64, TrainingShape(64, grad_checkpointing=True))
    assert "--grad-checkpointing (about" in line and "--batch-size 8 (about" in line and "--fsdp" not in line
    # Weights, gradients and AdamW's moments dominate: LoRA, or sharding them over 4 devices
    line = refused("vit_large_patch16_224", 1, TrainingShape(1, shards=4))
    assert "--lora 8 (about" in line and "torchrun --nproc_per_node 4 -m train ... --fsdp (about" in line
    assert "--grad-checkpointing" not in line


@pytest.mark.parametrize("flags,message", [
    (["--fsdp"], "torchrun --nproc_per_node N -m train ... --fsdp"),
    (["--lora-alpha", "16"], "needs --lora RANK"),
    (["--lora", "8", "--lora-targets", "q,attn"], "'attn' is not a LoRA target"),
    (["--lora", "0"], "--lora"),
    (["--probe", "knn", "--lora", "8"], "--probe"),
])
def test_giant_flags_that_cannot_work_are_one_line(flags, message):
    result = run_cli("train", *flags)
    assert result.returncode == 2 and message in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("python -m train: error:") or "error" in result.stderr


def test_fsdp_refuses_fp16(monkeypatch):
    monkeypatch.setenv("RANK", "0")
    result = run_cli("train", "--fsdp", "--amp", "fp16")
    assert result.returncode == 2 and "--amp bf16 or none" in result.stderr
