"""Flow ``degrade``: LR frames of every clip for each (scale, kind)."""

from __future__ import annotations

from pathlib import Path

from flows.common import prefect_mapper, run_flow, stage_args, data_stage_env

data_stage_env()

from prefect import flow

from tanet.config import load_params
from tanet.data.lrsets import run_degrade


@flow(name="degrade")
def degrade_flow(params_path: str, clips: str, out: str) -> dict[str, int]:
    """One task per (clip, scale, kind)."""
    return run_degrade(load_params(params_path), Path(clips), Path(out), mapper=prefect_mapper("degrade-clip"))


def main(argv: list[str] | None = None) -> None:
    args = stage_args(__doc__, ("--clips", "ingest output"), ("--out", "output folder (LR sets)")).parse_args(argv)
    run_flow(degrade_flow, args.task_runner, params_path=str(args.params), clips=str(args.clips), out=str(args.out))


if __name__ == "__main__":
    main()
