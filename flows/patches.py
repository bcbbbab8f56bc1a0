"""Flow ``patches``: training samples into checksummed Parquet shards."""

from __future__ import annotations

from pathlib import Path

from flows.common import prefect_mapper, run_flow, stage_args, data_stage_env

data_stage_env()

from prefect import flow

from tanet.config import load_params
from tanet.data.patches import run_patches


@flow(name="patches")
def patches_flow(params_path: str, clips: str, lr: str, flow_dir: str, out: str) -> dict[str, object]:
    """One task per training clip; returns the shard manifest's counts."""
    manifest = run_patches(
        load_params(params_path),
        Path(clips),
        Path(lr),
        Path(flow_dir),
        Path(out),
        mapper=prefect_mapper("patches-clip"),
    )
    return {"rows": manifest["rows"], "shards": len(manifest["shards"])}  # type: ignore[arg-type]


def main(argv: list[str] | None = None) -> None:
    args = stage_args(
        __doc__,
        ("--clips", "ingest output"),
        ("--lr", "degrade output"),
        ("--flow", "flow output"),
        ("--out", "output folder (shards)"),
    ).parse_args(argv)
    run_flow(
        patches_flow,
        args.task_runner,
        params_path=str(args.params),
        clips=str(args.clips),
        lr=str(args.lr),
        flow_dir=str(args.flow),
        out=str(args.out),
    )


if __name__ == "__main__":
    main()
