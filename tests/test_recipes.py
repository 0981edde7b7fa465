"""Fine-tuning recipes (issue 21): layer-wise learning-rate decay and weight decay against timm's
optimizer factory, stochastic depth against timm's DropPath; frozen-feature probes (kNN, linear)."""

import json

import pytest
import torch

import vit
from tests.conftest import make_subset, run_cli, timm_arguments
from weights.layouts import LAYOUTS
from weights.load import fit_to_model

def smallest_of_each_family() -> list[str]:
    """One name per family of vit/families.py (its narrowest), so every family's parameter layout
    is checked: layer scale, distillation and register tokens, fc_norm, BEiT's relative bias tables,
    RoPE (learned frequencies too), attention pools, post-norm, branched and parallel blocks, ..."""
    from vit.families import MODELS

    chosen: dict[str, str] = {}
    for name, spec in MODELS.items():
        if spec.family not in chosen or spec.config["embed_dim"] < MODELS[chosen[spec.family]].config["embed_dim"]:
            chosen[spec.family] = name
    return sorted(chosen.values())


NAMES = sorted({*smallest_of_each_family(), "vit_pwee_patch16_reg1_gap_256", "vit_dpwee_patch16_reg1_gap_256"})


def extra_fields(name: str) -> dict:
    """Where a shallower model needs the name's per-block settings said again: Sapiens2's key/value heads,
    a per-block list in timm (its default is as long as the name's depth)."""
    from vit.families import model_config, model_spec

    cfg = model_config(name)
    if model_spec(name).family != "sapiens2":
        return {}
    return {"kv_heads": cfg.kv_heads or cfg.num_heads, "full_attention_ends": 1, "num_heads": cfg.num_heads}


def twin(name: str, depth: int = 3, **fields):
    """timm's model and ours, `depth` blocks deep at 64 px, with the same weights."""
    import timm

    torch.manual_seed(0)
    theirs = timm.create_model(name, **timm_arguments(dict(depth=depth, img_size=64, **extra_fields(name), **fields)))
    ours = vit.create_model(name, depth=depth, img_size=64, **extra_fields(name), **fields)
    ours.load_state_dict(fit_to_model(LAYOUTS["timm"].to_ours(theirs.state_dict()), ours))
    return theirs, ours


@pytest.mark.parametrize("name", NAMES)
def test_param_groups_give_every_parameter_timms_lr_scale_and_weight_decay(name):
    import timm.optim

    from train.optim import param_groups

    theirs, ours = twin(name, depth=2)  # two blocks: layer ids 0, 1, 2 (+ the top) are all there
    # Which of timm's parameters each of ours is made of: convert a state dict whose every tensor
    # holds its own number (timm's fused tensors split, ours fused: the numbers say which went where).
    their_names = [n for n, _ in theirs.named_parameters()]
    numbered = {n: torch.full_like(p, float(i)) for i, (n, p) in enumerate(theirs.named_parameters())}
    made_of = {k: {their_names[int(i)] for i in v.unique()} for k, v in LAYOUTS["timm"].to_ours(numbered).items()}
    for layer_decay in (None, 0.65):
        optimizer = timm.optim.create_optimizer_v2(theirs, "adamw", lr=1e-3, weight_decay=0.05, layer_decay=layer_decay)
        timms = {}  # timm's parameter name -> (lr_scale, weight_decay)
        by_id = {id(p): n for n, p in theirs.named_parameters()}
        for group in optimizer.param_groups:
            for param in group["params"]:
                timms[by_id[id(param)]] = (group.get("lr_scale", 1.0), group["weight_decay"])
        expected = {k: {timms[n] for n in names} for k, names in made_of.items()}
        got = {}
        for group in param_groups(ours, weight_decay=0.05, layer_decay=layer_decay):
            for param in group["params"]:
                got[param] = (group["lr_scale"], group["weight_decay"])
        ours_by_name = {n: got[p] for n, p in ours.named_parameters()}
        assert {n: {v} for n, v in ours_by_name.items()} == expected, name


def test_layer_decay_reaches_the_optimizer_and_the_schedule_keeps_its_ratios():
    from train.loop import warmup_cosine
    from train.optim import build_optimizer

    model = vit.create_model("vit_tiny_patch16_224", depth=2, img_size=32, num_classes=10)
    optimizer = build_optimizer(model, lr=1e-3, weight_decay=0.05, layer_decay=0.5)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(10, 2))
    for _ in range(4):
        optimizer.step()
        scheduler.step()
    rates = {group["lr_scale"]: group["lr"] for group in optimizer.param_groups}
    assert sorted(rates) == [0.125, 0.25, 0.5, 1.0]  # embeddings, block 0, block 1 (+ final norm), head
    top = rates[1.0]
    assert all(abs(rate - scale * top) < 1e-12 for scale, rate in rates.items())


