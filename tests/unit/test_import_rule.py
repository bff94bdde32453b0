"""The layers are real: pipeline.core imports no stage, a stage imports from pipeline only pipeline.core
and from a sibling stage only its data contracts, and no two layers import each other.

Every import counts, at module level or inside a function (a deferred import is still a dependency),
``import x`` and ``from x import y``, relative ones resolved. See docs/interfaces.md, "Layers and the
import rule".
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("pipeline", "synth", "train", "evaluate")
STAGES = ("synth", "train", "evaluate")
CORE = "pipeline.core"
TOP = "pipeline"

ALLOWED = {
    # (importing module or package, imported module or package): why a stage may import a sibling.
    ("train.instruct", "synth.datasets"): "instruction data is written from the same image folders",
    ("train.shard_reader", "synth.shard_format"): "the shard format: train reads what synth writes",
    ("evaluate", "synth.datasets"): "the test set is read with the dataset readers synth trains from",
    ("evaluate", "synth.text"): "questions and region words exactly as the model was trained on them",
    ("evaluate", "train.model"): "evaluation loads the trained model and parses its answers",
    ("train.model.predictor", "synth.probes"): "the map guard probes a bank with anomalies of its references",
    ("train.model.predictor", "synth.text"): "answers are decoded ahead along the phrasings training wrote",
}


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def module_names(root: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every .py of the packages under ``root``."""
    modules = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


def imports_of(module: str, path: Path, modules: dict[str, Path]) -> list[tuple[str, int]]:
    """(imported module of ours, line) for every import statement anywhere in the file."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join([*base, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            for alias in node.names:  # `from pkg import submodule` depends on the submodule
                sub = f"{target}.{alias.name}"
                found.append((sub if sub in modules else target, node.lineno))
    return [(name, line) for name, line in found if name.split(".")[0] in PACKAGES]


def layer(module: str) -> str:
    if _within(module, CORE):
        return CORE
    return module.split(".")[0]  # a stage, or "pipeline": the top layer


def allowed(importer: str, imported: str) -> bool:
    return any(_within(importer, a) and _within(imported, b) for a, b in ALLOWED)


def check(root: Path) -> tuple[list[str], set[tuple[str, str]]]:
    """The rule's violations under ``root`` (one line each) and the allowlist entries in use."""
    modules = module_names(root)
    problems, used, edges = [], set(), {}
    for module, path in modules.items():
        for imported, line in imports_of(module, path, modules):
            src, dst = layer(module), layer(imported)
            if src == dst:
                continue
            edges.setdefault(src, set()).add(dst)
            where = f"{path.relative_to(root)}:{line}: {module} imports {imported}"
            if src == CORE:
                problems.append(f"{where}: {CORE} imports no stage and nothing above it")
            elif src in STAGES and dst == TOP:
                problems.append(f"{where}: a stage imports from pipeline only {CORE}")
            elif src in STAGES and dst in STAGES:
                if allowed(module, imported):
                    used |= {(a, b) for a, b in ALLOWED if _within(module, a) and _within(imported, b)}
                else:
                    problems.append(f"{where}: not a data contract in the allowlist")
    problems += [f"import cycle between layers: {' -> '.join(c)}" for c in cycles(edges)]
    return problems, used


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Each cycle of the layer graph once, as the path that closes it (a -> b -> a)."""
    found: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        for nxt in sorted(edges.get(node, ())):
            if nxt == path[0]:
                found.append([*path, nxt])
            elif nxt not in path and nxt > path[0]:  # start each cycle at its smallest layer
                visit(nxt, [*path, nxt])

    for start in sorted(edges):
        visit(start, [start])
    return found


def test_the_repository_keeps_the_import_rule():
    problems, used = check(ROOT)
    assert problems == []
    assert len(module_names(ROOT)) > 80  # the checker saw the real tree, not an empty folder
    assert used == set(ALLOWED), f"allowlist entries no code needs any more: {set(ALLOWED) - used}"


def _tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    for package in PACKAGES:
        (root / package).mkdir(exist_ok=True)
        (root / package / "__init__.py").touch()
    return root


CLEAN = {
    "pipeline/core/__init__.py": "",
    "pipeline/core/files.py": "from pipeline.core import errors\n",
    "pipeline/core/errors.py": "",
    "pipeline/orchestrate.py": "import synth.job\nfrom train import job\nfrom evaluate.job import run\n",
    "synth/datasets.py": "from pipeline.core.errors import InputError\n",
    "synth/job.py": "from . import datasets\nfrom .datasets import read\n",
    "train/shard_reader.py": "from synth.shard_format import load_manifest\n",
    "train/job.py": "def f():\n    from pipeline.core import files\n",
    "evaluate/job.py": "from train.model.checkpoint import load\nfrom synth import datasets\n",
}


def test_a_clean_tree_passes(tmp_path):
    assert check(_tree(tmp_path, CLEAN))[0] == []


@pytest.mark.parametrize(
    ("name", "text", "expected"),
    [
        # the foundation reaching up, through a relative import inside a function
        ("pipeline/core/config.py", "def f():\n    from .. import orchestrate\n", "imports no stage"),
        ("pipeline/core/config.py", "import synth.job\n", "imports no stage"),
        # a stage importing the top layer, deferred or not
        ("synth/job.py", "def f():\n    from pipeline.registry import run\n", "imports from pipeline only"),
        ("train/job.py", "from pipeline import pipeline_config\n", "imports from pipeline only"),
        # a sibling stage outside the allowlist: the importer matters, not only the imported module
        ("train/job.py", "import synth.shard_format\n", "not a data contract"),
        ("synth/job.py", "from train import job\n", "not a data contract"),
    ],
)
def test_each_kind_of_violation_is_reported(tmp_path, name, text, expected):
    problems, _ = check(_tree(tmp_path, {**CLEAN, name: text}))
    assert len([p for p in problems if expected in p]) == 1, problems
    assert problems[0].startswith(name + ":")


def test_a_cycle_between_stages_is_reported(tmp_path, monkeypatch):
    monkeypatch.setitem(ALLOWED, ("synth", "train.model"), "only for this test")
    tree = _tree(tmp_path, {**CLEAN, "synth/nsa.py": "from train.model import build\n"})
    problems, _ = check(tree)
    assert problems == ["import cycle between layers: synth -> train -> synth"]
