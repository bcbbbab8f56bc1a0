"""Shared plumbing of the flows: environment, the temporary Prefect server, task runners, the mapper.

Importing this module starts nothing and imports no Prefect: :mod:`flows.stage` sets the
environment and starts the temporary server first thing, then imports the stage's code.

Start-up cost: with no ``PREFECT_API_URL``, Prefect's ephemeral mode starts a temporary API
server (uvicorn running ``prefect.server.api.server:create_app``) when the flow first calls
the API, after the stage process has imported everything, and the client process also
imports the whole server package to do so (~7 s here). :class:`TemporaryServer` starts that
same server early instead, so it boots while the stage imports torch and tanet. Measured per
stage on 2 cores: see ``benchmarks/bench_pipeline.py`` and the README. With a real server
(``PREFECT_API_URL`` set, e.g. ``tanet serve``) nothing is started.
"""

from __future__ import annotations

import atexit
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tanet.errors import raise_on_termination
from tanet.stages.parallel import R, T
from tanet.track.services import TELEMETRY_OFF, free_port, wait_healthy

ROOT = Path(__file__).resolve().parents[1]
# The pipeline tag (``pipeline:<flow run name>``) a deployment flow hands to its stage flow runs.
PIPELINE_TAG_ENV = "TANET_PIPELINE"


def prefect_env() -> None:
    """Telemetry off and a project-local PREFECT_HOME, before Prefect is imported."""
    for key, value in TELEMETRY_OFF.items():
        os.environ.setdefault(key, value)
    os.environ.setdefault("PREFECT_HOME", str(ROOT / ".prefect"))
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "INFO")
    # tanet's own progress (training steps, quarantined files) in the stage output and the flow run's logs.
    os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "tanet")
    # Artifact downloads (model folders from the registry) without progress bars in stage logs.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    # Results are tanet's own files (DVC outputs); Prefect keeps none of its own.
    os.environ.setdefault("PREFECT_RESULTS_PERSIST_BY_DEFAULT", "false")


def data_stage_env() -> None:
    """Threads for the data stages; call before torch is imported.

    Their torch work is many small per-frame ops, for which OpenMP's busy-waiting threads cost
    4-10x on a loaded 2-core machine (measured: benchmarks/bench_pipeline.py). Training keeps
    the default (active waiting is ~25 % faster for its large convolutions).
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


class TemporaryServer:
    """Prefect's ephemeral API server, started early in a subprocess and stopped at exit."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""

    def start(self) -> None:
        """Launches uvicorn on a free port and exports ``PREFECT_API_URL`` for this process."""
        port = free_port()
        env = dict(os.environ, PREFECT_UI_ENABLED="0", PREFECT__SERVER_EPHEMERAL="1", PREFECT__SERVER_FINAL="1")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "--factory",
                "prefect.server.api.server:create_app",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--log-level",
                "error",
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        self.url = f"http://127.0.0.1:{port}/api"
        os.environ["PREFECT_API_URL"] = self.url
        # No "View at http://127.0.0.1:<port>/..." lines: this server is gone when the stage ends.
        os.environ["PREFECT_UI_URL"] = ""
        atexit.register(self.stop)

    def wait(self, timeout: float = 90.0) -> None:
        """Blocks until the server answers its health check (or fails clearly)."""
        assert self.proc is not None

        def stderr_tail() -> str:
            proc = self.proc
            if proc is None or proc.stderr is None or proc.poll() is None:  # reading a live pipe would block
                return "it is still starting"
            return f"its output: {proc.stderr.read().decode(errors='replace')[-800:]}"

        wait_healthy("temporary Prefect server", f"{self.url}/health", self.proc, timeout, stderr_tail, poll=0.1)

    def stop(self) -> None:
        """Terminates the server (idempotent)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def make_task_runner(spec: str | None = None) -> Any:
    """Task runner from a spec: ``threads[:N]`` (default) or ``dask[:ADDRESS]``.

    The spec comes from ``--task-runner`` or ``TANET_TASK_RUNNER``. ``dask`` starts a local
    ``distributed`` cluster; ``dask:tcp://host:8786`` joins an existing one (needs the
    ``dask`` extra: prefect-dask).
    """
    from prefect.task_runners import ThreadPoolTaskRunner

    spec = spec or os.environ.get("TANET_TASK_RUNNER", "threads")
    kind, _, arg = spec.partition(":")
    if kind == "threads":
        return ThreadPoolTaskRunner(max_workers=int(arg) if arg else min(4, os.cpu_count() or 1))
    if kind == "dask":
        try:
            from prefect_dask import DaskTaskRunner
        except ImportError as err:
            raise SystemExit("task runner 'dask' needs the dask extra: pip install 'tanet[dask]'") from err
        if arg:
            return DaskTaskRunner(address=arg)
        return DaskTaskRunner(cluster_kwargs={"n_workers": 2, "threads_per_worker": 1, "processes": True})
    raise SystemExit(f"unknown task runner {spec!r} (threads[:N] | dask[:ADDRESS])")


def prefect_mapper(task_name: str) -> Callable[..., list[Any]]:
    """A ``tanet.stages.parallel.Mapper`` that runs each item as a Prefect task of the current flow."""

    from prefect import task
    from prefect.cache_policies import NO_CACHE

    def mapper(fn: Callable[[T], R], items: Sequence[T], names: Sequence[str] | None = None) -> list[R | BaseException]:
        run = task(fn, name=task_name, cache_policy=NO_CACHE, persist_result=False)
        names = list(names) if names is not None else [f"{task_name}-{i}" for i in range(len(items))]
        futures = [run.with_options(task_run_name=name).submit(item) for item, name in zip(items, names)]
        results: list[R | BaseException] = []
        for fut in futures:
            try:
                results.append(fut.result())
            except Exception as err:  # noqa: BLE001 - the stage decides what a failure means
                results.append(err)
        return results

    return mapper


def stage_environment(data: bool = False) -> TemporaryServer | None:
    """Prepares a stage process: Prefect's environment, signals, threads and the temporary server.

    Call first thing, before torch and the stage's code are imported.

    Args:
        data: a data stage (passive OpenMP threads, :func:`data_stage_env`).

    Returns:
        The started temporary server (wait for it before the flow runs), or None when
        ``PREFECT_API_URL`` names a server already.
    """
    prefect_env()
    # SIGTERM (dvc's cancel, Prefect's cancellation, `timeout`) and SIGHUP raise like Ctrl-C, so
    # the temporary server is stopped by its atexit hook.
    raise_on_termination()
    if data:
        data_stage_env()
    # TANET_EPHEMERAL=prefect leaves it to Prefect's own (later) ephemeral start: benchmarks/bench_pipeline.py
    if os.environ.get("PREFECT_API_URL") or os.environ.get("TANET_EPHEMERAL", "early") != "early":
        return None
    server = TemporaryServer()
    server.start()
    return server
