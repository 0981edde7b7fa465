"""MAE pretraining end to end (`python -m train --objective mae`, train/objectives.py) on real
CIFAR-10 images in a folder without labels, on CPU: what it writes, that it learns, that its file
rebuilds the model it reports on, fine-tunes and probes, and that a killed run resumes bit for bit.
(DDP against FSDP: tests/giants_worker.py.)"""

import json
import shutil
import signal

import pytest
import torch
from PIL import Image

import vit
from tests.conftest import CLASSES, make_subset, run_cli, start_training
from train.batches import make_batches
from train.config import TrainConfig
from train.datasets import load_dataset
from train.objectives import masked_loss
from vit import mae

MAE_ARGS = ["--objective", "mae", "--model", "vit_tiny_patch16_224", "--pretrained", "none", "--patch-size", "4",
            "--img-size", "32", "--decoder", "tiny", "--batch-size", "32", "--lr", "1e-3", "--device", "cpu",
            "--num-workers", "2"]


def unlabelled_folder(cifar_dir, root, per_class: int):
    """Real CIFAR-10 training images in one flat folder, no class folders (copies)."""
    root.mkdir(parents=True)
    for name in CLASSES:
        for i in range(per_class):
            shutil.copyfile(cifar_dir / "train" / name / f"{i:04d}.jpg", root / f"{name}_{i:04d}.jpg")
    return root


def records(out, kind="epoch"):
    return [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if r["kind"] == kind]


