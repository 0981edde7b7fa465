"""The other data sources: folders of large images (DataLoader path) and CIFAR-10's python batches."""

import pickle

import numpy as np
import torch
from PIL import Image

from tests.conftest import CLASSES, TINY_TRAIN_ARGS, run_cli
from train import TrainConfig
from train.datasets import DataError, load_dataset, read_cifar_batch


def test_folder_of_large_images_trains_through_the_dataloader(cifar_dir, tmp_path):
    """80 x 80 images are 'large' (over 64 px): read by DataLoader workers, not decoded whole."""
    root = tmp_path / "pets"
    for split, count in (("train", 16), ("val", 4)):
        for name in ("cat", "dog"):
            (root / split / name).mkdir(parents=True)
            for i in range(count):
                image = Image.open(cifar_dir / split.replace("val", "test") / name / f"{i:04d}.jpg")
                image.resize((80, 80)).save(root / split / name / f"{i}.png")
    cfg = TrainConfig(data=str(root), img_size=32, batch_size=8)
    data = load_dataset(cfg)
    assert data.train.images is None and len(data.train.files) == 32 and data.source_size is None
    result = run_cli("train", "--data", str(root), "--epochs", "1", "--output-dir", str(tmp_path / "out"),
                        *TINY_TRAIN_ARGS, "--batch-size", "8")
    assert result.returncode == 0, result.stderr[-3000:]
    card = torch.load(tmp_path / "out" / "vit_pets_finetuned.pth", weights_only=True)
    assert card["class_names"] == ["cat", "dog"] and card["source_size"] is None
    assert card["metrics"]["train_acc"] is not None
    predicted = run_cli("infer", "--checkpoint", str(tmp_path / "out" / "vit_pets_finetuned.pth"),
                           "--data", str(root / "val"))
    assert predicted.returncode == 0 and f"top-1: {100 * card['metrics']['test_acc']:.2f}%" in predicted.stdout


def write_cifar_batches(cifar_dir, folder, per_class: int):
    """The layout of CIFAR-10's python archive, from real images: pickled dicts of numpy arrays."""
    folder.mkdir()
    def batch(split, offset):
        images, labels = [], []
        for label, name in enumerate(CLASSES):
            for i in range(offset, offset + per_class):
                pixels = np.asarray(Image.open(cifar_dir / split / name / f"{i:04d}.jpg").convert("RGB"))
                images.append(pixels.transpose(2, 0, 1).reshape(-1))  # CHW, flattened, as in the archive
                labels.append(label)
        return {b"batch_label": b"x", b"labels": labels, b"data": np.stack(images), b"filenames": [b"f"] * len(labels)}
    for i in range(1, 6):
        with open(folder / f"data_batch_{i}", "wb") as file:
            pickle.dump(batch("train", i * per_class), file, protocol=2)
    with open(folder / "test_batch", "wb") as file:
        pickle.dump(batch("test", 0), file, protocol=2)
    with open(folder / "batches.meta", "wb") as file:
        pickle.dump({b"label_names": [n.encode() for n in CLASSES], b"num_cases_per_batch": 10}, file, protocol=2)


def test_extracted_cifar10_python_batches_load(cifar_dir, tmp_path):
    write_cifar_batches(cifar_dir, tmp_path / "cifar-10-batches-py", 2)
    data = load_dataset(TrainConfig(data=str(tmp_path / "cifar-10-batches-py")))
    assert data.name == "cifar10" and data.class_names == CLASSES and data.source_size == 32
    assert data.train.images.shape == (100, 3, 32, 32) and data.test.images.shape == (20, 3, 32, 32)
    first = np.asarray(Image.open(cifar_dir / "train" / "airplane" / "0002.jpg").convert("RGB"))
    assert torch.equal(data.train.images[0], torch.from_numpy(first.copy()).permute(2, 0, 1))


def test_doctored_cifar_batch_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "payload_ran"

    class Payload:
        def __reduce__(self):
            import os
            return (os.system, (f"touch {marker}",))

    with open(tmp_path / "data_batch_1", "wb") as file:
        pickle.dump({b"data": Payload()}, file, protocol=2)
    try:
        read_cifar_batch(tmp_path / "data_batch_1")
        raise AssertionError("a code-carrying pickle was accepted")
    except DataError as error:
        assert "refused to load" in str(error) and "system" in str(error)
    assert not marker.exists()


def test_out_of_memory_is_one_line_with_a_hint(monkeypatch, capsys):
    import train.__main__ as cli

    def no_memory(cfg, started=None):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(cli, "train", no_memory)
    assert cli.main(["--batch-size", "512"]) == 1
    assert capsys.readouterr().err.strip() == ("error: out of memory at --batch-size 512; lower --batch-size "
                                               "(or --eval-batch-size)")


def test_folder_listing_finds_images_in_path_order_and_skips_hidden_ones(tmp_path):
    from infer.images import expand_paths

    for name in ("b.jpg", "a.PNG", "notes.txt", ".hidden.jpg", "a/z.jpg", "a-b/y.jpeg", ".cache/x.jpg",
                 "a/.ipynb_checkpoints/w.jpg", "a/deeper/v.webp"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    found = [p.relative_to(tmp_path).as_posix() for p in expand_paths([tmp_path])]
    # Sorted as Paths sort (by their parts): "a/..." before "a-b/...", though "-" < "/" as characters.
    assert found == ["a/deeper/v.webp", "a/z.jpg", "a-b/y.jpeg", "a.PNG", "b.jpg"]
    (tmp_path / "empty").mkdir()
    assert expand_paths([tmp_path / "empty", tmp_path / "missing.jpg"]) == [tmp_path / "empty", tmp_path / "missing.jpg"]
