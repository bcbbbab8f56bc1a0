"""Shared fixtures: quiet, offline tool settings and small trained-model folders."""

from __future__ import annotations

import os
import sys
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
    """One run of the tiny preset, shared by the session's tests, the way a team runs it:

    `tanet serve` (real Prefect and MLflow servers on free ports, the `tanet` process work
    pool, the deployments of prefect.yaml, a worker), then
    `prefect deployment run train-tanet/train-tanet --param preset=tiny --watch`, whose flow
    runs `dvc repro` with both servers passed on. `tanet stop` at the end of the session.
    """
    from pipeline_repo import make_repo, run, tool_env

    repo = make_repo(tmp_path_factory.mktemp("pipeline") / "repo", "tiny")
    t0 = time.perf_counter()
    served = run(
        [sys.executable, "-m", "tanet.cli", "serve", "--prefect-port", "0", "--mlflow-port", "0"], repo, tool_env()
    )
    serve_seconds = time.perf_counter() - t0
    env = dict(
        line.removeprefix("export ").split("=", 1) for line in served.stdout.splitlines() if line.startswith("export ")
    )
    try:
        t0 = time.perf_counter()
        res = run(
            [
                "prefect",
                "deployment",
                "run",
                "train-tanet/train-tanet",
                "--param",
                "preset=tiny",
                "--watch",
                "--watch-timeout",
                "2400",
            ],
            repo,
            tool_env(env),
            timeout=2700,
        )
        yield {
            "repo": repo,
            "env": env,
            "log": res.stdout + res.stderr,
            "serve_seconds": serve_seconds,
            "run_seconds": time.perf_counter() - t0,
        }
    finally:
        run([sys.executable, "-m", "tanet.cli", "stop"], repo, tool_env())
