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


class HandStarted:
    """Prefect and MLflow the way a team runs them without ``tanet serve``: each server started
    by hand on a free port of 127.0.0.1, then the work pool, ``prefect deploy --all`` from the
    repo root and a worker, all by their own command-line tools. ``stop`` ends the worker first,
    then the servers, whole process groups."""

    def __init__(self, repo: Path, home: Path) -> None:
        import socket

        def port() -> int:
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", 0))
                return int(sock.getsockname()[1])

        self.repo, self.logs = repo, home / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.env = {
            "PREFECT_API_URL": f"http://127.0.0.1:{port()}/api",
            "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{port()}",
        }
        self.client_env = tool_env(
            {
                **self.env,
                "PREFECT_HOME": str(home / "prefect"),
                "PREFECT_WORKER_QUERY_SECONDS": "2",
                "PREFECT_WORKER_PREFETCH_SECONDS": "5",
                "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
            }
        )
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def _spawn(self, name: str, cmd: list[str]) -> None:
        with open(self.logs / f"{name}.log", "wb") as log:
            self.procs[name] = subprocess.Popen(
                cmd, cwd=self.repo, env=self.client_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )

    def _wait(self, name: str, url: str, timeout: float = 180) -> None:
        import time
        import urllib.request

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.procs[name].poll() is not None:
                break
            try:
                with urllib.request.urlopen(url, timeout=2) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                time.sleep(0.5)
        raise AssertionError(f"{name} did not come up: {(self.logs / f'{name}.log').read_text()[-3000:]}")

    def start(self) -> None:
        """Servers, pool, deployments, worker: the commands of prefect.yaml's header."""
        prefect_port = self.env["PREFECT_API_URL"].rsplit(":", 1)[1].split("/")[0]
        mlflow_port = self.env["MLFLOW_TRACKING_URI"].rsplit(":", 1)[1]
        self._spawn("prefect-server", ["prefect", "server", "start", "--host", "127.0.0.1", "--port", prefect_port])
        # The team's MLflow server over the repo's store (the one a plain `dvc repro` writes).
        self._spawn(
            "mlflow-server",
            [
                "mlflow",
                "server",
                "--host",
                "127.0.0.1",
                "--port",
                mlflow_port,
                "--workers",
                "1",
                "--backend-store-uri",
                f"sqlite:///{self.repo / 'mlflow.db'}",
                "--default-artifact-root",
                (self.repo / "mlartifacts").as_uri(),
                "--no-serve-artifacts",
            ],
        )
        self._wait("prefect-server", f"{self.env['PREFECT_API_URL']}/health")
        self._wait("mlflow-server", f"{self.env['MLFLOW_TRACKING_URI']}/health")
        run(["prefect", "work-pool", "create", "tanet", "--type", "process"], self.repo, self.client_env)
        run(["prefect", "--no-prompt", "deploy", "--all"], self.repo, self.client_env)
        self._spawn("prefect-worker", ["prefect", "worker", "start", "--pool", "tanet"])

    def stop(self) -> None:
        """Worker first (one whose server is gone can hang), then the servers."""
        import signal

        for name in sorted(self.procs, key=lambda k: k != "prefect-worker"):
            proc = self.procs[name]
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()

    def submit(self, deployment: str, *params: str) -> str:
        """``prefect deployment run DEPLOYMENT --param ...`` (no watch); returns the flow run id."""
        import re

        args = [a for p in params for a in ("--param", p)]
        out = run(["prefect", "deployment", "run", deployment, *args], self.repo, self.client_env).stdout
        found = re.search(r"UUID: ([0-9a-f-]{36})", out)
        assert found, out
        return found.group(1)

    def flow_runs(self, ids: list[str], until: str = "final", timeout: float = 2700) -> list[dict[str, object]]:
        """The flow runs ``ids`` (state, message, times, tags) once all are ``until``: final or started."""
        code = (
            "import json, sys, time\n"
            "from prefect.client.orchestration import get_client\n"
            "ids, until, deadline = sys.argv[1].split(','), sys.argv[2], time.time() + float(sys.argv[3])\n"
            "with get_client(sync_client=True) as c:\n"
            "    while True:\n"
            "        runs = [c.read_flow_run(i) for i in ids]\n"
            "        done = [r.state.is_final() or (until == 'started' and r.state.is_running()) for r in runs]\n"
            "        if all(done) or time.time() > deadline:\n"
            "            break\n"
            "        time.sleep(2)\n"
            "    flows = {r.flow_id: c.read_flow(r.flow_id).name for r in runs}\n"
            "print(json.dumps([{'id': str(r.id), 'name': r.name, 'flow': flows[r.flow_id], 'state': r.state.name,\n"
            "    'message': r.state.message, 'tags': r.tags, 'start': r.start_time.timestamp() if r.start_time else None,\n"
            "    'end': r.end_time.timestamp() if r.end_time else None} for r in runs]))\n"
        )
        res = run(
            [sys.executable, "-c", code, ",".join(ids), until, str(timeout)],
            self.repo,
            self.client_env,
            timeout=timeout + 120,
        )
        import json

        return list(json.loads(res.stdout.strip().splitlines()[-1]))
