"""The notebook runs top to bottom at a tiny size (its parameter cell replaced)."""

import nbformat
from nbclient import NotebookClient

from tests.conftest import REPO, make_subset


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
