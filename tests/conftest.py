"""Shared fixtures: quiet, offline tool settings and small trained-model folders."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"

# Telemetry off everywhere (MLflow only honours the string "true").
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


def make_model_dir(path: Path, alignment: str = "none", seed: int = 0, scale: int = 4) -> Path:
    """Writes a small joint model folder (random weights) as training would."""
    import torch

    from tanet.config import OptimParams
    from tanet.modelio import write_model_dir
    from tanet.models import VSRNet, tanet_s
    from tanet.train import Job

    torch.manual_seed(seed)
    cfg = tanet_s(scale=scale, alignment=alignment, align_block=16)
    net = VSRNet(cfg)
    job = Job("joint", 0, cfg, OptimParams(steps=1))
    write_model_dir(path, net, job, {"scale": scale, "degradation": "BI", "val_psnr": 20.0, "val_psnr_bicubic": 19.0,
                                     "licences": ["test"], "patches_sha256": "0" * 64}, [])
    return path


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
def tiny_pipeline(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """One `dvc repro` of the tiny preset in a fresh git repo, shared by the session's tests.

    Plain `dvc repro` (Prefect in its temporary-server mode, the embedded SQLite MLflow
    store): the README's main path.
    """
    from pipeline_repo import make_repo, run, tool_env

    repo = make_repo(tmp_path_factory.mktemp("pipeline") / "repo", "tiny")
    res = run(["dvc", "repro"], repo, tool_env())
    return {"repo": repo, "log": res.stdout + res.stderr}
