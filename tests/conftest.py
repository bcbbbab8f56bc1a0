"""Shared fixtures: quiet, offline tool settings and small trained-model folders."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from model_factory import make_model_dir

ROOT = Path(__file__).resolve().parents[1]

# Telemetry off everywhere (MLflow only honours the string "true").
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
# Many small torch ops on a shared 2-core machine: busy-waiting OpenMP threads slow them 4-10x.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """One torch thread for a module: its per-frame ops on small frames only pay OpenMP overhead,
    and subprocesses it starts share the 2 cores. The session's setting is restored after."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    """A joint TANet-S folder (no alignment) with random weights."""
    return make_model_dir(tmp_path / "model")


@pytest.fixture
def mlflow_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A private SQLite MLflow store (no server), artifacts under tmp_path."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)  # MLflow's default artifact root is ./mlruns
    return uri


@pytest.fixture(scope="session")
def tiny_pipeline(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """One run of the tiny preset, shared by the session's tests, the way a team runs it with
    plain Prefect (no ``tanet serve``): a Prefect server and an MLflow server started by hand,
    ``prefect work-pool create tanet --type process``, ``prefect deploy --all`` from the repo
    root, ``prefect worker start --pool tanet``, then
    ``prefect deployment run train-tanet/train-tanet --param preset=tiny``, whose flow runs
    ``dvc repro`` with both servers passed on.

    Two more runs are started while it runs, to show one workspace runs one pipeline at a
    time: a second ``train-tanet`` (queued by the deployment's concurrency limit until the
    first ends; same params, so its ``dvc repro`` has nothing to do) and an ``ingest-videos``
    run adding a source (another deployment: refused by the workspace lock before it touches
    params.yaml). The servers stop at the end of the session.
    """
    from pipeline_repo import HandStarted, make_repo

    base = tmp_path_factory.mktemp("pipeline")
    repo = make_repo(base / "repo", "tiny")
    services = HandStarted(repo, base / "services")
    t0 = time.perf_counter()
    try:
        services.start()
        serve_seconds = time.perf_counter() - t0
        t0 = time.perf_counter()
        first = services.submit("train-tanet/train-tanet", "preset=tiny")
        services.flow_runs([first], until="started", timeout=600)
        second = services.submit("train-tanet/train-tanet", "preset=tiny")
        refused = services.submit("ingest-videos/ingest-videos", 'sources=["/nowhere/extra-clip.mp4"]')
        params_while_running = (repo / "params.yaml").read_text()
        runs = services.flow_runs([first, second, refused])
        run_seconds = time.perf_counter() - t0
        assert runs[0]["state"] == "Completed", (runs, (services.logs / "prefect-worker.log").read_text()[-6000:])
        yield {
            "repo": repo,
            "env": services.env,
            "log": (services.logs / "prefect-worker.log").read_text(),
            "runs": {"first": runs[0], "second": runs[1], "refused": runs[2]},
            "params_while_running": params_while_running,
            "params_after": (repo / "params.yaml").read_text(),
            "serve_seconds": serve_seconds,
            "run_seconds": run_seconds,
        }
    finally:
        services.stop()


@pytest.fixture
def pipeline_copy(tiny_pipeline: dict[str, Any], tmp_path: Path) -> Path:
    """A copy of the finished tiny pipeline repo (git, DVC cache, data, ``mlflow.db``,
    ``mlartifacts/``) for a test that edits params or re-runs stages, so the suite's repo stays
    as the deployment left it whatever order the tests run in. New MLflow runs of the copy
    keep their artifacts beside the original's (the experiment's artifact location is a path)."""
    dest = tmp_path / "repo"
    shutil.copytree(Path(tiny_pipeline["repo"]), dest, symlinks=True, ignore=shutil.ignore_patterns(".prefect"))
    return dest
