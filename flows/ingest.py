"""Flow ``ingest``: sources -> normalised clips + manifest (+ quarantine report)."""

from __future__ import annotations

from pathlib import Path

from flows.common import ROOT, prefect_mapper, run_flow, stage_args, data_stage_env

data_stage_env()

from prefect import flow

from tanet.config import load_params
from tanet.data.ingest import read_quarantine, run_ingest


@flow(name="ingest")
def ingest_flow(params_path: str, out: str) -> dict[str, object]:
    """Ingests every configured source; one task per source."""
    params = load_params(params_path)
    records = run_ingest(params, ROOT, Path(out), mapper=prefect_mapper("ingest-clip"))
    return {"clips": [r.clip_id for r in records], "quarantined": len(read_quarantine(Path(out)))}


def main(argv: list[str] | None = None) -> None:
    args = stage_args(__doc__, ("--out", "output folder (clips + manifest)")).parse_args(argv)
    run_flow(ingest_flow, args.task_runner, params_path=str(args.params), out=str(args.out))


if __name__ == "__main__":
    main()
