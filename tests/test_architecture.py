"""How the code is put together (the readable-ViT issue): checkpoints that carry their
architecture, a plain ViT's forward path without family branches, and layers that depend one way.
"""

import ast
import dataclasses
import importlib.util
import inspect
import textwrap

import pytest
import torch

import vit
import vit.families
from tests.conftest import REPO, perturb_, real_images
from vit.checkpoint import CheckpointError, ModelCard, load_model, save_model
from weights.load import WeightsError

NAME = "vit_tiny_patch16_224"


@pytest.fixture
def trained(tmp_path, cifar_dir):
    """A perturbed ViT-Ti at 32 px with 3 classes (all 12 blocks: a file without an architecture
    is rebuilt from its name), two real images, and a card without the architecture."""
    torch.manual_seed(0)
    model = perturb_(vit.create_model(NAME, num_classes=3, img_size=32)).eval()
    card = ModelCard(NAME, 32, ("a", "b", "c"), (0.5,) * 3, (0.5,) * 3)
    return model, card, real_images(cifar_dir, 2, 32)


def change_table_row(monkeypatch, **fields):
    """vit/families.py's row of NAME as a later version might have it: other fields, same tensors."""
    spec = vit.families.MODELS[NAME]
    monkeypatch.setitem(vit.families.MODELS, NAME, dataclasses.replace(spec, config={**spec.config, **fields}))


@torch.no_grad()
def test_a_checkpoint_written_before_the_architecture_was_recorded_predicts_as_before(trained, tmp_path):
    """Today's code writing the older format (name, size, eps and activation only): it still loads,
    through load_model (infer, export) and create_model, and predicts exactly as the model did."""
    model, card, images = trained
    save_model(tmp_path / "old.pth", model, card)
    assert "architecture" not in torch.load(tmp_path / "old.pth", weights_only=True)
    loaded, loaded_card = load_model(tmp_path / "old.pth")
    assert loaded_card.architecture is None
    assert torch.allclose(loaded(images), model(images), atol=1e-6)
    again = vit.create_model(NAME, pretrained=tmp_path / "old.pth").eval()
    assert torch.allclose(again(images), model(images), atol=1e-6)


@torch.no_grad()
def test_a_recorded_architecture_survives_a_change_of_the_family_table(trained, tmp_path, monkeypatch):
    model, card, images = trained
    expected = model(images)
    save_model(tmp_path / "new.pth", model, dataclasses.replace(card, architecture=model.cfg))
    save_model(tmp_path / "old.pth", model, card)
    change_table_row(monkeypatch, pool="avg")  # the same tensors, another model
    loaded, _ = load_model(tmp_path / "new.pth")
    assert torch.allclose(loaded(images), expected, atol=1e-6)
    again = vit.create_model(NAME, pretrained=tmp_path / "new.pth").eval()
    assert torch.allclose(again(images), expected, atol=1e-6)
    # ... where a file without it follows the table, and so computes something else
    rebuilt, _ = load_model(tmp_path / "old.pth")
    assert not torch.allclose(rebuilt(images), expected, atol=1e-3)


def test_architecture_fields_added_later_get_defaults_and_unknown_ones_are_one_line(trained, tmp_path):
    model, card, images = trained
    save_model(tmp_path / "model.pth", model, dataclasses.replace(card, architecture=model.cfg))
    checkpoint = torch.load(tmp_path / "model.pth", weights_only=True)
    assert checkpoint["architecture"] == model.cfg.to_dict()

    del checkpoint["architecture"]["layer_scale_mlp"]  # as written before the field existed
    torch.save(checkpoint, tmp_path / "older.pth")
    loaded, _ = load_model(tmp_path / "older.pth")
    assert loaded.cfg.layer_scale_mlp is True

    checkpoint["architecture"]["wormholes"] = 3  # as a newer version might write
    torch.save(checkpoint, tmp_path / "newer.pth")
    with pytest.raises(CheckpointError, match="unknown model config field.*wormholes") as error:
        load_model(tmp_path / "newer.pth")
    assert "\n" not in str(error.value)
    with pytest.raises(WeightsError, match="wormholes"):
        vit.create_model(NAME, pretrained=tmp_path / "newer.pth")


def test_training_records_the_architecture(tiny_run):
    checkpoint = torch.load(tiny_run["out"] / "vit_cifar10_finetuned.pth", weights_only=True)
    model, _ = load_model(tiny_run["out"] / "vit_cifar10_finetuned.pth")
    assert checkpoint["architecture"] == model.cfg.to_dict()
    assert checkpoint["architecture"]["num_classes"] == len(checkpoint["class_names"])


