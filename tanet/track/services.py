"""``tanet serve`` / ``tanet stop``: local Prefect + MLflow services for the deployments.

``serve`` brings up, on 127.0.0.1:

1. a Prefect server (SQLite under the project's ``PREFECT_HOME``),
2. an MLflow tracking server over the repo's own store (``mlflow.db`` + ``mlartifacts/``, the
   one a plain ``dvc repro`` writes; one worker, job execution off, artifacts as plain
   files under ``mlartifacts/`` that every local client reads and writes),
3. the ``tanet`` work pool (type ``process``) and the deployments of ``prefect.yaml``
   (``prefect deploy --all`` from the repo root: the same steps prefect.yaml's header gives
   for plain Prefect),
4. a worker for the pool, whose flow runs see ``PREFECT_API_URL`` and
   ``MLFLOW_TRACKING_URI``,

each in its own process group with its log under ``.tanet/services/``, and health-checks
them. ``stop`` ends the worker first (a worker whose server is gone can hang), then the
servers, whole process groups, and checks that nothing is left. Telemetry is off
everywhere. A taken port or a server that does not come up is a clear error.

This module drives the ``prefect`` and ``mlflow`` command-line tools as subprocesses; the
library still never imports Prefect.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tanet.errors import TanetError
from tanet.io.atomic import atomic_write_json, pid_alive

STATE = "services.json"
POOL = "tanet"


@dataclass
class Services:
    """What ``serve`` started (persisted as ``services.json``)."""

    prefect_api_url: str
    mlflow_tracking_uri: str
    pool: str
    pids: dict[str, int] = field(default_factory=dict)  # name -> pid (each leads its process group)
    logs: dict[str, str] = field(default_factory=dict)

    def env(self) -> dict[str, str]:
        """The variables clients need."""
        return {"PREFECT_API_URL": self.prefect_api_url, "MLFLOW_TRACKING_URI": self.mlflow_tracking_uri}


# Prefect's and MLflow's usage reporting, off wherever tanet starts them (services, stage flows).
TELEMETRY_OFF = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "true",
    "MLFLOW_DISABLE_TELEMETRY": "true",
}


def base_env(root: Path) -> dict[str, str]:
    """Environment for the services: telemetry off, project-local Prefect home, this venv first on PATH."""
    env = dict(os.environ)
    env.update(
        TELEMETRY_OFF,
        MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false",
        PREFECT_HOME=env.get("PREFECT_HOME", str(root / ".prefect")),
        PREFECT_WORKER_QUERY_SECONDS=env.get("PREFECT_WORKER_QUERY_SECONDS", "2"),
        PREFECT_WORKER_PREFETCH_SECONDS=env.get("PREFECT_WORKER_PREFETCH_SECONDS", "5"),
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
    )
    env.pop("PREFECT_API_URL", None)
    return env


def free_port() -> int:
    """An unused TCP port on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def check_port(host: str, port: int, flag: str) -> None:
    """Raises a clear error when ``port`` is taken."""
    with socket.socket() as sock:
        try:
            sock.bind((host, port))
        except OSError:
            raise TanetError(
                f"port {port} on {host} is in use; stop what holds it or pass {flag} PORT (0 = any free port)"
            ) from None


def healthy(url: str, timeout: float = 2.0) -> bool:
    """True when ``url`` answers 200."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def wait_healthy(
    name: str, url: str, proc: subprocess.Popen[bytes], timeout: float, detail: Callable[[], str], poll: float = 0.2
) -> None:
    """Polls a health URL until it answers, failing clearly if the process dies or time runs out.

    Args:
        name: what is starting, for the error.
        url: its health URL (answers 200 when ready).
        proc: the starting process.
        timeout: seconds to wait.
        detail: what to add to an error (e.g. where its log is and its last lines).
        poll: seconds between checks.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise TanetError(f"{name} exited with status {proc.returncode} while starting; {detail()}")
        if healthy(url):
            return
        time.sleep(poll)
    raise TanetError(f"{name} did not answer {url} within {timeout:.0f} s; {detail()}")


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _spawn(cmd: list[str], log: Path, env: dict[str, str], cwd: Path) -> subprocess.Popen[bytes]:
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd, start_new_session=True)


