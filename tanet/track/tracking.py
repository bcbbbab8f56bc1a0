"""Experiment tracking: MLflow when available, a no-op otherwise (imported lazily).

Tracking URI: ``MLFLOW_TRACKING_URI`` when set, else the embedded default, a SQLite store
in the repo (``mlflow.db``, artifacts under ``mlartifacts/``, both git-ignored), so nothing
needs a server.

Runs: one *parent* run per pipeline execution, one nested run per stage (and per branch
in ``pretrain``). Each DVC stage is its own process, so the parent run id is handed on:

1. ``TANET_PARENT_RUN_ID`` in the environment wins (the ``train-tanet`` Prefect flow
   creates the parent run and exports it to ``dvc repro``);
2. otherwise, under DVC (``DVC_ROOT`` set), the ``sources`` stage, which runs first in every
   ``dvc repro`` (it is always changed), writes a fresh pipeline token to
   ``.tanet/pipeline.json``; the first stage that logs creates the parent run and records
   it beside that token in ``.tanet/parent_run.json``, and later stages with the same token
   reuse it (a ``dvc repro --single-item`` of a later stage nests under the last pipeline);
3. stages run outside DVC share one parent run per process.

Training on a machine without MLflow (``--tracking none``) writes ``history.json`` next
to its weights; ``tanet import-run`` logs it to MLflow afterwards.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import uuid
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from tanet.io.atomic import atomic_write_json

log = logging.getLogger(__name__)

PARENT_ENV = "TANET_PARENT_RUN_ID"
STATE_FILE = Path(".tanet") / "parent_run.json"
PIPELINE_FILE = Path(".tanet") / "pipeline.json"  # {"token"}: one per dvc repro, written by the sources stage


def repo_root(start: Path | None = None) -> Path:
    """The project root: the nearest folder holding ``dvc.yaml`` or ``pyproject.toml``."""
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "dvc.yaml").is_file() or (folder / "pyproject.toml").is_file():
            return folder
    return here


def embedded_store(root: Path | None = None) -> Path | None:
    """The repo's embedded ``mlflow.db`` when there is a repo (a ``dvc.yaml`` here or above) and it exists."""
    here = (root or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "dvc.yaml").is_file():
            db = folder / "mlflow.db"
            return db if db.is_file() else None
    return None


def store_root(root: Path | None = None) -> Path:
    """The folder of the repo's embedded MLflow store (``mlflow.db``, ``mlartifacts/``).

    DVC's root when DVC runs the stage: ``dvc exp run --temp`` and queued experiments run the
    stages in a temporary copy of the repo but set ``DVC_ROOT`` to the workspace, so their
    runs and model versions land in the workspace's one store instead of vanishing with the
    copy. Otherwise ``root`` (default: :func:`repo_root`).
    """
    dvc_root = os.environ.get("DVC_ROOT")
    if dvc_root and (Path(dvc_root) / "dvc.yaml").is_file():
        return Path(dvc_root)
    return root or repo_root()


def tracking_uri(root: Path | None = None) -> str:
    """``MLFLOW_TRACKING_URI`` or the embedded SQLite store of the repo (:func:`store_root`)."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    return f"sqlite:///{store_root(root) / 'mlflow.db'}"


def configure_mlflow(root: Path | None = None) -> Any:
    """Imports MLflow with telemetry off and points it at :func:`tracking_uri`.

    Every path to MLflow goes through here, so a tracking server that is down or silent is
    one clear error within seconds (:func:`check_tracking_server`) instead of minutes of
    the client's retries; the retries stay for a server that answered once.

    Raises:
        TanetError: ``MLFLOW_TRACKING_URI`` names a server that does not answer.
    """
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("DO_NOT_TRACK", "true")
    check_tracking_server()
    import mlflow

    mlflow.set_tracking_uri(tracking_uri(root))
    return mlflow


def ensure_experiment(mlflow: Any, name: str, root: Path | None = None) -> str:
    """Experiment id, created with repo-local artifacts when tracking to the embedded store."""
    exp = mlflow.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    location = None
    if not os.environ.get("MLFLOW_TRACKING_URI"):
        location = (store_root(root) / "mlartifacts").as_uri()
    return mlflow.create_experiment(name, artifact_location=location)


def git_commit(root: Path | None = None) -> str:
    """Current git commit of the repo (``unknown`` outside git)."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root or repo_root(), capture_output=True, text=True, check=True
        )
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def dvc_out_hash(out: Path, root: Path | None = None) -> str | None:
    """The hash DVC recorded for an output folder in ``dvc.lock`` (None outside a DVC repo)."""
    root = root or repo_root()
    lock = root / "dvc.lock"
    if not lock.is_file():
        return None
    try:
        import yaml  # absent on a bare GPU host, where there is no DVC either
    except ImportError:
        return None
    try:
        rel = str(Path(out).resolve().relative_to(root.resolve()))
        stages = (yaml.safe_load(lock.read_text()) or {}).get("stages", {})
    except (ValueError, OSError, yaml.YAMLError):
        return None
    for stage in stages.values():
        for rec in stage.get("outs", []):
            if rec.get("path") == rel:
                return rec.get("md5") or rec.get("hash")
    return None


