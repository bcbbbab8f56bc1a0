"""``dvc.yaml``'s ``params:`` lists cover exactly what each stage's code reads.

A stage receives its params through its module's ``PARAMS`` (argument -> key; see
:mod:`tanet.stages`), never the whole ``Params``. What it reads is derived statically, like
the code deps (``tests/test_dvc_deps.py``): a named key (``scale: model.scale``) counts when
``run_<stage>`` uses its argument; a section argument (``evaluate: EvaluateParams``, in any
function the stage calls) is followed through ``<arg>.<key>`` chains and aliases
(``ep = evaluate``, then ``ep.max_frames``), and a section handed on whole counts as all of
it. ``ALL_PARAMS`` (the whole params as a dict) is left out on purpose: stages record it as
metadata (``model.json``, MLflow tags), which must not make every edit re-run them. A
declared entry is covered by a read of it, of a key under it, or of the section above it.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import textwrap
from pathlib import Path

import yaml
from test_dvc_deps import ENTRY

from flows.stage import STAGES, stage_module
from tanet.config import Params
from tanet.io.imports import module_file
from tanet.stages import ALL_PARAMS

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = {name for name, f in Params.__dataclass_fields__.items()}
# Annotation of a section argument -> its section (``EvaluateParams`` -> ``evaluate``). The
# model section's type is also every loaded network's config (``ModelConfig`` in inference
# code, read from model.json, not from params), so it is left out: stages bind it by name.
SECTION_TYPES = {
    type(getattr(Params(), name)).__name__: name
    for name in SECTIONS
    if dataclasses.is_dataclass(getattr(Params(), name)) and name != "model"
}


def _chain(node: ast.AST) -> list[str] | None:
    """``a.b.c`` -> ``["a", "b", "c"]`` (None for anything else)."""
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        return [node.id, *reversed(parts)]
    return None


def _reads_in(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> set[str]:
    """Dotted params keys read in one function through its ``Params`` or section arguments."""
    args = [*fn.args.posonlyargs, *fn.args.args, *fn.args.kwonlyargs]
    roots: dict[str, str] = {}  # argument or alias -> the section it holds ("" for the whole Params)
    for a in args:
        shown = ast.unparse(a.annotation) if a.annotation is not None else ""
        if shown == "Params":
            roots[a.arg] = ""
        elif shown in SECTION_TYPES:
            roots[a.arg] = SECTION_TYPES[shown]
    if not roots:
        return set()
    aliased: set[int] = set()
    for node in ast.walk(fn):  # aliases: x = params.section / x = section / x, y = params.a, params.b
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target, value = node.targets[0], node.value
            pairs = (
                zip(target.elts, value.elts)
                if isinstance(target, ast.Tuple) and isinstance(value, ast.Tuple)
                else [(target, value)]
            )
            for t, v in pairs:
                chain = _chain(v)
                if not (isinstance(t, ast.Name) and chain and chain[0] in roots):
                    continue
                if roots[chain[0]] == "" and len(chain) == 2:
                    roots[t.id] = chain[1]
                    aliased.add(id(v))
                elif roots[chain[0]] and len(chain) == 1:
                    roots[t.id] = roots[chain[0]]
                    aliased.add(id(v))
    reads: set[str] = set()
    parents = {child: parent for parent in ast.walk(fn) for child in ast.iter_child_nodes(parent)}
    for node in ast.walk(fn):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load) and roots.get(node.id):
            if not isinstance(parents.get(node), ast.Attribute) and id(node) not in aliased:
                reads.add(roots[node.id])  # a section handed on whole
            continue
        if not isinstance(node, ast.Attribute) or isinstance(parents.get(node), ast.Attribute):
            continue  # only the longest chain
        if id(node) in aliased:
            continue  # `ep = params.evaluate`: what counts is what is read through ep
        chain = _chain(node)
        if not chain or chain[0] not in roots:
            continue
        keys = ([roots[chain[0]]] if roots[chain[0]] else []) + chain[1:]
        if keys and keys[-1] == "to_dict":
            continue
        if keys and keys[0] in SECTIONS:
            reads.add(".".join(keys[:2]))
    return reads


def _used_names(fn: ast.AST) -> set[str]:
    return {n.id for n in ast.walk(fn) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}


def _functions(path: str) -> dict[str, ast.AST]:
    """Top-level functions and classes of a file, by name."""
    tree = ast.parse((ROOT / path).read_text())
    return {n.name: n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))}


def _imported(path: str) -> dict[str, tuple[str, str]]:
    """``local name -> (file, name)`` for ``from tanet.x import name`` anywhere in a file."""
    out = {}
    for node in ast.walk(ast.parse((ROOT / path).read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("tanet"):
            for a in node.names:
                f = module_file(node.module, ROOT)
                if f is not None:
                    out[a.asname or a.name] = (f, a.name)
    return out


def _reached(path: str, name: str) -> list[ast.AST]:
    """The function ``name`` of ``path`` and every tanet function or class it calls, transitively."""
    seen: set[tuple[str, str]] = set()
    todo, out = [(path, name)], []
    while todo:
        key = todo.pop()
        if key in seen:
            continue
        seen.add(key)
        node = _functions(key[0]).get(key[1])
        if node is None:
            continue
        out.append(node)
        local, imported = _functions(key[0]), _imported(key[0])
        for call in ast.walk(node):
            if isinstance(call, ast.Call) and isinstance(call.func, ast.Name):
                callee = call.func.id
                if callee in local:
                    todo.append((key[0], callee))
                elif callee in imported:
                    todo.append(imported[callee])
    return out


def _fields_behind(key: str) -> set[str]:
    """A read of a derived property (``model.num_frames``) as the keys it is computed from
    (``model.num_branches``); a plain key as itself."""
    section, _, name = key.partition(".")
    cls = type(getattr(Params(), section, None))
    prop = getattr(cls, name, None) if name else None
    if not isinstance(prop, property) or prop.fget is None:
        return {key}
    tree = ast.parse(textwrap.dedent(inspect.getsource(prop.fget)))
    fields = getattr(cls, "__dataclass_fields__", {})
    return {
        f"{section}.{n.attr}"
        for n in ast.walk(tree)
        if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name) and n.value.id == "self" and n.attr in fields
    }


def binding(stage: str) -> dict[str, str]:
    """The stage module's ``PARAMS``: ``run_<stage>`` argument -> params key."""
    return dict(stage_module(stage).PARAMS)


