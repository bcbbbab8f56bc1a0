"""``python -m flows.stage STAGE --params params.yaml --PATH ...``: one ``dvc.yaml`` stage as a Prefect flow.

Every stage's code is ``run_<stage>`` in ``tanet/stages/<stage>.py``; this entry only turns
the command line into its arguments, runs it as a flow named as the stage (fan-out items as
tasks of that flow, tracked stages inside one MLflow stage run), and turns a user error
(:class:`tanet.errors.TanetError`) into one line on stderr and a failed flow run with that
message; ``TANET_DEBUG=1`` shows its traceback instead. Order of work: environment, then the temporary Prefect server (it boots while
torch and the stage's code are imported), then the flow.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flows.common import PIPELINE_TAG_ENV, ROOT, make_task_runner, prefect_mapper, stage_environment


@dataclass(frozen=True)
class Stage:
    """How a stage is called: its path flags (flag -> ``run_<stage>`` argument), fan-out and tracking."""

    paths: dict[str, str]
    help: str
    flow_name: str = ""  # the Prefect flow's name when it is not the stage's
    data: bool = False  # many small per-frame torch ops: passive OpenMP threads (flows.common.data_stage_env)
    fan_out: str | None = None  # Prefect task name of each fanned-out item
    tracked: bool = False  # runs inside an MLflow stage run passed as ``tracker``
    retries: int = 0  # the whole stage as one retried Prefect task (talks to a tracking server)
    optional: dict[str, str] = field(default_factory=dict)  # flag -> default path


DATA = ("--clips", "--lr", "--flow", "--patches")
STAGES: dict[str, Stage] = {
    "ingest": Stage({"--out": "out_dir"}, "sources -> normalised clips + manifest", data=True, fan_out="ingest-clip"),
    "degrade": Stage(
        {"--clips": "clips_dir", "--out": "out_dir"}, "LR frames per (scale, kind)", data=True, fan_out="degrade-clip"
    ),
    "flow": Stage(
        {"--clips": "clips_dir", "--lr": "lr_dir", "--out": "out_dir"},
        "optical flow to each neighbour + rectified block shifts",
        flow_name="optical-flow",
        data=True,
        fan_out="flow-clip",
    ),
    "patches": Stage(
        {"--clips": "clips_dir", "--lr": "lr_dir", "--flow": "flow_dir", "--out": "out_dir"},
        "training samples into checksummed Parquet shards",
        data=True,
        fan_out="patches-clip",
    ),
    "pretrain": Stage(
        {**{f: f for f in DATA}, "--out": "out", "--metrics": "metrics", "--plots": "plots"},
        "each SR branch alone with loss (1)",
        fan_out="pretrain-branch",
        tracked=True,
        optional={"--checkpoints": ".tanet/checkpoints/pretrain"},
    ),
    "train": Stage(
        {**{f: f for f in DATA}, "--pretrain": "pretrain", "--out": "out", "--metrics": "metrics", "--plots": "plots"},
        "the temporal adaptive network from the pretrained branches, loss (2)",
        tracked=True,
        optional={"--checkpoints": ".tanet/checkpoints/train"},
    ),
    "evaluate": Stage(
        {
            "--model": "model_dir",
            "--pretrain": "pretrain_dir",
            "--clips": "clips_dir",
            "--lr": "lr_dir",
            "--metrics": "metrics_path",
            "--frames": "frames_csv",
            "--plots": "plots_dir",
            "--summary": "summary_path",
            "--frame-plots": "frame_plots",
        },
        "held-out clips and Vid4: bicubic, lanczos, tanet, every branch",
        tracked=True,
    ),
    "register": Stage(
        {"--model": "model", "--eval": "eval_json", "--clips": "clips", "--lr": "lr", "--out": "out"},
        "MLflow pyfunc, registry version @candidate, the champion gate",
        tracked=True,
        retries=2,
    ),
    "sample": Stage({"--registration": "registration", "--out": "out"}, "upscale a clip with the registered version"),
}


def stage_module(name: str) -> Any:
    """``tanet.stages.<name>``, the stage's code."""
    return importlib.import_module(f"tanet.stages.{name}")


def stage_function(name: str) -> Callable[..., Any]:
    """``run_<name>`` of ``tanet.stages.<name>``."""
    return getattr(stage_module(name), f"run_{name}")


def parser() -> argparse.ArgumentParser:
    """One sub-command per stage, each with ``--params``, ``--task-runner`` and its path flags."""
    ap = argparse.ArgumentParser(prog="python -m flows.stage", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="stage", required=True)
    for name, spec in STAGES.items():
        sp = sub.add_parser(name, help=spec.help)
        sp.add_argument("--params", type=Path, default=Path("params.yaml"), help="pipeline params file")
        sp.add_argument(
            "--task-runner", default=None, help="threads[:N] | dask[:ADDRESS] (default: $TANET_TASK_RUNNER or threads)"
        )
        for flag in spec.paths:
            sp.add_argument(flag, type=Path, required=True)
        for flag, default in spec.optional.items():
            sp.add_argument(flag, type=Path, default=Path(default))
    return ap