@pytest.mark.parametrize("name", ["vit_small_patch16_224", "deit3_small_patch16_224", "eva02_tiny_patch14_224",
                                  "vit_base_patch16_rpn_224", "vit_small_patch16_18x2_224",
                                  "vit_pwee_patch16_reg1_gap_256"])
def test_drop_path_is_timms_in_training_and_the_identity_at_evaluation(name):
    theirs, ours = twin(name, drop_path_rate=0.3)
    images = torch.randn(8, 3, 64, 64)
    theirs.train(), ours.train()
    torch.manual_seed(1)
    expected = theirs(images)
    torch.manual_seed(1)
    assert (ours(images) - expected).abs().max() <= 1e-5  # the same samples dropped in the same branches
    rates = [block.drop_path.p for block in ours.blocks[1:]] if not ours.cfg.branches > 1 else \
        [block.branches[0].drop_path.p for block in ours.blocks[1:]]
    assert rates == pytest.approx([0.15, 0.3])  # rising linearly to the rate at the last block
    theirs.eval(), ours.eval()
    with torch.no_grad():
        assert (ours(images) - theirs(images)).abs().max() <= 1e-5
        assert torch.equal(ours(images), ours(images))  # nothing random at evaluation


def test_knn_probe_is_dinos_weighted_vote():
    """Against the rule written out neighbour by neighbour: cosine similarity, the k most similar
    training features vote for their class with weight exp(similarity / T), the heaviest class wins."""
    import math

    from train.probe import knn_top1

    generator = torch.Generator().manual_seed(0)
    centres = torch.randn(4, 16, generator=generator)
    train_labels = torch.arange(200) % 4
    train = centres[train_labels] + 1.5 * torch.randn(200, 16, generator=generator)
    test_labels = torch.arange(60) % 4
    test = centres[test_labels] + 1.5 * torch.randn(60, 16, generator=generator)
    for k in (1, 5, 20):
        correct = 0
        for feature, label in zip(test, test_labels):
            similarities = [(torch.dot(feature, other) / (feature.norm() * other.norm())).item() for other in train]
            nearest = sorted(range(len(train)), key=lambda i: -similarities[i])[:k]
            votes = [0.0] * 4
            for i in nearest:
                votes[train_labels[i]] += math.exp(similarities[i] / 0.07)
            correct += max(range(4), key=lambda c: votes[c]) == label
        assert knn_top1(train, train_labels, test, test_labels, 4, k=k) == pytest.approx(correct / len(test))


def test_probes_read_cached_features_and_the_linear_probe_is_a_checkpoint_infer_reads(cifar_dir, tmp_path):
    data = make_subset(cifar_dir, tmp_path / "data", 20, 5)
    common = ["--data", str(data), "--model", "vit_tiny_patch16_224", "--pretrained", "none", "--img-size", "32",
              "--device", "cpu", "--num-workers", "1", "--output-dir", str(tmp_path / "out"),
              "--cache-dir", str(tmp_path / "cache")]
    knn = run_cli("train", "--probe", "knn", "--knn-k", "10", *common)
    assert knn.returncode == 0, knn.stderr[-2000:]
    assert "knn probe of vit_tiny_patch16_224 @ 32px (k = 10, T = 0.07): top-1" in knn.stdout and "computed" in knn.stdout
    linear = run_cli("train", "--probe", "linear", *common)
    assert linear.returncode == 0, linear.stderr[-2000:]
    assert "from the cache" in linear.stdout  # the features were computed once
    records = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert [(r["kind"], r["method"], r["train_images"], r["test_images"]) for r in records] == [
        ("probe", "knn", 200, 50), ("probe", "linear", 200, 50)]
    checkpoint = tmp_path / "out" / "vit_data_linear_probe.pth"
    assert records[1]["checkpoint"] == str(checkpoint) and records[1]["top1"] > 0.1  # random features, 10 classes
    # infer, preparing the images its own way, reproduces the probe's accuracy: the features are the ones it sees
    evaluated = run_cli("infer", "--checkpoint", str(checkpoint), "--data", str(data / "test"))
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    assert f"top-1: {records[1]['top1']:.2%}" in evaluated.stdout
    assert run_cli("train", "--probe", "svm", *common).returncode == 2


def test_linear_probe_reads_raw_features_with_its_standardisation_folded_in():
    """Features far from zero and of unequal scales (as a backbone's are): the returned layer,
    applied to the raw features, separates classes a linear model can separate."""
    from train.probe import fit_linear

    generator = torch.Generator().manual_seed(0)
    centres = torch.randn(5, 32, generator=generator)
    labels = torch.arange(500) % 5
    scale = torch.logspace(-1, 1, 32)  # 0.1 ... 10 per dimension
    raw = (centres[labels] + 0.3 * torch.randn(500, 32, generator=generator)) * scale + 7.0
    layer = fit_linear(raw, labels, 5)
    with torch.no_grad():
        assert (layer(raw).argmax(1) == labels).float().mean() >= 0.98