def new_pipeline_token(root: Path) -> str:
    """Starts a pipeline execution: a fresh token in ``.tanet/pipeline.json`` (the ``sources`` stage calls it)."""
    token = uuid.uuid4().hex
    atomic_write_json(root / PIPELINE_FILE, {"token": token})
    return token


def pipeline_token(root: Path) -> str | None:
    """The current ``dvc repro``'s token, when this process is one of its stages."""
    if not os.environ.get("DVC_ROOT"):
        return None
    try:
        return str(json.loads((root / PIPELINE_FILE).read_text())["token"])
    except (OSError, ValueError, KeyError):
        return None


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flattens nested params to ``{"train.steps": 600, ...}`` (lists as strings)."""
    out: dict[str, Any] = {}
    for k, v in data.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, f"{key}."))
        else:
            out[key] = v if not isinstance(v, (list, tuple)) else json.dumps(list(v))
    return out


def new_parent_run(experiment: str, root: Path | None = None, tags: Mapping[str, str] | None = None) -> str:
    """Creates a pipeline parent run (for ``TANET_PARENT_RUN_ID``); returns its id."""
    root = root or repo_root()
    mlflow = configure_mlflow(root)
    exp_id = ensure_experiment(mlflow, experiment, root)
    client = mlflow.MlflowClient()
    run = client.create_run(
        exp_id,
        tags={
            "mlflow.runName": "pipeline",
            "tanet.kind": "pipeline",
            "tanet.git_commit": git_commit(root),
            **(tags or {}),
        },
    )
    client.set_terminated(run.info.run_id, "FINISHED")
    return run.info.run_id


def drop_if_childless(run_id: str, root: Path | None = None) -> bool:
    """Deletes a pipeline parent run that no stage run nested under (its ``dvc repro`` had
    nothing to do), so the experiment lists no empty pipelines; True if it did."""
    mlflow = configure_mlflow(root)
    client = mlflow.MlflowClient()
    run = client.get_run(run_id)
    children = client.search_runs(
        [run.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{run_id}'", max_results=1
    )
    if children:
        return False
    client.delete_run(run_id)
    return True


def check_tracking_server(timeout: float = 5.0) -> None:
    """Fails fast with a clear message when ``MLFLOW_TRACKING_URI`` is an unreachable server.

    (MLflow's own client would retry for minutes before giving up.)
    """
    uri = os.environ.get("MLFLOW_TRACKING_URI", "")
    if not uri.startswith(("http://", "https://")):
        return
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout) as resp:
            if resp.status == 200:
                return
            problem = f"HTTP {resp.status}"
    except (urllib.error.URLError, OSError) as err:
        problem = str(getattr(err, "reason", err))
    from tanet.errors import TanetError

    raise TanetError(
        f"MLflow tracking server {uri} is not reachable ({problem}); start it (`tanet serve`) or unset MLFLOW_TRACKING_URI"
    )


def parent_run_id(mlflow: Any, experiment_id: str, root: Path, tags: Mapping[str, str]) -> str:
    """The pipeline's parent run id (see the module docstring for the hand-over rules)."""
    env = os.environ.get(PARENT_ENV)
    if env:
        return env
    state_path = root / STATE_FILE
    ident = pipeline_token(root)
    if ident is not None and state_path.is_file():
        try:
            state = json.loads(state_path.read_text())
            if state.get("pipeline") == ident and state.get("tracking_uri") == tracking_uri(root):
                return str(state["run_id"])
        except (OSError, ValueError, KeyError):
            pass
    key = (tracking_uri(root), experiment_id)
    if ident is None and key in _PROCESS_PARENTS:
        return _PROCESS_PARENTS[key]  # several stages in one process (e.g. `python -m tanet.train all`)
    client = mlflow.MlflowClient()
    run = client.create_run(experiment_id, tags={"mlflow.runName": "pipeline", "tanet.kind": "pipeline", **tags})
    client.set_terminated(run.info.run_id, "FINISHED")
    if ident is not None:
        atomic_write_json(
            state_path, {"run_id": run.info.run_id, "pipeline": ident, "tracking_uri": tracking_uri(root)}
        )
    else:
        _PROCESS_PARENTS[key] = run.info.run_id
    return run.info.run_id


_PROCESS_PARENTS: dict[tuple[str, str], str] = {}


class Tracker:
    """Logs params, metrics and artifacts of one stage run; a no-op when disabled."""

    def __init__(self, mlflow: Any | None = None, run_id: str | None = None) -> None:
        # The lazily imported mlflow module and its client (None when disabled): Any, as the
        # module is passed in; every use sits behind `enabled`, which implies both are set.
        self.mlflow: Any = mlflow
        self.run_id = run_id
        self._client: Any = mlflow.MlflowClient() if mlflow is not None else None

    @property
    def enabled(self) -> bool:
        """Whether anything is recorded."""
        return self._client is not None and self.run_id is not None

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Logs flat params (values truncated to MLflow's 6000 characters)."""
        if self.enabled:
            from mlflow.entities import Param

            items = [Param(k, str(v)[:6000]) for k, v in params.items()]
            for i in range(0, len(items), 100):
                self._client.log_batch(self.run_id, params=items[i : i + 100])

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Logs numeric metrics at a step."""
        if self.enabled:
            import time

            from mlflow.entities import Metric

            now = int(time.time() * 1000)
            items = [Metric(k, float(v), now, step or 0) for k, v in metrics.items()]
            self._client.log_batch(self.run_id, metrics=items)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        """Sets run tags."""
        if self.enabled:
            for k, v in tags.items():
                self._client.set_tag(self.run_id, k, str(v))

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        """Uploads a file or folder as run artifact."""
        if self.enabled:
            if Path(path).is_dir():
                self._client.log_artifacts(self.run_id, str(path), artifact_path)
            else:
                self._client.log_artifact(self.run_id, str(path), artifact_path)

    def log_dataset(
        self, name: str, path: Path, digest: str, context: str, tags: Mapping[str, str] | None = None
    ) -> None:
        """Logs a dataset input of the run (MLflow's ``log_input``): a folder with its hash.

        Args:
            name: dataset name (``patches``).
            path: where the data are (recorded as a ``file://`` source).
            digest: its hash; MLflow keeps 36 characters, so the full hash goes in ``tags`` too.
            context: ``training`` or ``validation`` (the ``mlflow.data.context`` input tag).
            tags: more input tags (``tanet.sha256``, counts).
        """
        if not self.enabled:
            return
        from mlflow.data.dataset_source_registry import resolve_dataset_source
        from mlflow.data.meta_dataset import MetaDataset
        from mlflow.entities import DatasetInput, InputTag

        with warnings.catch_warnings():  # "can be interpreted in multiple ways": both are the local source
            warnings.simplefilter("ignore", UserWarning)
            source = resolve_dataset_source(Path(path).resolve().as_uri())
        # MetaDataset's profile is declared abstract but returns None at run time (metadata only).
        dataset = MetaDataset(source, name=name, digest=digest[:36])  # type: ignore[abstract]
        input_tags = [InputTag("mlflow.data.context", context), *(InputTag(k, str(v)) for k, v in (tags or {}).items())]
        self._client.log_inputs(self.run_id, [DatasetInput(dataset._to_mlflow_entity(), tags=input_tags)])

    def finish(self, status: str = "FINISHED") -> None:
        """Marks the run finished (or FAILED)."""
        if self.enabled:
            self._client.set_terminated(self.run_id, status)


@contextlib.contextmanager
def stage_run(
    stage: str,
    params_dict: Mapping[str, Any] | None,
    *,
    experiment: str = "tanet",
    enabled: bool = True,
    root: Path | None = None,
    tags: Mapping[str, Any] | None = None,
) -> Iterator[Tracker]:
    """Opens a nested MLflow run for a stage under the pipeline's parent run.

    Args:
        stage: stage name (run name and ``tanet.stage`` tag).
        params_dict: the full params (logged flattened), or None.
        experiment: MLflow experiment name.
        enabled: False gives a no-op tracker (no MLflow import at all).
        root: repo root.
        tags: extra tags.

    Yields:
        A :class:`Tracker`; the run ends FINISHED, or FAILED on an exception.
    """
    if not enabled:
        yield Tracker()
        return
    root = root or repo_root()
    mlflow = configure_mlflow(root)
    exp_id = ensure_experiment(mlflow, experiment, root)
    base_tags = {"tanet.git_commit": git_commit(root), **{k: str(v) for k, v in (tags or {}).items()}}
    parent = parent_run_id(mlflow, exp_id, root, base_tags)
    client = mlflow.MlflowClient()
    run = client.create_run(
        exp_id,
        tags={"mlflow.runName": stage, "mlflow.parentRunId": parent, "tanet.stage": stage, **base_tags},
    )
    tracker = Tracker(mlflow, run.info.run_id)
    if params_dict is not None:
        tracker.log_params(flatten(params_dict))
    try:
        yield tracker
    except BaseException:
        tracker.finish("FAILED")
        raise
    tracker.finish("FINISHED")


def child_run(parent: Tracker, name: str, tags: Mapping[str, Any] | None = None) -> Tracker:
    """A run nested under ``parent`` (e.g. one per branch inside the pretrain stage run)."""
    if not parent.enabled:
        return Tracker()
    client = parent.mlflow.MlflowClient()
    prun = client.get_run(parent.run_id)
    run = client.create_run(
        prun.info.experiment_id,
        tags={
            "mlflow.runName": name,
            "mlflow.parentRunId": parent.run_id,
            **{k: str(v) for k, v in (tags or {}).items()},
        },
    )
    return Tracker(parent.mlflow, run.info.run_id)
