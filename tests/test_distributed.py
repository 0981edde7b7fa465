"""Data-parallel training with PyTorch's DDP, on CPU with the gloo backend and 2 processes."""

import json

import pytest

from tests.conftest import REPO, make_subset, run_module


@pytest.mark.long
def test_two_ranks_see_disjoint_shards_and_hold_identical_weights(cifar_dir, tmp_path):
    data = make_subset(cifar_dir, tmp_path / "data", 8, 2)  # 80 training images, 40 per rank
    result = run_module("-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533",
                        str(REPO / "tests" / "ddp_worker.py"), str(data), str(tmp_path / "out"),
                        env={"OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    rank0, rank1 = json.loads(result.stdout.strip().splitlines()[-1])
    assert rank0["steps"] == rank1["steps"] == 5  # 40 images per rank / batch 8
    assert not set(rank0["seen"]) & set(rank1["seen"])  # disjoint shards
    assert len(set(rank0["seen"]) | set(rank1["seen"])) == 80  # that together cover the data
    assert rank0["first"] == rank1["first"]  # identical weights after the steps...
    assert rank0["checksum"] == pytest.approx(rank1["checksum"], abs=0, rel=0)  # ...bit for bit


@pytest.mark.long
def test_torchrun_entry_point_trains(cifar_dir, tmp_path):
    data = make_subset(cifar_dir, tmp_path / "cifar10", 8, 2)
    result = run_module("-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29534",
                        "-m", "train", "--data", str(data), "--model", "vit_tiny_patch16_224", "--pretrained", "none",
                        "--img-size", "32", "--epochs", "1", "--batch-size", "8", "--device", "cpu",
                        "--num-workers", "1", "--output-dir", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "c"),
                        env={"OMP_NUM_THREADS": "1"}, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "2 ranks" in result.stdout
    assert (tmp_path / "out" / "vit_cifar10_finetuned.pth").is_file()
