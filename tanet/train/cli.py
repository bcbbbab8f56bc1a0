"""``python -m tanet.train {pretrain,train,all}``: the training schedule without Prefect, DVC or MLflow.

Runs on machines with only torch, numpy, pyarrow, opencv and safetensors (the GPU route):
MLflow is imported only when tracking is on. Under ``torchrun`` it trains with DDP.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch.distributed as dist

from tanet.config import load_params
from tanet.errors import TanetError
from tanet.io.clips import DataDirs
from tanet.stages import run_stage
from tanet.train.distributed import dist_info, setup_distributed


def main(argv: list[str] | None = None) -> int:
    """``python -m tanet.train {pretrain,train,all} ...`` (see ``--help``)."""
    ap = argparse.ArgumentParser(prog="python -m tanet.train", description=__doc__.split("\n\n")[0])
    ap.add_argument("stage", choices=["pretrain", "train", "all"], help="which part of the schedule to run")
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    ap.add_argument("--clips", type=Path, default=Path("data/clips"))
    ap.add_argument("--lr-dir", type=Path, default=Path("data/lr"))
    ap.add_argument("--flow", type=Path, default=Path("data/flow"))
    ap.add_argument("--patches", type=Path, default=Path("data/patches"))
    ap.add_argument("--pretrain-out", type=Path, default=Path("data/models/pretrain"))
    ap.add_argument("--train-out", type=Path, default=Path("data/models/tanet"))
    ap.add_argument("--checkpoints", type=Path, default=Path(".tanet/checkpoints"))
    ap.add_argument("--branch", type=int, default=0, help="pretrain only this branch (1..N); 0 = all")
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda")
    ap.add_argument(
        "--tracking",
        choices=["auto", "mlflow", "none"],
        default="none",
        help="MLflow logging (import the run later with `tanet import-run` when none)",
    )
    ap.add_argument("--stop-after", type=int, default=None, help="stop after N steps (testing resumption)")
    ap.add_argument(
        "--time-limit",
        type=float,
        default=None,
        metavar="SECONDS",
        help="checkpoint and stop the job that runs past SECONDS from now (the same command resumes it); "
        "with `all`, the joint stage does not start after a stopped pretraining",
    )
    args = ap.parse_args(argv)
    if args.time_limit is not None and args.time_limit < 0:
        ap.error("--time-limit must be >= 0 seconds")
    deadline = None if args.time_limit is None else time.monotonic() + args.time_limit
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(
        level=logging.INFO if rank == 0 else logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    params = load_params(args.params)
    if args.branch and not 1 <= args.branch <= params.model.num_branches:
        ap.error(f"--branch must be in 1..{params.model.num_branches}")
    device = setup_distributed(args.device)
    dirs = DataDirs(args.clips, args.lr_dir, args.flow, args.patches)
    from tanet.track.tracking import stage_run

    rank, _ = dist_info()
    use_mlflow = rank == 0 and (args.tracking == "mlflow" or (args.tracking == "auto" and _has_mlflow()))
    results: dict[str, Any] = {}
    common = {
        "dirs": dirs,
        "out": None,
        "metrics": None,
        "plots": None,
        "device": device,
        "stop_after": args.stop_after,
        "deadline": deadline,
    }
    try:
        # The stages' own code (tanet.stages.pretrain / train) without their DVC outputs;
        # both stages of `all` nest under one parent run (tanet.track.tracking reuses it per process).
        if args.stage in ("pretrain", "all"):
            with stage_run("pretrain", params.to_dict(), experiment=params.mlflow.experiment, enabled=use_mlflow) as tr:
                results.update(
                    run_stage(
                        "pretrain",
                        params,
                        **{**common, "out": args.pretrain_out},
                        checkpoints=args.checkpoints / "pretrain",
                        tracker=tr,
                        branches=[args.branch] if args.branch else None,
                    )
                )
        if args.stage == "train" or (args.stage == "all" and not stopped(results)):
            with stage_run("train", params.to_dict(), experiment=params.mlflow.experiment, enabled=use_mlflow) as tr:
                results["joint"] = run_stage(
                    "train",
                    params,
                    **{**common, "out": args.train_out},
                    pretrain=args.pretrain_out,
                    checkpoints=args.checkpoints / "train",
                    tracker=tr,
                )
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    if rank == 0:
        print(json.dumps(results, indent=2))
    return 0


def stopped(results: dict[str, Any]) -> bool:
    """Whether any job in ``results`` stopped before its last step (``stopped_at``)."""
    return any(isinstance(r, dict) and "stopped_at" in r for r in results.values())


def _has_mlflow() -> bool:
    import importlib.util

    return importlib.util.find_spec("mlflow") is not None


def run() -> int:
    """``python -m tanet.train``: user errors (bad params, missing data) as one line, exit 2."""
    try:
        return main()
    except TanetError as err:
        print(f"tanet.train: error: {err}", file=sys.stderr)
        return 2
