"""Deployment flows: ``train-tanet`` (the whole pipeline), ``ingest-videos``, ``evaluate-model``.

They drive the DVC pipeline (DVC stays the one owner of what is stale): apply the flow
parameters to the repo's ``params.yaml`` (or to a preset, when one is named; the file is
rewritten only when something changed, so a plain run keeps the user's file, comments and
all), then run ``dvc repro`` with
``PREFECT_API_URL`` and ``MLFLOW_TRACKING_URI`` passed on, so every stage shows as its own
flow run on the same Prefect server and its MLflow runs nest under one parent run created
here. When the registry's tracking URI is not the one the last registration used, the
``register`` stage is forced so the model lands in this server's registry.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from flows.common import ROOT
from tanet.config import dump_params, params_from_dict, preset_params, set_key
from tanet.errors import TanetError
from tanet.io.atomic import atomic_write_text
from tanet.stages.evaluate import markdown_report
from tanet.track.tracking import PARENT_ENV, new_parent_run, tracking_uri


def pipeline_params(
    preset: str | None,
    scale: int | None,
    alignment: str | None,
    sources: list[str] | None,
    overrides: dict[str, Any] | None,
    current: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The params dict of a run: a base, then the flow's parameters, then free overrides.

    Args:
        preset: start from this preset; None: from ``current`` (the repo's params.yaml).
        scale: upscaling factor; None keeps the base's.
        alignment: alignment mode; None keeps the base's.
        sources: video files or frame folders added to ``ingest.paths`` (kept once each).
        overrides: more ``{"section.key": value}`` params.
        current: the repo's params as a dict (needed when ``preset`` is None).
    """
    if preset is None and current is None:
        raise TanetError("pipeline_params: no preset and no current params.yaml to start from")
    base = preset_params(preset) if preset is not None else current
    assert base is not None
    over: dict[str, Any] = {}
    if scale is not None:
        over["model.scale"] = scale
        over["degrade.scales"] = [scale]
    if alignment is not None:
        over["model.alignment"] = alignment
    if sources:
        paths = list(base.get("ingest", {}).get("paths", []))
        over["ingest.paths"] = paths + [s for s in sources if s not in paths]
    over.update(overrides or {})
    data = copy.deepcopy(base)
    for key, value in over.items():
        data = set_key(data, key, value)
    params_from_dict(data, "the flow's params")  # validate: a bad parameter fails here, naming the key
    return data


def write_run_params(data: dict[str, Any], current: dict[str, Any] | None) -> bool:
    """Writes ``params.yaml`` when ``data`` differs from what it holds; True if it did."""
    if data == current:
        return False
    atomic_write_text(ROOT / "params.yaml", dump_params(data))
    return True


def current_params() -> dict[str, Any] | None:
    """The repo's params.yaml as a dict (None when there is none)."""
    path = ROOT / "params.yaml"
    if not path.is_file():
        return None
    import yaml

    data = yaml.safe_load(path.read_text())
    return data if isinstance(data, dict) else None


def _env(parent_run: str | None) -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["MLFLOW_TRACKING_URI"] = tracking_uri(ROOT)
    env.setdefault("DVC_NO_ANALYTICS", "1")
    if parent_run:
        env[PARENT_ENV] = parent_run
    return env


def dvc(args: list[str], env: dict[str, str]) -> str:
    """Runs ``dvc ARGS`` in the repo, streaming its output to the flow's log; raises on failure."""
    logger = get_run_logger()
    logger.info("dvc %s", " ".join(args))
    proc = subprocess.Popen(
        ["dvc", *args], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    lines = []
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.append(line)
        logger.info(line.rstrip())
    if proc.wait() != 0:
        raise TanetError(f"dvc {' '.join(args)} failed with status {proc.returncode}:\n{''.join(lines[-30:])}")
    return "".join(lines)


def _report(eval_json: dict[str, Any], registration: dict[str, Any]) -> str:
    branches = sorted({k for methods in eval_json.values() for k in methods if k.startswith("branch_")})
    table = markdown_report(eval_json, ["bicubic", "lanczos", "tanet", *branches])
    return (
        "# tanet training run\n\n"
        f"Registered **{registration['model_name']}** version **{registration['version']}** "
        f"(aliases: {', '.join(registration['aliases'])}) in `{registration['tracking_uri']}`: "
        f'{registration["decision"]}.\n\nLoad it with `mlflow.pyfunc.load_model("{registration["model_uri"]}")` '
        f"or `tanet upscale IN OUT --model {registration['model_uri']}`.\n\n" + table + "\n"
    )


@flow(name="train-tanet")
def train_tanet(
    preset: str | None = None,
    scale: int | None = None,
    alignment: str | None = None,
    sources: list[str] | None = None,
    overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Runs the whole pipeline with ``dvc repro`` and reports the evaluation and the registered model.

    Args:
        preset: ``tiny``, ``quick`` or ``full``; None (default) keeps the repo's params.yaml.
        scale: upscaling factor (2, 3, 4); None keeps the params'.
        alignment: ``none``, ``rof`` or ``san``; None keeps the params'.
        sources: video files or frame folders added to the ingested ones (paths on the worker's machine).
        overrides: more ``{"section.key": value}`` params.
    """
    current = current_params()
    params = pipeline_params(preset, scale, alignment, sources, overrides, current)
    if write_run_params(params, current):
        get_run_logger().info("params.yaml updated from the flow's parameters")
    parent = new_parent_run(
        params["mlflow"]["experiment"],
        ROOT,
        {"tanet.preset": params.get("preset", preset or "custom"), "tanet.trigger": "train-tanet"},
    )
    env = _env(parent)
    dvc(["repro"], env)
    registration = json.loads((ROOT / "metrics/register.json").read_text())
    if registration.get("tracking_uri") != env["MLFLOW_TRACKING_URI"]:
        # The stage was up to date but registered elsewhere: register here too.
        dvc(["repro", "--force", "--single-item", "register"], env)
        dvc(["repro"], env)
        registration = json.loads((ROOT / "metrics/register.json").read_text())
    eval_json = json.loads((ROOT / "metrics/eval.json").read_text())
    create_markdown_artifact(
        _report(eval_json, registration),
        key="tanet-training-run",
        description="evaluation table and registered model version",
    )
    return {"registration": registration, "eval": eval_json, "parent_run_id": parent}


@flow(name="ingest-videos")
def ingest_videos(sources: list[str], preset: str | None = None) -> dict[str, Any]:
    """Adds video files or frame folders to the configured sources and runs the ``ingest`` stage."""
    current = current_params()
    write_run_params(pipeline_params(preset, None, None, sources, None, current), current)
    dvc(["repro", "ingest"], _env(None))
    return {"quarantine": json.loads((ROOT / "data/clips/quarantine.json").read_text())}


@flow(name="evaluate-model")
def evaluate_model() -> dict[str, Any]:
    """Re-runs evaluation (e.g. after Vid4 became available) and reports the table."""
    dvc(["repro", "--force", "--single-item", "evaluate"], _env(None))
    return json.loads((ROOT / "metrics/eval.json").read_text())


if __name__ == "__main__":
    train_tanet()
