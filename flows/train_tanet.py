"""Deployment flows: ``train-tanet`` (the whole pipeline), ``ingest-videos``, ``evaluate-model``.

They drive the DVC pipeline (DVC stays the one owner of what is stale): apply the flow
parameters to the repo's ``params.yaml`` (or to a preset, when one is named; the file is
rewritten only when something changed, so a plain run keeps the user's file, comments and
all), then run ``dvc repro`` with
``PREFECT_API_URL`` and ``MLFLOW_TRACKING_URI`` passed on, so every stage shows as its own
flow run on the same Prefect server and its MLflow runs nest under one parent run created
here. When the registry's tracking URI is not the one the last registration used, the
``register`` stage is forced so the model lands in this server's registry.

One workspace runs one pipeline at a time. Each deployment queues its own runs (its
``concurrency_limit`` in prefect.yaml); across deployments and for runs started outside a
worker, every flow here holds :func:`workspace_lock` from before it reads ``params.yaml``
until its last ``dvc`` command, so a second run fails at once, naming the holder, having
changed nothing. Stage flow runs carry the tag ``pipeline:<flow run name>`` of the run that
started them (see :func:`flows.stage.stage_tags`), and so does that run.
"""

from __future__ import annotations

import copy
import fcntl
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.states import Failed, State

from flows.common import PIPELINE_TAG_ENV, ROOT
from tanet.config import dump_params, params_from_dict, preset_params, set_key
from tanet.errors import TanetError
from tanet.io.atomic import atomic_write_text
from tanet.stages.evaluate import markdown_report
from tanet.track.tracking import PARENT_ENV, drop_if_childless, new_parent_run, tracking_uri

LOCK_FILE = Path(".tanet") / "workspace.lock"


class WorkspaceBusy(TanetError):
    """Another pipeline run holds the workspace."""


@contextmanager
def workspace_lock(root: Path, holder: str) -> Iterator[None]:
    """Holds the workspace ``root`` for one pipeline run.

    An OS lock (``flock``) on ``.tanet/workspace.lock``: it ends with the process holding it,
    so a killed run never leaves the workspace locked. The file names the holder while held.

    Args:
        root: the repo.
        holder: who holds it, for the refusal's message (flow run, deployment, pid).

    Raises:
        WorkspaceBusy: the workspace is held; names the holder.
    """
    path = root / LOCK_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            held_by = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "another process"
            raise WorkspaceBusy(
                f"workspace {root} is busy: {held_by} is running a pipeline there; this run changed "
                "nothing (params.yaml untouched): start it again when that one has finished"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, holder.encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)
    finally:
        os.close(fd)


def _this_run() -> tuple[str, str]:
    """(name, description) of the current flow run, for tags and the lock's holder."""
    from prefect.runtime import deployment, flow_run

    name = str(flow_run.name or "")
    where = f" of deployment {deployment.name}" if deployment.name else ""
    return name, f"flow run {name!r} ({flow_run.id}){where}, pid {os.getpid()}"


def _tag_this_run(tag: str) -> None:
    """Adds ``tag`` to the current flow run (its stage flow runs get the same one)."""
    from prefect.client.orchestration import get_client
    from prefect.runtime import flow_run

    if not flow_run.id:
        return
    with get_client(sync_client=True) as client:
        client.update_flow_run(flow_run.id, tags=sorted({*flow_run.tags, tag}))


def in_workspace(body: Callable[[str], dict[str, Any]]) -> dict[str, Any] | State:
    """Runs ``body(pipeline_tag)`` holding the workspace; a busy one fails the flow run in one line."""
    name, holder = _this_run()
    try:
        with workspace_lock(ROOT, holder):
            tag = f"pipeline:{name}"
            if name:
                _tag_this_run(tag)
            return body(tag)
    except WorkspaceBusy as err:
        get_run_logger().error(str(err))
        return Failed(message=str(err))


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


def _env(parent_run: str | None, tag: str) -> dict[str, str]:
    env = dict(os.environ)
    env[PIPELINE_TAG_ENV] = tag
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