def branch_count(model: torch.nn.Module) -> dict[str, int]:
    """{class.method: if/else count} for every method a model's forward can reach, helpers
    included: each method of each of its module classes (ours, not torch's), except those that
    build or initialise it and explain's attention_map. Stricter than
    tests/branches.py, which reads the forward methods alone."""
    counts = {}
    for cls in {type(module) for module in model.modules() if not type(module).__module__.startswith("torch.")}:
        for klass in cls.__mro__:
            if klass.__module__.startswith("torch") or klass is object:
                continue
            for name, function in vars(klass).items():
                if not inspect.isfunction(function) or name in ("__init__", "reset_parameters", "reset_head",
                                                                  "attention_map", "weights", "extra_repr",
                                                                  # vit/features.py: not the classification path
                                                                  # (the count of timm's left them out too)
                                                                  "forward_intermediates", "get_intermediate_layers"):
                    continue
                tree = ast.parse(textwrap.dedent(inspect.getsource(function)))
                counts[f"{klass.__name__}.{name}"] = sum(isinstance(n, (ast.If, ast.IfExp)) for n in ast.walk(tree))
    return counts


def test_the_plain_vit_forward_path_asks_which_family_it_runs_nowhere():
    """ViT-B/16's forward path, every method its forward can reach: one branch, activation
    checkpointing's (run_block). The pooling, the final norm's place and the heads are classes
    chosen once (vit/layers/heads.py), so forward_head asks nothing. (It was 6; timm has 34.)"""
    from tests.branches import branches

    with torch.device("meta"):
        model = vit.create_model("vit_base_patch16_224")
    total, _ = branches(model)
    counts = branch_count(model)
    assert total == 0 and sum(counts.values()) <= 1, {k: v for k, v in counts.items() if v}
    assert counts["VisionTransformer.forward_head"] == counts["VisionTransformer.norm_tokens"] == 0


LAYERS = ("weights", "vit", "infer", "train", "benchmarks")  # bottom first: README, "How the code is laid out"


def project_imports(path) -> set[str]:
    """The project's modules a file imports (at its top or inside a function), as dotted names:
    `from infer import compiled` is infer.compiled, `from vit.model import X` vit.model."""
    tree = ast.parse(path.read_text())
    names = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            submodules = {f"{node.module}.{alias.name}" for alias in node.names
                          if (REPO / f"{node.module}.{alias.name}".replace(".", "/")).with_suffix(".py").is_file()}
            names |= submodules or {node.module}
    return {name for name in names if name.split(".")[0] in LAYERS}


def library_files():
    """Every module of the five packages but the command-line entry points (`__main__.py`): scripts
    that parse arguments and call the packages' Python API, above every package."""
    return [path for package in LAYERS for path in sorted((REPO / package).rglob("*.py")) if path.name != "__main__.py"]


def module_name(path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_packages_depend_one_way_down_the_layers_as_the_readme_says():
    """weights at the bottom (formats, files), then vit (the model and what builds it), infer
    (images in, predictions out, precision), train (which reads images as infer does), benchmarks."""
    readme = (REPO / "README.md").read_text()
    assert " -> ".join(f"`{name}`" for name in LAYERS) in readme  # the README's layer sentence is this order
    upward = []
    for path in library_files():
        level = LAYERS.index(path.relative_to(REPO).parts[0])
        upward += [f"{path.relative_to(REPO)} imports {name}" for name in project_imports(path)
                   if LAYERS.index(name.split(".")[0]) > level]
    assert not upward


def test_no_module_imports_itself_round_a_circle():
    modules = {module_name(path): path for path in library_files()}
    graph = {name: {imported for imported in project_imports(path) if imported in modules and imported != name}
             for name, path in modules.items()}
    done, path_now = set(), []

    def visit(name):
        if name in path_now:
            raise AssertionError(" -> ".join(path_now[path_now.index(name):] + [name]))
        if name in done:
            return
        path_now.append(name)
        for imported in graph[name]:
            visit(imported)
        path_now.pop()
        done.add(name)

    for name in graph:
        visit(name)


def test_no_code_file_of_the_model_is_longer_than_a_reader_can_hold():
    """vit/: each code file at most about 500 lines; the family table, being data, may be longer."""
    long = {str(path.relative_to(REPO)): lines for path in sorted((REPO / "vit").rglob("*.py"))
            if (lines := len(path.read_text().splitlines())) > 520 and path.name != "families.py"}
    assert not long
