"""Stage ``evaluate``: the field's numbers for the trained model, its branches, bicubic and lanczos."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from tanet.config import EvaluateParams
from tanet.errors import TanetError
from tanet.infer.evaluation import (
    EvalClip,
    clip_means,
    heldout_clips,
    run_methods,
    save_figures,
    score,
    vid4_clips,
    vid4_reference_clips,
)
from tanet.io.atomic import atomic_dir, atomic_write_csv, atomic_write_json
from tanet.io.markdown import markdown_table
from tanet.io.model_files import load_model_dir
from tanet.models.cost import count_parameters
from tanet.models.vsr import VSRNet
from tanet.ops.degrade import Degradation, DegradationKind
from tanet.ops.optical_flow import DisPreset, FlowMethod
from tanet.track.tracking import Tracker
from tanet.train.distributed import resolve_device

log = logging.getLogger(__name__)

REPORT_KEY = "evaluation"  # the Prefect artifact holding markdown_report's table
PARAMS = {
    "evaluate": "evaluate",
    "scale": "model.scale",
    "degradation": "patches.degradation",
    "flow_method": "flow.method",
    "dis_preset": "flow.dis_preset",
    "bd_sigma": "degrade.bd_sigma",
    "bd_kernel_size": "degrade.bd_kernel_size",
}


def run_evaluate(
    evaluate: EvaluateParams,
    *,
    scale: int,
    degradation: DegradationKind,
    flow_method: FlowMethod,
    dis_preset: DisPreset,
    bd_sigma: float,
    bd_kernel_size: int,
    root: Path,
    model_dir: Path,
    pretrain_dir: Path | None,
    clips_dir: Path,
    lr_dir: Path,
    metrics_path: Path,
    frames_csv: Path,
    plots_dir: Path,
    device: torch.device | str = "auto",
    tracker: Tracker | None = None,
    summary_path: Path | None = None,
    frame_plots: Path | None = None,
) -> dict[str, Any]:
    """Evaluates the joint model, its branches and bicubic on every available dataset.

    Args:
        evaluate: the ``evaluate`` section.
        scale: ``model.scale``, the held-out LR set's factor.
        degradation: ``patches.degradation``, the held-out LR set's operator (and Vid4's,
            unless the model says otherwise).
        flow_method, dis_preset: ``flow.method`` and ``flow.dis_preset``, for ROF at inference.
        bd_sigma, bd_kernel_size: ``degrade.bd_sigma`` and ``degrade.bd_kernel_size`` (Vid4 BD).
        root: repo root (``evaluate.vid4_dir`` is relative to it).
        model_dir: the train stage's model folder.
        pretrain_dir: the pretrain stage's folder (standalone branches), or None.
        clips_dir: ingest output (held-out clips).
        lr_dir: degrade output.
        metrics_path: ``eval.json`` to write.
        frames_csv: per-frame CSV to write.
        plots_dir: folder of PNG figures (replaced whole).
        device: inference device (``auto``: CUDA when there is one).
        tracker: the stage's MLflow run: gets every figure, the plots and the per-frame CSV.
        summary_path: the headline metrics file to write (:func:`headline`), if any.
        frame_plots: folder of per-frame Y-PSNR as DVC data plots (:func:`write_frame_plots`), if any.

    Returns:
        The ``eval.json`` content.
    """
    ep = evaluate
    device = resolve_device(device) if device == "auto" else torch.device(device)
    joint, meta = load_model_dir(model_dir, device)
    if not isinstance(joint, VSRNet):
        raise TanetError(f"{model_dir}: expected a joint model, found a {meta['kind']}")
    deg = Degradation(meta.get("degradation", degradation), joint.cfg.scale, bd_sigma, bd_kernel_size)
    branches: list[torch.nn.Module] = []
    if pretrain_dir is not None:
        branches = [
            load_model_dir(pretrain_dir / f"branch_{i}", device)[0] for i in range(1, joint.cfg.num_branches + 1)
        ]
    heldout = heldout_clips(clips_dir, lr_dir, scale, degradation, ep.max_frames)
    sources = eval_sources(ep, root, deg, heldout)
    per_clip: dict[str, dict[str, list[dict[str, float]]]] = {}
    all_rows: list[dict[str, Any]] = []
    with atomic_dir(plots_dir) as plots_tmp:
        for source in sources:
            for clip in source:
                log.info("evaluating %s/%s (%d frames)", clip.dataset, clip.clip_id, len(clip.lr))
                outputs, weights = run_methods(
                    clip,
                    joint,
                    branches,
                    device=device,
                    tile=ep.tile,
                    flow_method=flow_method,
                    flow_preset=dis_preset,
                )
                summary, rows = score(outputs, clip.gt, ep.crop, ep.flicker)
                for method, vals in summary.items():
                    per_clip.setdefault(clip.dataset, {}).setdefault(method, []).append(vals)
                all_rows += [{"dataset": clip.dataset, "clip": clip.clip_id, **r} for r in rows]
                save_figures(plots_tmp, clip.dataset, clip.clip_id, outputs, clip.gt, weights, rows)
    result = {dataset: {m: clip_means(clips) for m, clips in methods.items()} for dataset, methods in per_clip.items()}
    atomic_write_json(metrics_path, result)
    if summary_path is not None:
        atomic_write_json(summary_path, headline(result, meta, count_parameters(joint)))
    write_frames_csv(frames_csv, all_rows)
    if frame_plots is not None:
        write_frame_plots(frame_plots, all_rows)
    if tracker is not None:
        tracker.log_metrics(
            {f"{ds}.{m}.{k}": v for ds, ms in result.items() for m, vals in ms.items() for k, v in vals.items()}
        )
        tracker.log_artifact(plots_dir, "plots")
        tracker.log_artifact(frames_csv)
    return result


def eval_sources(
    ep: EvaluateParams, root: Path, deg: Degradation, heldout: Iterator[EvalClip]
) -> list[Iterator[EvalClip]]:
    """The datasets to evaluate: Vid4 (ours from GT, and the reference LR) when ``evaluate.vid4`` asks, then held-out."""
    vid4_dir = (root / ep.vid4_dir).resolve()
    sources: list[Iterator[EvalClip]] = [heldout]
    if ep.vid4 == "on" and not (vid4_dir / "GT").is_dir():
        raise TanetError(f"evaluate.vid4 is 'on' but {vid4_dir / 'GT'} does not exist")
    if ep.vid4 != "off" and (vid4_dir / "GT").is_dir():
        return [vid4_clips(vid4_dir, deg, ep.max_frames), vid4_reference_clips(vid4_dir, deg, ep.max_frames), *sources]
    if ep.vid4 == "auto":
        log.info("Vid4 not found at %s: evaluating the held-out clips only", vid4_dir)
    return sources


def write_frames_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    """The per-frame table (``metrics/eval_frames.csv``): dataset, clip, method, frame, psnr, ssim."""
    fields = ["dataset", "clip", "method", "frame", "psnr", "ssim"]
    atomic_write_csv(path, fields, ([r[f] for f in fields] for r in rows), lineterminator="\r\n")


def write_frame_plots(folder: Path, rows: list[dict[str, Any]]) -> None:
    """Per-frame Y-PSNR as DVC data plots: ``<dataset>__<clip>.csv``, one column per method.

    Columns ``frame, bicubic, lanczos, tanet, branch_1, ...``; ``dvc.yaml`` draws ``tanet``
    over ``frame`` for each clip, and ``dvc plots diff`` overlays experiments. The folder is
    replaced whole.
    """
    table: dict[str, dict[int, dict[str, float]]] = {}
    methods: dict[str, list[str]] = {}
    for r in rows:
        name = f"{r['dataset']}__{r['clip']}"
        table.setdefault(name, {}).setdefault(int(r["frame"]), {})[r["method"]] = round(float(r["psnr"]), 4)
        if r["method"] not in methods.setdefault(name, []):
            methods[name].append(r["method"])
    with atomic_dir(folder) as tmp:
        for name, frames in table.items():
            body = ([frame, *(frames[frame].get(m, "") for m in methods[name])] for frame in sorted(frames))
            atomic_write_csv(tmp / f"{name}.csv", ["frame", *methods[name]], body)


def headline(result: dict[str, Any], meta: dict[str, Any], params: int) -> dict[str, Any]:
    """The few numbers a user compares across runs (``metrics/summary.json``, what ``dvc exp show`` lists).

    Y-PSNR/SSIM of tanet and bicubic on each dataset but Vid4's reference-LR copy, the
    model's validation PSNR during training, and its parameter count.

    >>> ev = {"heldout_BIx4": {"tanet": {"psnr": 30.0, "ssim": 0.9, "tof": 0.2}, "bicubic": {"psnr": 29.0, "ssim": 0.8},
    ...       "branch_1": {"psnr": 29.5, "ssim": 0.85}}}
    >>> headline(ev, {"val_psnr": 30.12341}, 124256)
    {'heldout_BIx4': {'tanet': {'psnr': 30.0, 'ssim': 0.9}, 'bicubic': {'psnr': 29.0, 'ssim': 0.8}}, 'val_psnr': 30.1234, 'params': 124256}
    """
    out: dict[str, Any] = {}
    for ds, methods in result.items():
        if ds.startswith("vid4ref"):
            continue
        out[ds] = {m: {k: methods[m][k] for k in ("psnr", "ssim")} for m in ("tanet", "bicubic") if m in methods}
    out["val_psnr"] = round(float(meta.get("val_psnr", float("nan"))), 4)
    out["params"] = params
    return out


def markdown_report(result: dict[str, dict[str, dict[str, float]]], methods: Sequence[str] | None = None) -> str:
    """Markdown table of ``eval.json``: one row per dataset and method (all, or ``methods`` in that order)."""
    rows = [
        [ds, m, f"{v[m]['psnr']:.2f}", f"{v[m]['ssim']:.4f}", v[m].get("tof", "")]
        for ds, v in result.items()
        for m in (methods if methods is not None else v)
        if m in v
    ]
    return "\n".join(markdown_table(["dataset", "method", "Y-PSNR (dB)", "SSIM", "tOF"], rows))


def load_eval(path: Path) -> dict[str, Any]:
    """Reads an ``eval.json``."""
    return json.loads(Path(path).read_text())