def _bin(name: str) -> str:
    exe = Path(sys.executable).parent / name
    return str(exe) if exe.exists() else name


def read_state(state_dir: Path) -> Services | None:
    """The running services recorded in ``state_dir`` (None if none)."""
    path = state_dir / STATE
    if not path.is_file():
        return None
    return Services(**json.loads(path.read_text()))


def mlflow_server_command(host: str, port: int, root: Path) -> list[str]:
    """``mlflow server`` over the repo's one store: its ``mlflow.db`` and ``mlartifacts/``."""
    return [
        _bin("mlflow"),
        "server",
        "--host",
        host,
        "--port",
        str(port),
        "--workers",
        "1",
        "--backend-store-uri",
        # The repo's one store: the same mlflow.db and mlartifacts/ that a plain
        # `dvc repro` (no MLFLOW_TRACKING_URI) writes, so both see one @champion.
        f"sqlite:///{(root / 'mlflow.db').resolve()}",
        # Artifacts as plain files under the repo (not proxied mlflow-artifacts:/ URIs,
        # which a client of the SQLite store could not read): the server listens on
        # 127.0.0.1 only, so every client shares this file system.
        "--default-artifact-root",
        (root / "mlartifacts").resolve().as_uri(),
        "--no-serve-artifacts",
    ]


def serve(
    root: Path,
    *,
    prefect_port: int = 4200,
    mlflow_port: int = 5000,
    host: str = "127.0.0.1",
    state_dir: Path | None = None,
    deploy: bool = True,
    worker: bool = True,
    timeout: float = 120.0,
) -> Services:
    """Starts the services (see the module docstring); returns what runs where.

    Args:
        root: the project (holds ``prefect.yaml``).
        prefect_port: Prefect server port (0: any free port).
        mlflow_port: MLflow server port (0: any free port).
        host: bind address.
        state_dir: where state and logs live (default ``.tanet/services``); the MLflow store
            is the repo's own ``mlflow.db`` and ``mlartifacts/``, shared with a plain ``dvc repro``.
        deploy: create the work pool and apply ``prefect.yaml``'s deployments.
        worker: start a worker for the pool.
        timeout: seconds to wait for each health check.
    """
    # Four processes started in order with one cleanup path, so a failure at any step stops
    # what already started.
    state_dir = state_dir or root / ".tanet" / "services"
    running = read_state(state_dir)
    if running is not None and any(pid_alive(pid, group=True) for pid in running.pids.values()):
        raise TanetError(
            f"services already running ({running.prefect_api_url}, {running.mlflow_tracking_uri}); run `tanet stop` first"
        )
    prefect_port = prefect_port or free_port()
    mlflow_port = mlflow_port or free_port()
    check_port(host, prefect_port, "--prefect-port")
    check_port(host, mlflow_port, "--mlflow-port")
    env = base_env(root)
    logs = state_dir / "logs"
    svc = Services(f"http://{host}:{prefect_port}/api", f"http://{host}:{mlflow_port}", POOL)
    procs: dict[str, subprocess.Popen[bytes]] = {}
    try:
        procs["prefect-server"] = _spawn(
            [_bin("prefect"), "server", "start", "--host", host, "--port", str(prefect_port)],
            logs / "prefect-server.log",
            env,
            root,
        )
        procs["mlflow-server"] = _spawn(
            mlflow_server_command(host, mlflow_port, root),
            logs / "mlflow-server.log",
            env,
            root,
        )
        svc.pids = {k: p.pid for k, p in procs.items()}
        svc.logs = {k: str(logs / f"{k}.log") for k in procs}
        atomic_write_json(state_dir / STATE, asdict(svc))
        wait_healthy(
            "Prefect server",
            f"{svc.prefect_api_url}/health",
            procs["prefect-server"],
            timeout,
            lambda: f"see {logs / 'prefect-server.log'}:\n{_tail(logs / 'prefect-server.log')}",
        )
        wait_healthy(
            "MLflow server",
            f"{svc.mlflow_tracking_uri}/health",
            procs["mlflow-server"],
            timeout,
            lambda: f"see {logs / 'mlflow-server.log'}:\n{_tail(logs / 'mlflow-server.log')}",
        )
        client_env = {**env, **svc.env()}
        if deploy:
            _run([_bin("prefect"), "work-pool", "create", POOL, "--type", "process", "--overwrite"], client_env, root)
            # From the repo root, as by hand: the deployments record this folder as where runs happen.
            _run([_bin("prefect"), "--no-prompt", "deploy", "--all"], client_env, root)
        if worker:
            procs["prefect-worker"] = _spawn(
                [_bin("prefect"), "worker", "start", "--pool", POOL, "--type", "process"],
                logs / "prefect-worker.log",
                client_env,
                root,
            )
            svc.pids["prefect-worker"] = procs["prefect-worker"].pid
            svc.logs["prefect-worker"] = str(logs / "prefect-worker.log")
            time.sleep(1.0)
            if procs["prefect-worker"].poll() is not None:
                raise TanetError(
                    f"Prefect worker exited at start; see {logs / 'prefect-worker.log'}:\n{_tail(logs / 'prefect-worker.log')}"
                )
        atomic_write_json(state_dir / STATE, asdict(svc))
    except BaseException:
        _stop_groups(svc.pids)
        (state_dir / STATE).unlink(missing_ok=True)
        raise
    return svc


