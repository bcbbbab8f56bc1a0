"""``dvc.yaml``'s code deps are exactly the files each stage's code imports.

A stage runs ``flows/stage.py`` (with ``flows/common.py``) over ``tanet/stages/<stage>.py``,
binding its params with ``tanet/stages/__init__.py``; its code deps are those and every
``tanet`` module that the stage module and ``tanet/config.py`` import, directly or not, at module level or inside functions (static:
the import statements). The flows' own imports are not followed: ``flows/stage.py`` imports
each stage's code by name, and the tracking plumbing of ``flows/common.py`` does not decide
what a stage writes. Left out on
purpose, as ``dvc.yaml``'s header says: helpers that change how outputs are written, not
what they hold (``HELPERS``), and package ``__init__`` files that are only imported as
parents. Run this file as a script to print the lists (``python tests/test_dvc_deps.py``) or
to write them into ``dvc.yaml`` (``--write``; data deps and everything else stay as they are).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import yaml

from tanet.io.imports import import_closure, imports_of

ROOT = Path(__file__).resolve().parents[1]
HELPERS = {"tanet/errors.py", "tanet/io/atomic.py", "tanet/stages/parallel.py"}
# ``sources`` is always_changed (it runs every time), so it declares no code deps.
ENTRY = {
    s: ["flows/stage.py", "flows/common.py", "tanet/stages/__init__.py", f"tanet/stages/{s}.py"]
    for s in ("ingest", "degrade", "flow", "patches", "pretrain", "train", "evaluate", "register", "sample")
}


def code_deps(stage: str) -> list[str]:
    """The code deps of a stage: the closure of its entry files' imports, minus ``HELPERS``."""
    return sorted(import_closure([*ENTRY[stage], "tanet/config.py"], ROOT) - HELPERS)


def declared(stage: str) -> list[str]:
    """The code deps ``dvc.yaml`` declares for a stage (its deps that are not data)."""
    deps = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"][stage].get("deps", [])
    return sorted(d for d in deps if d.startswith(("tanet/", "flows/")) and d != "tanet/weights")


def test_every_stage_has_an_entry() -> None:
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    assert set(stages) == set(ENTRY) | {"sources"}
    assert stages["sources"]["always_changed"] and not stages["sources"].get("deps")


def test_code_deps_match_the_imports() -> None:
    drift = {s: (declared(s), code_deps(s)) for s in ENTRY if declared(s) != code_deps(s)}
    assert not drift, "\n".join(
        f"{s}: dvc.yaml lists {sorted(set(d) - set(c))} not imported; misses {sorted(set(c) - set(d))}"
        for s, (d, c) in drift.items()
    )


def test_a_new_import_is_seen(tmp_path: Path) -> None:
    """The closure follows imports inside functions too (the stages import heavy code lazily)."""
    assert "tanet/infer/pipeline.py" in code_deps("sample")  # imported at module level of stages/sample.py
    assert "tanet/ops/degrade.py" in imports_of("tanet/stages/sample.py")  # imported inside make_lr_sample


def write_code_deps(text: str) -> str:
    """``dvc.yaml``'s text with each checked stage's code deps replaced by :func:`code_deps` (after its data deps)."""
    out: list[str] = []
    stage, in_deps = None, False
    for line in text.splitlines(keepends=True):
        if re.match(r"^  [a-z_]+:\s*$", line):
            stage = line.strip()[:-1]
        if re.match(r"^    deps:\s*$", line):
            in_deps = True
            out.append(line)
            continue
        if in_deps:
            if re.match(r"^      - (tanet|flows)/", line) and line.strip() != "- tanet/weights":
                continue
            if re.match(r"^      - ", line):
                out.append(line)
                continue
            out += [f"      - {d}\n" for d in code_deps(stage)] if stage in ENTRY else []
            in_deps = False
        out.append(line)
    return "".join(out)


if __name__ == "__main__":
    if sys.argv[1:] == ["--write"]:
        (ROOT / "dvc.yaml").write_text(write_code_deps((ROOT / "dvc.yaml").read_text()))
    else:
        for s in sys.argv[1:] or ENTRY:
            print(f"{s}:\n" + "".join(f"      - {d}\n" for d in code_deps(s)))