def _report(eval_json: dict[str, Any], registration: dict[str, Any], tag: str) -> str:
    branches = sorted({k for methods in eval_json.values() for k in methods if k.startswith("branch_")})
    table = markdown_report(eval_json, ["bicubic", "lanczos", "tanet", *branches])
    return (
        "# tanet training run\n\n"
        f"Registered **{registration['model_name']}** version **{registration['version']}** "
        f"(aliases: {', '.join(registration['aliases'])}) in `{registration['tracking_uri']}`: "
        f'{registration["decision"]}.\n\nLoad it with `mlflow.pyfunc.load_model("{registration["model_uri"]}")` '
        f"or `tanet upscale IN OUT --model {registration['model_uri']}`.\n\n" + table + "\n"
        f"\nThe stage flow runs of this pipeline carry the tag `{tag}`.\n"
    )


@flow(name="train-tanet")
def train_tanet(
    preset: str | None = None,
    scale: int | None = None,
    alignment: str | None = None,
    sources: list[str] | None = None,
    overrides: dict[str, Any] | None = None,
) -> dict[str, Any] | State:
    """Runs the whole pipeline with ``dvc repro`` and reports the evaluation and the registered model.

    Args:
        preset: ``tiny``, ``quick`` or ``full``; None (default) keeps the repo's params.yaml.
        scale: upscaling factor (2, 3, 4); None keeps the params'.
        alignment: ``none``, ``rof`` or ``san``; None keeps the params'.
        sources: video files or frame folders added to the ingested ones (paths on the worker's machine).
        overrides: more ``{"section.key": value}`` params.
    """

    def body(tag: str) -> dict[str, Any]:
        current = current_params()
        params = pipeline_params(preset, scale, alignment, sources, overrides, current)
        if write_run_params(params, current):
            get_run_logger().info("params.yaml updated from the flow's parameters")
        parent = new_parent_run(
            params["mlflow"]["experiment"],
            ROOT,
            {"tanet.preset": params.get("preset", preset or "custom"), "tanet.trigger": "train-tanet"},
        )
        env = _env(parent, tag)
        dvc(["repro"], env)
        registration = json.loads((ROOT / "metrics/register.json").read_text())
        if registration.get("tracking_uri") != env["MLFLOW_TRACKING_URI"]:
            # The stage was up to date but registered elsewhere: register here too.
            dvc(["repro", "--force", "--single-item", "register"], env)
            dvc(["repro"], env)
            registration = json.loads((ROOT / "metrics/register.json").read_text())
        if drop_if_childless(parent, ROOT):
            get_run_logger().info("every stage was up to date: no pipeline run is left in MLflow")
            parent = None
        eval_json = json.loads((ROOT / "metrics/eval.json").read_text())
        create_markdown_artifact(
            _report(eval_json, registration, tag),
            key="tanet-training-run",
            description="evaluation table and registered model version",
        )
        return {"registration": registration, "eval": eval_json, "parent_run_id": parent}

    return in_workspace(body)


@flow(name="ingest-videos")
def ingest_videos(sources: list[str], preset: str | None = None) -> dict[str, Any] | State:
    """Adds video files or frame folders to the configured sources and runs the ``ingest`` stage."""

    def body(tag: str) -> dict[str, Any]:
        current = current_params()
        write_run_params(pipeline_params(preset, None, None, sources, None, current), current)
        dvc(["repro", "ingest"], _env(None, tag))
        return {"quarantine": json.loads((ROOT / "data/clips/quarantine.json").read_text())}

    return in_workspace(body)


@flow(name="evaluate-model")
def evaluate_model() -> dict[str, Any] | State:
    """Re-runs evaluation (e.g. after Vid4 became available) and reports the table."""

    def body(tag: str) -> dict[str, Any]:
        dvc(["repro", "--force", "--single-item", "evaluate"], _env(None, tag))
        return dict(json.loads((ROOT / "metrics/eval.json").read_text()))

    return in_workspace(body)


if __name__ == "__main__":
    train_tanet()
