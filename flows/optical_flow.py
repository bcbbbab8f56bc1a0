"""Flow ``optical-flow``: LR optical flow to each neighbour, plus rectified block shifts."""

from __future__ import annotations

from pathlib import Path

from flows.common import prefect_mapper, run_flow, stage_args, data_stage_env

data_stage_env()

from prefect import flow

from tanet.config import load_params
from tanet.data.flows import run_flow as run_flow_stage


@flow(name="optical-flow")
def optical_flow_flow(params_path: str, clips: str, lr: str, out: str) -> dict[str, int]:
    """One task per (LR set, clip)."""
    return run_flow_stage(
        load_params(params_path), Path(clips), Path(lr), Path(out), mapper=prefect_mapper("flow-clip")
    )


def main(argv: list[str] | None = None) -> None:
    args = stage_args(
        __doc__, ("--clips", "ingest output"), ("--lr", "degrade output"), ("--out", "output folder")
    ).parse_args(argv)
    run_flow(
        optical_flow_flow,
        args.task_runner,
        params_path=str(args.params),
        clips=str(args.clips),
        lr=str(args.lr),
        out=str(args.out),
    )


if __name__ == "__main__":
    main()
