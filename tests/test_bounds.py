"""Files and inputs cannot ask for gigabytes: each is checked (types, ranges, shapes against the
weights) before memory is taken, with one line naming what is wrong. The memory bounds are
measured (a subprocess's peak resident size), not hoped for."""

import json
import os
import resource

import numpy as np
import pytest
import torch

import vit
from tests.conftest import run_cli, run_module
from vit.checkpoint import CheckpointError, ModelCard, load_model, save_model

ATTACKS = {  # a recorded architecture's field -> the value a hostile or careless file gives it
    "depth": 100000, "mlp_ratio": 3000, "img_size": 65536, "register_tokens": 10_000_000, "num_heads": 0,
    "embed_dim": 192.0, "layer_norm_eps": 1e30, "stem_depths": [100000],
}


@pytest.fixture
def tiny(tmp_path):
    model = vit.create_model("vit_tiny_patch16_224", num_classes=3, img_size=32, depth=2)
    path = tmp_path / "vit_cifar10_finetuned.pth"
    save_model(path, model, ModelCard("vit_tiny_patch16_224", 32, ("a", "b", "c"), (0.5,) * 3, (0.5,) * 3,
                                      architecture=model.cfg))
    return path


def test_a_recorded_architecture_is_checked_field_by_field_before_any_memory_is_taken(tiny, tmp_path):
    """Before: 7.7-12.9 GB allocated (or grown until killed), then "weights do not fit". Each file
    is loaded in one subprocess, whose peak resident size past its imports is measured."""
    checkpoint = torch.load(tiny, weights_only=True)
    files = {}
    for field, value in ATTACKS.items():
        changed = {**checkpoint, "architecture": {**checkpoint["architecture"], field: value,
                                                  **({"stem": "bit"} if field == "stem_depths" else {})}}
        files[field] = tmp_path / f"{field}.pth"
        torch.save(changed, files[field])
    script = ("import json, resource, sys\nfrom vit.checkpoint import CheckpointError, load_model\nsaid = {}\n"
              "imported = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"  # torch's own, whatever it touched
              "for field, path in json.loads(sys.argv[1]).items():\n"
              "    try:\n        load_model(path); said[field] = 'LOADED'\n"
              "    except CheckpointError as error:\n        said[field] = str(error)\n"
              "grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - imported\n"
              "print(json.dumps({'said': said, 'grown_mb': grown // 1024}))")
    result = run_module("-c", script, json.dumps({k: str(v) for k, v in files.items()}))
    assert result.returncode == 0, result.stderr[-2000:]
    answer = json.loads(result.stdout)
    for field, said in answer["said"].items():
        assert "\n" not in said and f"cannot rebuild its model ({field} is" in said, said
    assert answer["grown_mb"] < 300, answer["grown_mb"]  # the peak past the imports: the files' own cost


def test_weights_of_another_model_name_the_model_the_file_holds(tiny, tmp_path):
    checkpoint = torch.load(tiny, weights_only=True)
    torch.save({**checkpoint, "architecture": {**checkpoint["architecture"], "mlp_ratio": 8.0}}, tmp_path / "x.pth")
    with pytest.raises(CheckpointError) as error:
        load_model(tmp_path / "x.pth")
    said = str(error.value)
    assert "weights do not fit vit_tiny_patch16_224 (size mismatch for blocks.0.mlp.fc1.weight" in said
    assert "the file holds 2 blocks of width 192" in said
    assert len(said) < 400 and "\n" not in said


def test_a_text_file_is_called_what_it_is(tmp_path):
    (tmp_path / "notes.pth").write_text("these are my notes, not a model\n")
    result = run_cli("infer", "--checkpoint", str(tmp_path / "notes.pth"), "--image", str(tmp_path))
    assert result.returncode == 1 and "not a PyTorch checkpoint (it is a text file)" in result.stderr
    assert "Python objects" not in result.stderr


