"""A throw-away copy of the project as a git + DVC repo, for end-to-end pipeline tests."""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def tool_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for stage commands: this venv first on PATH, telemetry off, no inherited servers."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI", "TANET_PARENT_RUN_ID")
    }
    env.update(
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        DVC_NO_ANALYTICS="1",
        DO_NOT_TRACK="true",
        MLFLOW_DISABLE_TELEMETRY="true",
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra or {})
    return env


def project_files() -> list[str]:
    """Tracked and untracked-but-not-ignored files of the project (what a clone would have)."""
    out = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True, check=True
    )
    skip = (
        "checkpoints/",
        "metrics/",
        "plots/",
        "dvc.lock",
        "data/sample",
        "data/clips",
        "data/lr",
        "data/flow",
        "data/patches",
        "data/models",
    )
    return [f for f in out.stdout.splitlines() if f and not f.startswith(skip) and (ROOT / f).is_file()]


def make_repo(dest: Path, preset: str = "tiny", overrides: dict[str, object] | None = None) -> Path:
    """Copies the project into ``dest``, writes a preset's params.yaml and commits it all."""
    dest.mkdir(parents=True, exist_ok=True)
    archive = dest.parent / f".{dest.name}.tar"
    with tarfile.open(archive, "w") as tar:
        for f in project_files():
            tar.add(ROOT / f, arcname=f)
    with tarfile.open(archive) as tar:
        tar.extractall(dest, filter="data")
    archive.unlink()
    from tanet.config import dump_params, preset_params

    (dest / "params.yaml").write_text(dump_params(preset_params(preset, overrides)))
    run(["git", "init", "-q"], dest)
    run(["git", "add", "-A"], dest)
    run(["git", "-c", "user.name=test", "-c", "user.email=test@example.com", "commit", "-qm", "test repo"], dest)
    return dest


def run(
    cmd: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: float = 1800
) -> subprocess.CompletedProcess[str]:
    """Runs a command, raising with its output on failure."""
    res = subprocess.run(cmd, cwd=cwd, env=env or tool_env(), capture_output=True, text=True, timeout=timeout)
    if res.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({res.returncode}):\n{res.stdout[-4000:]}\n{res.stderr[-4000:]}")
    return res
