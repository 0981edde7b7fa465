"""`python -m infer` and the Classifier API on real images of every kind a user may have."""

import json
import re

import numpy as np
import pytest
import torch
from PIL import Image

from infer import Classifier, ImageError, load_image
from tests.conftest import run_cli
from train.batches import make_batches
from train.datasets import decode_to_tensor, list_image_folder
from train.config import TrainConfig


@pytest.fixture(scope="module")
def classifier(tiny_run):
    return Classifier(tiny_run["out"] / "vit_cifar10_finetuned.pth", device="cpu")


@pytest.fixture(scope="module")
def photo(cifar_dir):
    """A real CIFAR-10 test image, upscaled to a photo-like 96 x 96 RGB image."""
    return Image.open(cifar_dir / "test" / "cat" / "0003.jpg").convert("RGB").resize((96, 96), Image.BICUBIC)


def image_kinds(photo: Image.Image, folder):
    """One file per kind of image; returns {kind: path}."""
    rgba = photo.convert("RGBA")
    alpha = np.zeros(photo.size[::-1], dtype=np.uint8)
    alpha[photo.size[1] // 2 :] = 255  # top half transparent, bottom half opaque
    rgba.putalpha(Image.fromarray(alpha))
    gray = photo.convert("L")
    sixteen = Image.fromarray(np.asarray(gray).astype(np.uint16) * 257)  # 16-bit grayscale
    palette = photo.convert("P", palette=Image.ADAPTIVE, colors=64)
    palette_transparent = palette.copy()
    palette_transparent.info["transparency"] = 0
    exif = photo.rotate(90, expand=True)  # stored on its side, with EXIF saying "rotate 90 CW"
    exif_data = Image.Exif()
    exif_data[0x0112] = 6
    kinds = {
        "rgb.jpg": (photo, {}), "rgba.png": (rgba, {}), "la.png": (gray.convert("LA"), {}),
        "gray.png": (gray, {}), "bilevel.png": (gray.convert("1"), {}), "palette.png": (palette, {}),
        "palette_transparent.png": (palette_transparent, {"transparency": 0}),
        "gray16.png": (sixteen, {}), "float.tiff": (Image.fromarray(np.asarray(gray, dtype=np.float32) / 255), {}),
        "cmyk.jpg": (photo.convert("CMYK"), {}), "exif_rotated.png": (exif, {"exif": exif_data}),
        "huge.jpg": (photo.resize((6000, 4000)), {"quality": 80}), "one_pixel.png": (photo.resize((1, 1)), {}),
        "webp.webp": (photo, {}),
    }
    paths = {}
    for name, (image, options) in kinds.items():
        image.save(folder / name, **options)
        paths[name] = folder / name
    return paths


def test_every_kind_of_image_is_classified(classifier, photo, tmp_path):
    paths = image_kinds(photo, tmp_path)
    predictions = list(classifier.classify(list(paths.values()), topk=3))
    assert [p.error for p in predictions] == [None] * len(paths)
    for p in predictions:
        assert len(p.top) == 3 and p.top[0][1] >= p.top[1][1] and 0 < sum(v for _, v in p.top) <= 1 + 1e-6


def test_image_kinds_are_decoded_faithfully(photo, tmp_path):
    paths = image_kinds(photo, tmp_path)
    gray = torch.from_numpy(np.asarray(photo.convert("L")).copy())
    assert torch.equal(load_image(paths["gray16.png"], 96)[0], gray)  # 16-bit scaled, not clipped at 255
    assert torch.equal(load_image(paths["gray.png"], 96)[1], gray)
    upright = load_image(paths["exif_rotated.png"], 96)
    assert torch.equal(upright, torch.from_numpy(np.asarray(photo).copy()).permute(2, 0, 1))
    rgba = load_image(paths["rgba.png"], 96)
    assert rgba.shape == (3, 96, 96) and rgba[:, :48].min() == 255  # transparent half -> white
    assert torch.equal(rgba[:, 48:], torch.from_numpy(np.asarray(photo).copy()).permute(2, 0, 1)[:, 48:])
    assert load_image(paths["one_pixel.png"], 32).shape == (3, 1, 1)
    huge = load_image(paths["huge.jpg"], 32)
    assert max(huge.shape[1:]) < 1000  # decoded at reduced scale, not at 6000 x 4000


def test_preprocessing_is_exactly_trainings_evaluation_preprocessing(classifier, tiny_run):
    _, files, labels = list_image_folder(tiny_run["data"] / "test")
    files, labels = files[:20], labels[:20]
    split = decode_to_tensor(files, labels, 32, num_workers=1, skip_bad=False)
    cfg = TrainConfig(img_size=32, batch_size=10)
    batches = make_batches(split, cfg, torch.device("cpu"), classifier.card.mean, classifier.card.std, train=False)
    training_inputs = torch.cat([images for images, _ in batches.epoch(0)])
    inference_inputs = torch.cat([classifier.preprocess(load_image(f, 32)) for f in files])
    assert torch.equal(training_inputs, inference_inputs)


def test_images_are_resized_where_the_model_runs_not_in_the_decoding_threads(tiny_run, monkeypatch):
    """The decoding threads only decode: a PyTorch op there would start a team of OpenMP threads
    of its own, fighting the model's for the cores (benchmarks/README.md, "Whole runs")."""
    import threading

    from infer import predict

    resized_in, resize = [], predict.to_model_input

    def recorded(*args, **kwargs):
        resized_in.append(threading.current_thread())
        return resize(*args, **kwargs)
    monkeypatch.setattr(predict, "to_model_input", recorded)
    paths = sorted((tiny_run["data"] / "test").glob("*/*.jpg"))[:40]
    classifier = Classifier(tiny_run["out"] / "vit_cifar10_finetuned.pth", device="cpu", workers=2)
    assert all(p.top for p in classifier.classify(paths))
    assert len(resized_in) == len(paths) and set(resized_in) == {threading.current_thread()}


def test_training_decodes_every_image_kind_as_inference_does(photo, tmp_path):
    """Small training images go through the same reader: a half-transparent RGBA or a 16-bit
    image gives the tensor training learns from and inference later sees, pixel for pixel."""
    small = photo.resize((32, 32))
    rgba = small.convert("RGBA")
    rgba.putalpha(Image.fromarray(np.tile(np.arange(32, dtype=np.uint8) * 8, (32, 1))))
    rgba.save(tmp_path / "rgba.png")
    Image.fromarray(np.asarray(small.convert("L")).astype(np.uint16) * 257).save(tmp_path / "gray16.png")
    files = [tmp_path / "rgba.png", tmp_path / "gray16.png"]
    split = decode_to_tensor(files, [0, 1], 32, num_workers=1, skip_bad=False)
    assert all(torch.equal(split.images[i], load_image(f, 32)) for i, f in enumerate(files))


def test_infer_data_reproduces_the_accuracy_training_reported(tiny_run):
    reported = torch.load(tiny_run["out"] / "vit_cifar10_finetuned.pth", weights_only=True)["metrics"]["test_acc"]
    result = run_cli("infer", "--checkpoint", str(tiny_run["out"] / "vit_cifar10_finetuned.pth"),
                        "--data", str(tiny_run["data"]))  # finds data/test itself
    assert result.returncode == 0, result.stderr
    assert f"top-1: {100 * reported:.2f}%  (in fp32; training measured {100 * reported:.2f}% in fp32 on its own " \
           "test set)" in result.stdout  # the precision it ran in, and training's figure beside it
    assert re.search(r"top-5: \d+\.\d\d%  \(300 images\)", result.stdout)
    assert len(re.findall(r"^ +\w+: \d+\.\d\d%$", result.stdout, re.M)) == 10  # per-class lines


def test_cli_prints_class_and_confidence_per_image(tiny_run, photo, tmp_path):
    photo.save(tmp_path / "a.jpg")
    photo.save(tmp_path / "b.png")
    checkpoint = str(tiny_run["out"] / "vit_cifar10_finetuned.pth")
    result = run_cli("infer", "--checkpoint", checkpoint, "--image", str(tmp_path))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 2 and all(re.fullmatch(r".*[ab]\.(jpg|png): \w+ \(\d+\.\d%\)", l) for l in lines)
    result = run_cli("infer", "--checkpoint", checkpoint, "--image", str(tmp_path / "a.jpg"), "--topk", "3", "--json")
    record = json.loads(result.stdout)[0]
    assert len(record["predictions"]) == 3 and record["path"].endswith("a.jpg")


def write_bad_inputs(folder, photo):
    photo.save(folder / "good.jpg")
    data = (folder / "good.jpg").read_bytes()
    (folder / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (folder / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "notes.jpg").write_text("this is a text file, not a JPEG\n")
    Image.new("1", (12_000, 12_000)).save(folder / "bomb.png")  # 144 Mpx, a few kB on disk
    return ["truncated.jpg", "corrupt.png", "empty.jpg", "notes.jpg", "bomb.png", "missing.jpg"]


def test_bad_inputs_get_one_line_each_and_the_rest_is_classified(tiny_run, photo, tmp_path):
    bad = write_bad_inputs(tmp_path, photo)
    paths = [str(tmp_path / "good.jpg")] + [str(tmp_path / name) for name in bad]
    checkpoint = str(tiny_run["out"] / "vit_cifar10_finetuned.pth")
    result = run_cli("infer", "--checkpoint", checkpoint, "--image", *paths)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    errors = result.stderr.strip().splitlines()
    assert len(errors) == len(bad)
    for name, reason in zip(bad, ["unreadable", "not an image", "empty file", "not an image",
                                  "decompression bomb", "no such file"]):
        assert any(name in line and reason in line for line in errors), (name, errors)
    assert result.stdout.count(": ") == 1 and "good.jpg" in result.stdout
    as_json = json.loads(run_cli("infer", "--checkpoint", checkpoint, "--image", *paths, "--json").stdout)
    assert [("error" in r) for r in as_json] == [False] + [True] * len(bad)


def test_malicious_checkpoint_is_refused_and_its_payload_never_runs(tmp_path):
    marker = tmp_path / "payload_ran"

    class Payload:
        def __reduce__(self):
            import os
            return (os.system, (f"touch {marker}",))

    torch.save({"state_dict": {}, "model_name": Payload()}, tmp_path / "evil.pth")
    (tmp_path / "x.jpg").write_bytes(b"")
    result = run_cli("infer", "--checkpoint", str(tmp_path / "evil.pth"), "--image", str(tmp_path / "x.jpg"))
    assert result.returncode == 1 and "refused" in result.stderr and "Traceback" not in result.stderr
    assert not marker.exists()


def test_truncated_or_mismatched_checkpoints_are_clear_errors(tiny_run, tmp_path):
    source = tiny_run["out"] / "vit_cifar10_finetuned.pth"
    (tmp_path / "cut.pth").write_bytes(source.read_bytes()[:10_000])
    card = torch.load(source, weights_only=True)
    torch.save({**card, "num_classes": 100}, tmp_path / "classes.pth")
    torch.save({**card, "model_name": "vit_small_patch16_224"}, tmp_path / "arch.pth")
    expectations = {"cut.pth": "truncated or not a PyTorch checkpoint", "classes.pth": "do not fit",
                    "arch.pth": "do not fit vit_small_patch16_224"}
    for name, message in expectations.items():
        result = run_cli("infer", "--checkpoint", str(tmp_path / name), "--image", str(source))
        assert result.returncode == 1 and message in result.stderr and "Traceback" not in result.stderr, result.stderr


def test_load_image_errors_name_the_reason(tmp_path):
    with pytest.raises(ImageError, match="no such file"):
        load_image(tmp_path / "absent.png", 32)
    with pytest.raises(ImageError, match="is a folder"):
        load_image(tmp_path, 32)


def test_readmes_python_example_runs_as_written_and_writes_its_picture(tiny_run, tmp_path, cifar_dir):
    """The README's Classifier example, run as written (its checkpoint and data paths pointed at
    this test's run and data): it prints each prediction and writes the picture it names; run
    again, it overwrites that picture instead of piling up copies."""
    import re

    from tests.conftest import REPO, run_module

    readme = (REPO / "README.md").read_text()
    code = next(block for block in re.findall(r"```python\n(.*?)```", readme, re.S) if "from infer import Classifier" in block)
    code = code.replace("runs/quick/vit_cifar10_finetuned.pth", str(tiny_run["out"] / "vit_cifar10_finetuned.pth"))
    code = code.replace("../shared/data/cifar10-jpg", str(cifar_dir))
    for _ in range(2):
        result = run_module("-c", code, cwd=tmp_path)
        assert result.returncode == 0, result.stderr[-2000:]
        printed, picture = result.stdout.splitlines()
        path, top = printed.split(" ", 1)
        assert path == str(cifar_dir / "test" / "cat" / "0003.jpg") and len(eval(top)) == 3
        assert picture == "explained/0003.png" and (tmp_path / picture).stat().st_size > 0
        assert [p.name for p in (tmp_path / "explained").iterdir()] == ["0003.png"]


def test_explain_names_two_inputs_of_one_name_apart_and_returns_a_list(classifier, tmp_path, cifar_dir):
    """explain and classify return lists (the work is done when they return); two inputs named
    0000.jpg in one call get 0000.png and 0000-2.png."""
    images = [cifar_dir / "test" / "cat" / "0000.jpg", cifar_dir / "test" / "dog" / "0000.jpg"]
    explained = classifier.explain(images, tmp_path)
    assert isinstance(explained, list) and [picture.name for _, picture in explained] == ["0000.png", "0000-2.png"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["0000-2.png", "0000.png"]
    predictions = classifier.classify(images)
    assert isinstance(predictions, list) and [p.top[0][0] for p in predictions] == [p.top[0][0] for p, _ in explained]
    # explain runs one image at a time, classify a batch of two: fp32 matmuls of another shape block
    # and sum in another order (AMX and AVX-512 kernels differ here), ~1e-7 relative; 1e-5 is ample
    for prediction, (explained_prediction, _) in zip(predictions, explained):
        assert prediction.top[0][1] == pytest.approx(explained_prediction.top[0][1], abs=1e-5)


def test_infer_given_weights_or_a_folder_says_what_it_is_and_what_to_do(tiny_run, tmp_path, capsys):
    """A timm .safetensors file, a Hugging Face-style folder, or a run folder given to --checkpoint:
    one line naming what it is, and the fine-tuned .pth to use or the command that makes one
    (`python -m infer`'s main, in process)."""
    from infer.__main__ import main
    from tests.conftest import make_timm_file

    weights = tmp_path / "hf" / "model.safetensors"
    weights.parent.mkdir()
    make_timm_file("vit_tiny_patch16_224", weights, depth=1)
    expected = {
        weights: "a .safetensors weights file (timm's, Hugging Face's or a converted one), not a fine-tuned model; "
                 f"fine-tune it first (python -m train --pretrained {weights})",
        weights.parent: f"a folder of pretrained weights, not a fine-tuned model; fine-tune them first "
                        f"(python -m train --pretrained {weights.parent})",
        tiny_run["out"]: f"a run folder; give the fine-tuned model in it: {tiny_run['out'] / 'vit_cifar10_finetuned.pth'}",
    }
    image = tiny_run["data"] / "test" / "cat" / "0000.jpg"
    for given, says in expected.items():
        assert main(["--checkpoint", str(given), "--image", str(image)]) == 1
        assert capsys.readouterr().err.strip().splitlines() == [f"error: {given}: {says}"]


def test_a_file_name_cannot_forge_an_output_line_and_odd_names_keep_their_picture(tiny_run, tmp_path, cifar_dir):
    """A newline in a name is printed as \\n (one line per image, always); `--explain` on
    `..jpg` writes the `..png` it reports."""
    import shutil

    checkpoint = str(tiny_run["out"] / "vit_cifar10_finetuned.pth")
    forged = tmp_path / "cat.jpg\nship.jpg: airplane (99.9%)"
    shutil.copy(cifar_dir / "test" / "cat" / "0000.jpg", forged)
    result = run_cli("infer", "--checkpoint", checkpoint, "--image", str(forged))
    assert result.returncode == 0 and result.stdout.count("\n") == 1, result.stdout
    assert "cat.jpg\\nship.jpg: airplane (99.9%): " in result.stdout
    dots = tmp_path / "..jpg"
    shutil.copy(cifar_dir / "test" / "cat" / "0000.jpg", dots)
    result = run_cli("infer", "--checkpoint", checkpoint, "--image", str(dots), "--explain", str(tmp_path / "pictures"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith(f"explained in {tmp_path / 'pictures' / '..png'}")
    assert [p.name for p in (tmp_path / "pictures").iterdir()] == ["..png"]


def test_a_large_image_gives_no_decompression_bomb_warning_and_a_bomb_is_one_line(tmp_path):
    """Pillow's own check is off (infer/images.py): an image under MAX_PIXELS reads without its
    two-line warning, whatever the warnings filters say; one over it is refused from the header."""
    import warnings

    from infer import images

    Image.new("L", (9800, 9700)).save(tmp_path / "large.png")  # 95 M pixels: over Pillow's 89 M, under ours
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # what a -W option or another library's catch_warnings may leave
        assert load_image(tmp_path / "large.png", 32).shape[0] == 3
    assert not [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)]
    Image.new("1", (11000, 10000)).save(tmp_path / "bomb.png")
    with pytest.raises(ImageError, match="over 100,000,000 pixels"):
        load_image(tmp_path / "bomb.png", 32)
    assert images.MAX_PIXELS == 100_000_000
