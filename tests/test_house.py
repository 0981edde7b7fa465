"""The house's promises to a reader: the README's counts are true, its links lead somewhere, and a
broken install is named in one line."""

import builtins
import re

import vit
from tests.conftest import REPO, run_cli

README = (REPO / "README.md").read_text()


def test_the_counts_the_readme_states_are_the_codes():
    names = re.search(r"(\d+)\s+names", README)
    assert names and int(names.group(1)) == len(vit.MODELS)
    lines = re.search(r"`vit/paper.py`\*\* \((\d+) lines", README)
    assert lines and int(lines.group(1)) == len((REPO / "vit" / "paper.py").read_text().splitlines())


def test_the_readme_is_a_front_door_whose_links_lead_somewhere():
    assert len(README.splitlines()) <= 250
    for document in (REPO / "docs").glob("*.md"):
        text = document.read_text()
        for link in re.findall(r"\]\(((?!http)[^)#]+)\)", text):
            assert (document.parent / link).exists(), f"{document.name}: {link}"
    for link in re.findall(r"\]\(((?!http)[^)#]+)\)", README):
        assert (REPO / link).exists(), link


def test_a_torchvision_built_for_another_torch_is_named_in_one_line(monkeypatch):
    """What pip gives on a CPU torch from PyTorch's index with torchvision from PyPI."""
    real_import = builtins.__import__

    def mismatched(name, *args, **kwargs):
        if name == "torchvision":
            raise RuntimeError("operator torchvision::nms does not exist")
        return real_import(name, *args, **kwargs)

    assert run_cli("vit", "--check").returncode == 0
    monkeypatch.setattr(builtins, "__import__", mismatched)
    result = run_cli("vit", "--check")
    assert result.returncode == 1 and result.stdout == ""
    (line,) = result.stderr.splitlines()
    assert "torchvision does not match torch" in line and "torchvision::nms" in line and "--index-url" in line


def test_the_guide_from_paper_to_a_family_points_at_the_lines_it_names():
    """docs/from-paper-to-a-family.md names each class as `Name` (file:line): that line defines it."""
    guide = (REPO / "docs" / "from-paper-to-a-family.md").read_text()
    references = re.findall(r"`(\w+)` \(((?:vit)/[\w/]+\.py):(\d+)\)", guide)
    assert len(references) >= 20
    for name, path, line in references:
        text = (REPO / path).read_text().splitlines()[int(line) - 1]
        assert re.match(rf"(class|def) {name}\b|{name} = ", text), f"{path}:{line} is not {name}: {text!r}"


def test_the_models_reading_map_points_at_paper_pys_lines():
    """vit/model.py's reading map cites paper.py's lines for each call: those lines are that step."""
    source = (REPO / "vit" / "model.py").read_text()
    paper = (REPO / "vit" / "paper.py").read_text().splitlines()
    steps = {"VisionTransformer.forward": "def forward(self, images", "PatchEmbedding": "self.projection(images)",
             "AddPositions": "+ self.position_embedding", "EncoderBlock.forward": "x = x + self.attention(",
             "qkv_projection": "self.qkv(x)", "SoftmaxAttention": "softmax(dim=-1)", "out_proj": "self.out_proj(",
             "MLP.forward": "self.fc2(F.gelu(", "the final LayerNorm": "self.final_norm(x)",
             "OneHead": "self.head(x[:, 0])"}
    for step, code in steps.items():
        row = next(line for line in source.splitlines() if step in line and re.search(r"\d+\s*$", line))
        first, _, last = row.split()[-1].partition("-")  # "65-67", or "94"
        cited = range(int(first), int(last or first) + 1)
        assert any(code in paper[i - 1] for i in cited), f"{step}: paper.py {row.split()[-1]}"
