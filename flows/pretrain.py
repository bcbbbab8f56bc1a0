"""Flow ``pretrain``: each SR branch alone with loss (1); one task per branch (model A)."""

from __future__ import annotations

from pathlib import Path

from flows.common import prefect_mapper, run_flow, stage_args
from prefect import flow

from tanet.atomic import atomic_write_json
from tanet.config import load_params
from tanet.data.valset import load_val_clips
from tanet.errors import TanetError
from tanet.tracking import child_run, stage_run
from tanet.train import DataDirs, pretrain_branch, resolve_device


@flow(name="pretrain")
def pretrain_flow(
    params_path: str, clips: str, lr: str, flow_dir: str, patches: str, out: str, metrics: str, checkpoints: str
) -> dict[str, float]:
    """Pretrains branches 1..N (in parallel when the task runner has room: ``pretrain.parallel``;
    with ``pretrain.init_from_branch1`` branch 1 first, then the others together)."""
    params = load_params(params_path)
    dirs = DataDirs(Path(clips), Path(lr), Path(flow_dir), Path(patches))
    device = resolve_device("auto")
    if device.type == "cpu" and params.pretrain.parallel > 1:
        import os

        import torch

        # Branches on parallel threads share the cores instead of each taking all of them.
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // params.pretrain.parallel))
    val = load_val_clips(params, dirs.clips, dirs.lr, dirs.flow, params.pretrain.val_frames)
    branches = list(range(1, params.model.num_branches + 1))
    with stage_run("pretrain", params.to_dict(), experiment=params.mlflow.experiment) as tracker:

        def one(i: int) -> dict[str, float]:
            run = child_run(tracker, f"branch_{i}", {"tanet.stage": "pretrain", "tanet.branch": i})
            try:
                result = pretrain_branch(
                    params, i, dirs, Path(out), Path(checkpoints), device=device, tracker=run, val_clips=val
                )
            except BaseException:
                run.finish("FAILED")
                raise
            run.finish()
            return result

        mapper = prefect_mapper("pretrain-branch")
        # Branches grown from branch 1 wait for it; they then train side by side.
        waves = [branches[:1], branches[1:]] if params.pretrain.init_from_branch1 else [branches]
        results: list = []
        for wave in waves:
            results += mapper(one, wave, [f"branch_{i}" for i in wave]) if wave else []
            if any(isinstance(r, BaseException) for r in results):
                break
        summary = {}
        for i, res in zip(branches, results):  # a failed first wave leaves the rest unrun
            if isinstance(res, BaseException):
                raise TanetError(f"pretrain: branch {i} failed: {res}") from res
            summary[f"branch_{i}"] = {"val_psnr": round(res["val_psnr"], 4)}
        tracker.log_metrics({f"{k}.val_psnr": v["val_psnr"] for k, v in summary.items()})
    atomic_write_json(Path(metrics), summary)
    return {k: v["val_psnr"] for k, v in summary.items()}


def main(argv: list[str] | None = None) -> None:
    ap = stage_args(
        __doc__,
        ("--clips", "ingest output"),
        ("--lr", "degrade output"),
        ("--flow", "flow output"),
        ("--patches", "patches output"),
        ("--out", "pretrained branches folder"),
        ("--metrics", "metrics JSON to write"),
    )
    ap.add_argument("--checkpoints", type=Path, default=Path(".tanet/checkpoints/pretrain"))
    args = ap.parse_args(argv)
    runner = args.task_runner or f"threads:{load_params(args.params).pretrain.parallel}"
    run_flow(
        pretrain_flow,
        runner,
        params_path=str(args.params),
        clips=str(args.clips),
        lr=str(args.lr),
        flow_dir=str(args.flow),
        patches=str(args.patches),
        out=str(args.out),
        metrics=str(args.metrics),
        checkpoints=str(args.checkpoints),
    )


if __name__ == "__main__":
    main()