@pytest.fixture(scope="module")
def mae_run(cifar_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("mae")
    data = unlabelled_folder(cifar_dir, root / "photos", 40)  # 400 images: 380 to train on, 20 held out
    result = run_cli("train", "--data", str(data), "--epochs", "3", "--output-dir", str(root / "out"),
                     "--cache-dir", str(root / "cache"), *MAE_ARGS)
    assert result.returncode == 0, result.stderr[-3000:]
    return {"data": data, "out": root / "out", "stdout": result.stdout, "root": root,
            "file": root / "out" / "vit_photos_mae.pth"}


def test_pretraining_writes_the_autoencoder_its_curves_and_a_reconstruction_per_epoch(mae_run):
    out = mae_run["out"]
    lines = [line for line in mae_run["stdout"].splitlines() if line.startswith("epoch ") and "masked-patch" in line]
    assert len(lines) == 3 and "acc" not in lines[0]
    assert [r["test_images"] for r in records(out)] == [20] * 3 and "test_acc" not in records(out)[0]
    for epoch in (1, 2, 3):
        with Image.open(out / "reconstructions" / f"epoch_{epoch:03d}.png") as picture:
            assert picture.format == "PNG" and picture.size[0] > 300
    with Image.open(out / "curves.png") as picture:
        assert picture.format == "PNG"
    saved = torch.load(mae_run["file"], weights_only=True)
    keys = saved["state_dict"].keys()
    assert "encoder.patch_embedding.projection.weight" in keys and "decoder.mask_token" in keys
    assert saved["architecture"]["patch_size"] == 4 and saved["mae"]["norm_pix_loss"] is True
    inspected = run_cli("weights", "inspect", str(mae_run["file"]))
    assert inspected.returncode == 0 and "ours_mae" in inspected.stdout and "4 x 4 px" in inspected.stdout


def test_pretraining_learns_what_predicting_zero_cannot(mae_run):
    """The held-out images' masked-patch loss (each under the same mask every epoch) falls, and
    ends below the trivial predictor's (the normalised target's mean, zero: about 1.0)."""
    loss = [r["test_loss"] for r in records(mae_run["out"])]
    trivial = records(mae_run["out"])[-1]["test_loss_trivial"]
    assert 0.9 < trivial < 1.0  # (a patch's normalised pixels: variance 1 less the 1e-6 guard, nearly flat patches)
    assert loss[-1] < loss[0] and loss[-1] < trivial - 0.03, (loss, trivial)


def test_the_saved_file_rebuilds_the_model_it_reported_on(mae_run):
    """vit.mae.load reads the file (its encoder, decoder and target) and gives the held-out loss
    the run reported for its last epoch, to float rounding."""
    model = mae.load(mae_run["file"])
    assert model.decoder_cfg.norm_pix_loss and model.encoder.cfg.patch_size == 4 and len(model.decoder.blocks) == 2
    cfg = TrainConfig(data=str(mae_run["data"]), objective="mae", cache_dir=str(mae_run["root"] / "cache"),
                      img_size=32, batch_size=32, num_workers=1)
    test = make_batches(load_dataset(cfg).test, cfg, torch.device("cpu"), model.encoder.pretrained_cfg["mean"],
                        model.encoder.pretrained_cfg["std"], train=False)
    again = masked_loss(model, test, cfg, None, is_main=False)
    assert abs(again["test_loss"] - records(mae_run["out"])[-1]["test_loss"]) < 1e-5


def test_its_encoder_fine_tunes_and_probes(mae_run, cifar_dir, tmp_path):
    """train --pretrained takes the file's encoder as it is (lr 0: nothing moves, so the
    fine-tuned model holds its tensors), at its recorded patch size; --probe knn evaluates it."""
    labelled = make_subset(cifar_dir, tmp_path / "labelled", 4, 2)
    common = ["--pretrained", str(mae_run["file"]), "--model", "vit_tiny_patch16_224", "--img-size", "32",
              "--data", str(labelled), "--cache-dir", str(tmp_path / "cache"), "--device", "cpu", "--num-workers", "1"]
    tuned = run_cli("train", *common, "--epochs", "1", "--batch-size", "8", "--lr", "0", "--output-dir", str(tmp_path / "ft"))
    assert tuned.returncode == 0, tuned.stderr[-2000:]
    state = torch.load(tmp_path / "ft" / "vit_labelled_finetuned.pth", weights_only=True)["state_dict"]
    encoder = mae.load(mae_run["file"]).encoder.state_dict()
    assert all(torch.equal(state[k], encoder[k]) for k in encoder) and state["head.weight"].shape == (10, 192)
    classified = run_cli("infer", "--checkpoint", str(tmp_path / "ft" / "vit_labelled_finetuned.pth"),
                         "--image", str(labelled / "test" / "cat" / "0000.jpg"))
    assert classified.returncode == 0 and "%" in classified.stdout, classified.stderr[-2000:]
    probed = run_cli("train", *common, "--probe", "knn", "--output-dir", str(tmp_path / "probe"))
    assert probed.returncode == 0, probed.stderr[-2000:]
    assert records(tmp_path / "probe", "probe")[0]["feature_dim"] == 192


def test_infer_says_what_a_pretraining_file_is(mae_run):
    result = run_cli("infer", "--checkpoint", str(mae_run["file"]), "--image", str(next(mae_run["data"].iterdir())))
    assert result.returncode == 1 and "an MAE pretraining file" in result.stderr
    assert f"python -m train --pretrained {mae_run['file']}" in result.stderr


@pytest.mark.long
def test_killed_pretraining_run_resumes_to_the_same_weights(cifar_dir, tmp_path):
    """SIGINT in the second epoch, --resume: the same file as an uninterrupted run's, bit for bit
    (each step's masks come from the generator last.pt saves)."""
    data = unlabelled_folder(cifar_dir, tmp_path / "photos", 16)
    common = ["--data", str(data), "--epochs", "2", "--cache-dir", str(tmp_path / "cache"), *MAE_ARGS,
              "--batch-size", "8"]
    whole = run_cli("train", *common, "--output-dir", str(tmp_path / "whole"))
    assert whole.returncode == 0, whole.stderr[-2000:]
    process = start_training([*common, "--output-dir", str(tmp_path / "cut")], until="epoch 1/2:")
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 128 + signal.SIGINT, stderr[-2000:]
    resumed = run_cli("train", *common, "--output-dir", str(tmp_path / "cut"), "--resume", str(tmp_path / "cut" / "last.pt"))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a, b = (torch.load(tmp_path / run / "vit_photos_mae.pth", weights_only=True) for run in ("whole", "cut"))
    assert a["state_dict"].keys() == b["state_dict"].keys()
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
    assert a["metrics"]["test_loss"] == b["metrics"]["test_loss"]


@pytest.mark.parametrize("flags, message", [
    (["--lora", "4"], "argument --lora: not with --objective mae"),
    (["--probe", "knn"], "argument --probe: not with --objective mae"),
    (["--model", "vit_small_patch14_dinov2"], "--objective mae pretrains the paper's ViTs"),
    (["--mask-ratio", "1.0"], "argument --mask-ratio: 1.0 is not in (0, 1)"),
])
def test_mae_flags_that_do_not_fit_are_one_line(flags, message, tmp_path):
    result = run_cli("train", "--objective", "mae", "--pretrained", "none", "--output-dir", str(tmp_path), *flags)
    assert result.returncode == 2 and message in result.stderr


def test_patch_size_needs_a_model_built_from_scratch(tmp_path):
    result = run_cli("train", "--patch-size", "4", "--img-size", "32", "--output-dir", str(tmp_path))
    assert result.returncode == 2 and "argument --patch-size: builds a model from scratch" in result.stderr


def test_a_folder_of_one_image_is_refused_in_one_line(cifar_dir, tmp_path):
    (tmp_path / "one").mkdir()
    shutil.copyfile(cifar_dir / "train" / "cat" / "0000.jpg", tmp_path / "one" / "cat.jpg")
    result = run_cli("train", "--data", str(tmp_path / "one"), "--output-dir", str(tmp_path / "out"),
                     "--cache-dir", str(tmp_path / "cache"), *MAE_ARGS)
    assert result.returncode == 1 and "one image; pretraining needs some to train on" in result.stderr