def derived(stage: str) -> set[str]:
    """Params keys (``section`` or ``section.key``) read by what ``run_<stage>`` calls."""
    entry = _functions(f"tanet/stages/{stage}.py")[f"run_{stage}"]
    used = _used_names(entry)
    reads = {key for arg, key in binding(stage).items() if key != ALL_PARAMS and arg in used}
    for node in _reached(f"tanet/stages/{stage}.py", f"run_{stage}"):
        for fn in ast.walk(node):
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                reads |= {f for key in _reads_in(fn) for f in _fields_behind(key)}
    if STAGES[stage].tracked:
        reads.add("mlflow.experiment")  # flows/stage.py opens the stage's MLflow run in that experiment
    return reads


def declared(stage: str) -> set[str]:
    return set(yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"][stage].get("params", []))


def _covered(key: str, by: set[str]) -> bool:
    return key in by or key.split(".")[0] in by


def test_every_params_read_is_declared_and_every_declared_param_is_read() -> None:
    problems = []
    for stage in ENTRY:
        reads, decl = derived(stage), declared(stage)
        missing = sorted(k for k in reads if not _covered(k, decl))
        unread = sorted(
            d for d in decl if not any(r == d or r.startswith(d + ".") or d.startswith(r + ".") for r in reads)
        )
        if missing or unread:
            problems.append(f"{stage}: read but not in dvc.yaml {missing}; in dvc.yaml but not read {unread}")
    assert not problems, "\n".join(problems)


def test_stages_take_their_sections_and_named_keys_never_the_whole_params() -> None:
    problems = []
    for stage in ENTRY:
        entry = _functions(f"tanet/stages/{stage}.py")[f"run_{stage}"]
        assert isinstance(entry, ast.FunctionDef)
        args = {a.arg for a in [*entry.args.posonlyargs, *entry.args.args, *entry.args.kwonlyargs]}
        bound = binding(stage)
        if missing := sorted(set(bound) - args):
            problems.append(f"{stage}: PARAMS binds {missing}, which run_{stage} does not take")
        if unused := sorted(a for a in bound if a not in _used_names(entry)):
            problems.append(f"{stage}: run_{stage} never uses {unused}")
        for node in _reached(f"tanet/stages/{stage}.py", f"run_{stage}"):
            for fn in ast.walk(node):
                if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    whole = [
                        a.arg
                        for a in fn.args.args + fn.args.kwonlyargs
                        if ast.unparse(a.annotation or ast.Constant(None)) == "Params"
                    ]
                    if whole:
                        problems.append(f"{stage}: {fn.name} takes the whole Params ({whole})")
    assert not problems, "\n".join(problems)


def test_the_derivation_follows_aliases_and_sections_used_whole(tmp_path: Path) -> None:
    code = (
        "def f(params: Params, other: int) -> None:\n"
        "    ep, rp = params.evaluate, params.register\n"
        "    use(ep.max_frames, rp.model_name, params.model, params.patches.degradation, params.to_dict())\n"
        "def g(p) -> None:\n"
        "    p.train.steps\n"
    )
    reads = set()
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.FunctionDef):
            reads |= _reads_in(node)
    assert reads == {"evaluate.max_frames", "register.model_name", "model", "patches.degradation"}
    sections = (
        "def h(evaluate: EvaluateParams, patches: PatchesParams, model: ModelConfig) -> None:\n"
        "    ep = evaluate\n"
        "    use(ep.tile, build(patches), model.scale)\n"
    )
    fn = ast.parse(sections).body[0]
    assert isinstance(fn, ast.FunctionDef)
    assert _reads_in(fn) == {"evaluate.tile", "patches"}