def _run(cmd: list[str], env: dict[str, str], cwd: Path) -> None:
    res = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True)
    if res.returncode != 0:
        raise TanetError(f"{' '.join(cmd[:3])} failed ({res.returncode}):\n{(res.stdout + res.stderr)[-2000:]}")


def _stop_groups(pids: dict[str, int], timeout: float = 15.0) -> list[str]:
    """SIGTERM each process group (worker first), then SIGKILL what remains."""
    order = sorted(pids, key=lambda k: (k != "prefect-worker", k))
    stopped = []
    for name in order:
        pid = pids[name]
        if not pid_alive(pid, group=True):
            continue
        try:
            os.killpg(pid, signal.SIGTERM)
        except ProcessLookupError:
            continue
        deadline = time.monotonic() + timeout
        while pid_alive(pid, group=True) and time.monotonic() < deadline:
            _reap(pid)
            time.sleep(0.1)
        if pid_alive(pid, group=True):
            os.killpg(pid, signal.SIGKILL)
            time.sleep(0.2)
        _reap(pid)
        stopped.append(name)
    return stopped


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def stop(root: Path, state_dir: Path | None = None) -> list[str]:
    """Stops what ``serve`` started; returns the names stopped. Raises if a process survives."""
    state_dir = state_dir or root / ".tanet" / "services"
    svc = read_state(state_dir)
    if svc is None:
        return []
    stopped = _stop_groups(svc.pids)
    left = [name for name, pid in svc.pids.items() if pid_alive(pid, group=True)]
    if left:
        raise TanetError(f"could not stop {', '.join(left)}")
    (state_dir / STATE).unlink(missing_ok=True)
    return stopped


def status(root: Path, state_dir: Path | None = None) -> dict[str, object]:
    """Health of the recorded services."""
    state_dir = state_dir or root / ".tanet" / "services"
    svc = read_state(state_dir)
    if svc is None:
        return {"running": False}
    return {
        "running": True,
        **svc.env(),
        "prefect_healthy": healthy(f"{svc.prefect_api_url}/health"),
        "mlflow_healthy": healthy(f"{svc.mlflow_tracking_uri}/health"),
        "processes": {k: pid_alive(v, group=True) for k, v in svc.pids.items()},
    }