def test_a_fifo_named_onnx_is_refused_not_opened(tmp_path):
    fifo = tmp_path / "model.onnx"
    os.mkfifo(fifo)
    result = run_module("-m", "infer", "--checkpoint", str(fifo), "--image", str(tmp_path), timeout=120)
    assert result.returncode == 1 and "a named pipe (FIFO), not a checkpoint file" in result.stderr


def test_onnx_aliases_share_one_tensor_and_scopes_are_bounded_before_they_are_parsed(tmp_path):
    """One 16 MB initializer with 120 dotted Identity aliases cost 2.5 GB (150x) when each alias was
    copied; a 25 MB name_scopes string cost 2.4 GB in ast.literal_eval."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from weights.onnx_graph import _scope, read_onnx

    weight = numpy_helper.from_array(np.ones((2048, 2048), dtype=np.float32), "blocks.0.mlp.fc1.weight")
    aliases = [helper.make_node("Identity", ["blocks.0.mlp.fc1.weight"], [f"blocks.{i}.mlp.fc1.weight"])
               for i in range(1, 121)]
    graph = helper.make_graph(aliases, "g", [], [helper.make_tensor_value_info(f"blocks.{i}.mlp.fc1.weight",
                                                                                TensorProto.FLOAT, None)
                                                  for i in range(1, 121)], initializer=[weight])
    onnx.save(helper.make_model(graph), tmp_path / "aliases.onnx")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    tensors, _ = read_onnx(tmp_path / "aliases.onnx")
    assert len(tensors) == 121 and len({t.data_ptr() for t in tensors.values()}) == 1
    assert (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024 < 200  # MB: not 121 copies

    node = helper.make_node("MatMul", ["a", "b"], ["c"])
    node.metadata_props.add(key="pkg.torch.onnx.name_scopes", value=repr(["", "blocks"] * 2_000_000))
    assert _scope(node) is None  # not parsed: anonymous


def test_a_weight_finite_in_float64_but_infinite_in_float32_is_refused():
    from weights.load import WeightsError, check_finite

    with pytest.raises(WeightsError, match="blocks.0.weight holds NaN or infinite values"):
        check_finite({"blocks.0.weight": torch.tensor([1e300], dtype=torch.float64)}, "model.onnx")


def test_naflex_input_is_checked_before_anything_is_allocated():
    from vit.naflex import pack

    model = vit.create_model("naflexvit_base_patch16_gap", depth=1, embed_dim=64, num_heads=2).eval()
    batch = pack([torch.randn(3, 64, 48), torch.randn(3, 32, 32)], 16)
    with pytest.raises(ValueError, match="differ in batch or length"):
        model.forward_naflex(batch["patches"], batch["patch_coord"], batch["patch_valid"][:1])  # it returned 1 output
    coords = batch["patch_coord"].clone()
    coords[0, 0, 0] = 200_000_000
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(ValueError, match="are not a 200000001 x 3 grid"):
        model.forward_naflex(batch["patches"], coords, batch["patch_valid"])  # 2.2 GB before it was refused
    aspect = vit.create_model("naflexvit_base_patch16_par_gap", depth=1, embed_dim=64, num_heads=2).eval()
    with pytest.raises(ValueError, match="1 x 4096 patch grid"):
        aspect(torch.randn(1, 3, 16, 65536))  # a 4096 x 4096 table at width 64: 4.3 GB before
    assert (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024 < 300


@pytest.mark.parametrize("indices", [[1.5], 1.5, [True]])
def test_intermediate_indices_are_whole_numbers(indices):
    model = vit.create_model("vit_tiny_patch16_224", depth=2, img_size=32)
    with pytest.raises(ValueError, match="whole numbers"):
        model.forward_intermediates(torch.randn(1, 3, 32, 32), indices=indices)


def test_a_mistyped_flag_is_named_with_the_closest_real_one(tmp_path):
    result = run_cli("infer", "--chekpoint", "x.pth", "--image", "a.jpg")
    assert result.returncode == 2
    assert result.stderr.strip() == ("python -m infer: error: unrecognized argument --chekpoint; did you mean "
                                     "--checkpoint? (see --help)")
    assert "did you mean --layout?" in run_cli("weights", "keymap", "--lyout", "timm").stderr
