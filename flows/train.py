"""Flow ``train``: the temporal adaptive network from the pretrained branches, loss (2)."""

from __future__ import annotations

from pathlib import Path

from flows.common import run_flow, stage_args
from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from tanet.atomic import atomic_write_json
from tanet.config import load_params
from tanet.tracking import stage_run
from tanet.train import DataDirs, resolve_device, train_joint, train_metrics


@task(name="train-joint", cache_policy=NO_CACHE, persist_result=False)
def joint_task(params_path: str, dirs: DataDirs, pretrain: str, out: str, checkpoints: str) -> dict[str, float]:
    params = load_params(params_path)
    with stage_run("train", params.to_dict(), experiment=params.mlflow.experiment) as tracker:
        return train_joint(
            params, dirs, Path(pretrain), Path(out), Path(checkpoints), device=resolve_device("auto"), tracker=tracker
        )


@flow(name="train")
def train_flow(
    params_path: str,
    clips: str,
    lr: str,
    flow_dir: str,
    patches: str,
    pretrain: str,
    out: str,
    metrics: str,
    checkpoints: str,
) -> dict[str, object]:
    """Trains the joint network and writes ``metrics/train.json`` (pretrain + joint)."""
    params = load_params(params_path)
    dirs = DataDirs(Path(clips), Path(lr), Path(flow_dir), Path(patches))
    joint_task(params_path, dirs, pretrain, out, checkpoints)
    summary = train_metrics(Path(pretrain), Path(out), params.model.num_branches)
    atomic_write_json(Path(metrics), summary)
    return summary


def main(argv: list[str] | None = None) -> None:
    ap = stage_args(
        __doc__,
        ("--clips", "ingest output"),
        ("--lr", "degrade output"),
        ("--flow", "flow output"),
        ("--patches", "patches output"),
        ("--pretrain", "pretrained branches"),
        ("--out", "model folder"),
        ("--metrics", "metrics JSON to write"),
    )
    ap.add_argument("--checkpoints", type=Path, default=Path(".tanet/checkpoints/train"))
    args = ap.parse_args(argv)
    run_flow(
        train_flow,
        args.task_runner,
        params_path=str(args.params),
        clips=str(args.clips),
        lr=str(args.lr),
        flow_dir=str(args.flow),
        patches=str(args.patches),
        pretrain=str(args.pretrain),
        out=str(args.out),
        metrics=str(args.metrics),
        checkpoints=str(args.checkpoints),
    )


if __name__ == "__main__":
    main()
