"""Deployment flows: ``train-tanet`` (the whole pipeline), ``ingest-videos``, ``evaluate-model``.

They drive the DVC pipeline (DVC stays the one owner of what is stale): write the run's
``params.yaml`` from a preset and the flow parameters, then run ``dvc repro`` with
``PREFECT_API_URL`` and ``MLFLOW_TRACKING_URI`` passed on, so every stage shows as its own
flow run on the same Prefect server and its MLflow runs nest under one parent run created
here. When the registry's tracking URI is not the one the last registration used, the
``register`` stage is forced so the model lands in this server's registry.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from flows.common import ROOT
from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from tanet.atomic import atomic_write_text
from tanet.config import dump_params, preset_params
from tanet.errors import TanetError
from tanet.tracking import PARENT_ENV, new_parent_run, tracking_uri


def pipeline_params(
    preset: str, scale: int | None, alignment: str | None, sources: list[str] | None, overrides: dict[str, Any] | None
) -> dict[str, Any]:
    """The params dict of a run: a preset, then the flow's parameters, then free overrides."""
    over: dict[str, Any] = {}
    if scale is not None:
        over["model.scale"] = scale
        over["degrade.scales"] = [scale]
    if alignment is not None:
        over["model.alignment"] = alignment
    if sources:
        over["ingest.paths"] = list(sources)
    over.update(overrides or {})
    return preset_params(preset, over)


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
    rows = ["| dataset | method | Y-PSNR (dB) | SSIM |", "|---|---|---|---|"]
    for ds, methods in eval_json.items():
        for m in ("bicubic", "tanet", *sorted(k for k in methods if k.startswith("branch_"))):
            if m in methods:
                rows.append(f"| {ds} | {m} | {methods[m]['psnr']:.2f} | {methods[m]['ssim']:.4f} |")
    return (
        "# tanet training run\n\n"
        f"Registered **{registration['model_name']}** version **{registration['version']}** "
        f"(aliases: {', '.join(registration['aliases'])}) in `{registration['tracking_uri']}`: "
        f'{registration["decision"]}.\n\nLoad it with `mlflow.pyfunc.load_model("{registration["model_uri"]}")` '
        f"or `tanet upscale IN OUT --model {registration['model_uri']}`.\n\n" + "\n".join(rows) + "\n"
    )


@flow(name="train-tanet")
def train_tanet(
    preset: str = "quick",
    scale: int | None = None,
    alignment: str | None = None,
    sources: list[str] | None = None,
    overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Runs the whole pipeline with ``dvc repro`` and reports the evaluation and the registered model.

    Args:
        preset: ``tiny``, ``quick`` or ``full``.
        scale: upscaling factor (2, 3, 4); None keeps the preset's.
        alignment: ``none``, ``rof`` or ``san``; None keeps the preset's.
        sources: extra video files or frame folders to ingest (paths on the worker's machine).
        overrides: more ``{"section.key": value}`` params.
    """
    params = pipeline_params(preset, scale, alignment, sources, overrides)
    atomic_write_text(ROOT / "params.yaml", dump_params(params))
    parent = new_parent_run(
        params["mlflow"]["experiment"], ROOT, {"tanet.preset": preset, "tanet.trigger": "train-tanet"}
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
def ingest_videos(sources: list[str], preset: str = "quick") -> dict[str, Any]:
    """Adds video files or frame folders to the configured sources and runs the ``ingest`` stage."""
    params = pipeline_params(preset, None, None, sources, None)
    atomic_write_text(ROOT / "params.yaml", dump_params(params))
    dvc(["repro", "ingest"], _env(None))
    return {"quarantine": json.loads((ROOT / "data/clips/quarantine.json").read_text())}


@flow(name="evaluate-model")
def evaluate_model() -> dict[str, Any]:
    """Re-runs evaluation (e.g. after Vid4 became available) and reports the table."""
    dvc(["repro", "--force", "--single-item", "evaluate"], _env(None))
    return json.loads((ROOT / "metrics/eval.json").read_text())


if __name__ == "__main__":
    train_tanet()
