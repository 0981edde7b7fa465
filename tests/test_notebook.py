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


@pytest.mark.long
def test_tour_notebook_matches_timm_at_every_stage(cifar_dir, tmp_path):
    """The from-scratch tour, on real images: every stage it builds by hand equals timm's."""
    import re

    notebook = nbformat.read(REPO / "notebooks" / "vit_from_scratch.ipynb", as_version=4)
    cell = next(c for c in notebook.cells if "parameters" in c.metadata.get("tags", []))
    cell.source = (f"MODEL = 'vit_tiny_patch16_224'\nWEIGHTS = 'random'\n"
                   f"IMAGE = {str(cifar_dir / 'test' / 'ship' / '0001.jpg')!r}\nIMAGES = {str(cifar_dir / 'test')!r}\n"
                   f"OUT_DIR = {str(tmp_path / 'tour')!r}")
    NotebookClient(notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(REPO)}}).execute()
    outputs = "".join(o.get("text", "") for c in notebook.cells if c.cell_type == "code" for o in c.outputs)
    against_timm = [float(d) for d in re.findall(r"max \|ours - timm\| = (\S+)", outputs)]
    by_hand = [float(d) for d in re.findall(r"max \|ours - (?:conv|by hand)\| = (\S+)", outputs)]
    assert len(against_timm) == 1 + 1 + 2 + 11 + 3  # patches, CLS+positions, block 1 (2 steps), blocks 2-12, norm+head+model
    assert len(by_hand) == 3 and max(by_hand) <= 1e-5  # conv = linear, embed and block 1 by hand
    differences = against_timm
    assert max(differences) <= 1e-5, outputs
    assert "(1, 197, 192)" in outputs and "(batch, heads, tokens, head_dim)" in outputs
    assert sorted(p.name for p in (tmp_path / "tour" / "figures").iterdir()) == [
        "attention_distance.png", "patch_embedding_filters.png", "position_similarity.png"]
    pictures = sum(1 for c in notebook.cells if c.cell_type == "code" for o in c.outputs if "image/png" in o.get("data", {}))
    assert pictures == 2 + 3  # patches, attention, the three figures