def stage_kwargs(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """``run_<name>``'s keyword arguments from the parsed command line (paths, ``dirs``, ``root``)."""
    spec = STAGES[name]
    flags = {**spec.paths, **{f: f for f in spec.optional}}
    values = {f: getattr(args, f.lstrip("-").replace("-", "_")) for f in flags}
    kwargs = {arg: values[f] for f, arg in flags.items() if not arg.startswith("--")}
    kwargs.update({f.lstrip("-"): values[f] for f in spec.optional})
    accepted = inspect.signature(stage_function(name)).parameters
    if "dirs" in accepted:
        from tanet.io.clips import DataDirs

        kwargs["dirs"] = DataDirs(*(values[f] for f in DATA))
    if "root" in accepted:
        kwargs["root"] = ROOT
    return kwargs


def stage_tags(root: Path) -> list[str]:
    """Tags of a stage's flow run: ``tanet-stage`` and the pipeline it belongs to.

    ``pipeline:<flow run name>`` when a deployment flow started the ``dvc repro``
    (``TANET_PIPELINE``, set by :mod:`flows.train_tanet`, which tags itself the same way);
    under a plain ``dvc repro``, ``pipeline:repro-<token>`` from the pipeline token that the
    ``sources`` stage writes; none when the stage runs on its own.
    """
    from tanet.track.tracking import pipeline_token

    tags = ["tanet-stage"]
    label = os.environ.get(PIPELINE_TAG_ENV)
    if label:
        tags.append(label)
    else:
        token = pipeline_token(root)
        if token:
            tags.append(f"pipeline:repro-{token[:12]}")
    return tags


def run_stage_flow(name: str, params_path: Path, kwargs: dict[str, Any], task_runner: str | None) -> Any:
    """Runs stage ``name`` as a Prefect flow named as the stage."""
    from prefect import flow, tags, task
    from prefect.cache_policies import NO_CACHE
    from prefect.states import Failed

    from tanet.config import load_params
    from tanet.errors import TanetError
    from tanet.stages import stage_params
    from tanet.track.tracking import stage_run

    spec, module = STAGES[name], stage_module(name)
    fn = getattr(module, f"run_{name}")

    def call() -> Any:
        params = load_params(params_path)
        extra: dict[str, Any] = {"mapper": prefect_mapper(spec.fan_out)} if spec.fan_out else {}
        bound = stage_params(params, module.PARAMS)  # the stage's own section and named keys
        if not spec.tracked:
            return fn(**bound, **kwargs, **extra)
        with stage_run(name, params.to_dict(), experiment=params.mlflow.experiment) as tracker:
            return fn(**bound, **kwargs, **extra, tracker=tracker)

    user_errors: list[TanetError] = []

    def body() -> Any:
        try:
            return stage_body()
        except TanetError as err:
            if os.environ.get("TANET_DEBUG"):
                raise  # the traceback, in the flow run's log and on stderr
            # A user error (bad input, bad params) fails the flow run with one line, no traceback.
            user_errors.append(err)
            return Failed(message=str(err))

    def stage_body() -> Any:
        if spec.retries:
            delays = [2, 5, 15][: spec.retries]
            retried = task(call, name=f"{name}-stage", retries=spec.retries, retry_delay_seconds=delays)
            result = retried.with_options(cache_policy=NO_CACHE, persist_result=False)()
        else:
            result = call()
        report = getattr(module, "markdown_report", None) if hasattr(module, "REPORT_KEY") else None
        if report is not None:  # a table for the flow run's artifacts tab (the evaluate stage's)
            from prefect.artifacts import create_markdown_artifact

            create_markdown_artifact(report(result), key=module.REPORT_KEY, description=f"tanet {name}")
        return result

    runner = task_runner
    if runner is None and name == "pretrain":
        runner = f"threads:{load_params(params_path).pretrain.parallel}"
    stage_flow = flow(body, name=spec.flow_name or name, description=spec.help)
    with tags(*stage_tags(ROOT)):
        state = stage_flow.with_options(task_runner=make_task_runner(runner))(return_state=True)
    if user_errors:
        raise user_errors[0]
    return state.result()


def main(argv: list[str] | None = None) -> int:
    """Parses the command line, starts the temporary Prefect server if none is set, runs the stage."""
    from tanet.errors import TanetError

    args = parser().parse_args(argv)
    server = stage_environment(data=STAGES[args.stage].data)
    # Prefect attaches its console and API handlers to the "tanet" logger
    # (PREFECT_LOGGING_EXTRA_LOGGERS); the level is ours to set.
    logging.getLogger("tanet").setLevel(logging.INFO)
    kwargs = stage_kwargs(args.stage, args)
    try:
        if server is not None:
            server.wait(float(os.environ["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"]))
        run_stage_flow(args.stage, args.params, kwargs, args.task_runner)
    except TanetError as err:
        print(f"{args.stage}: error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
