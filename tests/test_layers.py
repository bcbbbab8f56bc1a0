"""The library's layers: no module imports a higher layer (the README's layout map).

Order, low to high: ``errors`` → ``ops`` (pure operators) → ``models`` → ``config`` → ``io``
(files) → ``track`` (MLflow runs, services) → ``data`` (sources, loader, validation set) →
``train`` | ``infer`` (siblings: neither imports the other) → ``stages`` → the entry points
(``tanet/cli.py``, ``python -m tanet.train``, ``python -m tanet.train.session``). Imports
inside functions count too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RANK = {"errors": 0, "ops": 1, "models": 2, "config": 3, "io": 4, "track": 5, "data": 6, "train": 7, "infer": 7}
RANK |= {"stages": 8, "entry": 9}
ENTRY_POINTS = {"tanet/cli.py", "tanet/train/cli.py", "tanet/train/__main__.py", "tanet/train/session.py"}


def layer(path: str) -> str:
    """The layer of a file under ``tanet/`` (its package, or the module's name at the top)."""
    if path in ENTRY_POINTS:
        return "entry"
    parts = Path(path).with_suffix("").parts
    return parts[1]


def tanet_imports(path: Path) -> set[str]:
    """Files (under ``tanet/``) of the modules that ``path`` imports."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        for name in names:
            base = ROOT / name.replace(".", "/")
            for f in (base.with_suffix(".py"), base / "__init__.py"):
                if name.startswith("tanet.") and f.is_file():
                    out.add(f.relative_to(ROOT).as_posix())
    return out


MODULES = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "tanet").rglob("*.py"))


@pytest.mark.parametrize("module", [m for m in MODULES if m != "tanet/__init__.py"])
def test_no_module_imports_a_higher_layer(module: str) -> None:
    own = layer(module)
    bad = [
        dep
        for dep in tanet_imports(ROOT / module)
        if RANK[layer(dep)] > RANK[own] or (RANK[layer(dep)] == RANK[own] and layer(dep) != own)
    ]
    assert not bad, f"{module} ({own}) imports higher or sibling layers: {bad}"


def test_every_package_has_a_layer() -> None:
    assert {layer(m) for m in MODULES if m != "tanet/__init__.py"} == set(RANK)


def test_a_violation_is_caught(tmp_path: Path) -> None:
    probe = tmp_path / "x.py"
    probe.write_text("def f():\n    from tanet.stages.ingest import run_ingest\n")
    deps = tanet_imports(probe)
    assert deps == {"tanet/stages/ingest.py"} and RANK[layer("tanet/stages/ingest.py")] > RANK["io"]


def test_no_public_name_is_defined_in_two_modules() -> None:
    """One home for each helper: a public module-level name has one definition.

    Exempt: ``main`` and ``log`` (each module's entry and logger), and ``PARAMS``, the
    protocol every stage module fills with what it reads (:mod:`tanet.stages`)."""
    homes: dict[str, set[str]] = {}
    for path in [*(ROOT / "tanet").rglob("*.py"), *(ROOT / "flows").rglob("*.py")]:
        for node in ast.parse(path.read_text()).body:
            names = [node.name] if isinstance(node, (ast.FunctionDef, ast.ClassDef)) else []
            if isinstance(node, ast.Assign):
                names = [t.id for t in node.targets if isinstance(t, ast.Name)]
            for name in names:
                if not name.startswith("_") and name not in ("main", "log", "PARAMS"):
                    homes.setdefault(name, set()).add(path.relative_to(ROOT).as_posix())
    twice = {name: sorted(files) for name, files in homes.items() if len(files) > 1}
    assert not twice, twice
