"""Flow ``evaluate``: Vid4 (when present) and held-out clips: bicubic, tanet, every branch."""

from __future__ import annotations

from pathlib import Path

from flows.common import ROOT, run_flow, stage_args
from prefect import flow
from prefect.artifacts import create_markdown_artifact

from tanet.config import load_params
from tanet.evaluate import run_evaluate
from tanet.tracking import stage_run
from tanet.train import resolve_device


def eval_table(result: dict[str, dict[str, dict[str, float]]]) -> str:
    """Markdown table of ``eval.json``: one row per dataset and method."""
    lines = ["| dataset | method | Y-PSNR (dB) | SSIM | tOF |", "|---|---|---|---|---|"]
    for ds, methods in result.items():
        for method, v in methods.items():
            lines.append(f"| {ds} | {method} | {v['psnr']:.2f} | {v['ssim']:.4f} | {v.get('tof', '')} |")
    return "\n".join(lines)


@flow(name="evaluate")
def evaluate_flow(
    params_path: str, model: str, pretrain: str, clips: str, lr: str, metrics: str, frames: str, plots: str
) -> dict[str, object]:
    """Evaluates and logs the table to MLflow and as a Prefect artifact."""
    params = load_params(params_path)
    with stage_run("evaluate", params.to_dict(), experiment=params.mlflow.experiment) as tracker:
        result = run_evaluate(
            params,
            ROOT,
            Path(model),
            Path(pretrain),
            Path(clips),
            Path(lr),
            Path(metrics),
            Path(frames),
            Path(plots),
            device=resolve_device("auto"),
        )
        tracker.log_metrics(
            {f"{ds}.{m}.{k}": v for ds, ms in result.items() for m, vals in ms.items() for k, v in vals.items()}
        )
        tracker.log_artifact(Path(plots), "plots")
        tracker.log_artifact(Path(frames))
    create_markdown_artifact(eval_table(result), key="evaluation", description="tanet evaluation (Y-PSNR/SSIM)")
    return result


def main(argv: list[str] | None = None) -> None:
    args = stage_args(
        __doc__,
        ("--model", "joint model folder"),
        ("--pretrain", "pretrained branches"),
        ("--clips", "ingest output"),
        ("--lr", "degrade output"),
        ("--metrics", "eval.json to write"),
        ("--frames", "per-frame CSV to write"),
        ("--plots", "figures folder"),
    ).parse_args(argv)
    run_flow(
        evaluate_flow,
        args.task_runner,
        params_path=str(args.params),
        model=str(args.model),
        pretrain=str(args.pretrain),
        clips=str(args.clips),
        lr=str(args.lr),
        metrics=str(args.metrics),
        frames=str(args.frames),
        plots=str(args.plots),
    )


if __name__ == "__main__":
    main()
