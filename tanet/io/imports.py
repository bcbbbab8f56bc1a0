"""Which ``tanet`` files a module needs: the static closure of its import statements.

Two users: ``dvc.yaml``'s code deps (``tests/test_dvc_deps.py`` derives and checks them) and
the registered MLflow model, which ships only the inference code (:mod:`tanet.stages.register`).
Static on purpose: every ``import`` statement counts, at module level or inside functions, so
a lazily imported dependency is never left out.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parents[2]  # the folder holding the tanet package


def module_file(module: str, root: Path = PACKAGE_ROOT) -> str | None:
    """The file of a ``tanet`` module relative to ``root`` (``tanet.io.video`` -> ``tanet/io/video.py``)."""
    base = root / module.replace(".", "/")
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path.relative_to(root).as_posix()
    return None


def imports_of(path: str, root: Path = PACKAGE_ROOT) -> set[str]:
    """Files of the ``tanet`` modules that file ``path`` imports (``from tanet.x import y`` may name a module y)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse((root / path).read_text())):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for name in names:
            if name.split(".")[0] == "tanet" and (f := module_file(name, root)) is not None:
                out.add(f)
    return out


def import_closure(files: Iterable[str], root: Path = PACKAGE_ROOT) -> set[str]:
    """``files`` and every ``tanet`` file they import, directly or not."""
    seen = set(files)
    todo = [f for f in seen if f.startswith("tanet/")]
    while todo:
        for dep in imports_of(todo.pop(), root) - seen:
            seen.add(dep)
            todo.append(dep)
    return seen


def package_inits(files: Iterable[str], root: Path = PACKAGE_ROOT) -> set[str]:
    """The ``__init__.py`` of every package above ``files`` (what importing them also runs)."""
    out: set[str] = set()
    for f in files:
        for parent in Path(f).parents:
            init = parent / "__init__.py"
            if parent != Path(".") and (root / init).is_file():
                out.add(init.as_posix())
    return out
