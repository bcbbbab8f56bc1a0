"""Stage ``train``: the temporal adaptive network, initialised from the pretrained branches, with loss (2)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from tanet.config import Params
from tanet.data.valset import load_val_clips
from tanet.errors import TanetError
from tanet.io.atomic import atomic_write_json
from tanet.io.clips import DataDirs
from tanet.io.model_files import CKPT_WEIGHTS, HISTORY, MODEL_META
from tanet.track.tracking import Tracker, flatten
from tanet.train.curves import write_curve_data
from tanet.train.distributed import dist_info, resolve_device
from tanet.train.job import Job
from tanet.train.loop import model_meta, run_job
from tanet.train.validate import bicubic_psnr


def joint_job(params: Params) -> Job:
    """The joint training job."""
    return Job("joint", 0, params.model, params.train, params.train.san_lambda, params.seed)


def pretrained_init(params: Params, pretrain_dir: Path) -> dict[str, torch.Tensor]:
    """State dict of the joint network filled with the pretrained branches (model A)."""
    init: dict[str, torch.Tensor] = {}
    for i in range(1, params.model.num_branches + 1):
        path = pretrain_dir / f"branch_{i}" / CKPT_WEIGHTS
        if not path.is_file():
            raise TanetError(f"{path}: pretrained branch missing; run the pretrain stage first")
        for k, v in load_file(str(path)).items():
            init[f"tanet.branches.{i - 1}.{k.removeprefix('branch.')}"] = v
    return init


def shipped_init(params: Params) -> tuple[str, dict[str, torch.Tensor]] | None:
    """The shipped model that ``train.init`` names, as ``(name, weights)``; None for ``pretrain``.

    The params' network must be the shipped one: every ``model`` key but ``align_block`` (the
    ROF block grid, which follows ``patches.patch_size``) and the degradation.

    Raises:
        TanetError: not a shipped name, not shipped in this install, or its network or
            degradation differs from the params' (named key by key).
    """
    name = params.train.init
    if name == "pretrain":
        return None
    from tanet.infer.shipped import shipped_dir

    try:
        folder = shipped_dir(name)
    except TanetError as err:
        raise TanetError(f"train.init: {err} (or 'pretrain' for the paper's schedule)") from err
    meta = json.loads((folder / MODEL_META).read_text())
    theirs, ours = flatten(meta["model"]), flatten(params.model.to_dict())
    # align_block is the ROF block grid (it follows patches.patch_size), not part of the weights.
    diff = sorted(k for k in set(theirs) | set(ours) if theirs.get(k) != ours.get(k) and k != "align_block")
    if meta.get("degradation") != params.patches.degradation:
        diff.append(f"degradation ({meta.get('degradation')} vs patches.degradation {params.patches.degradation})")
    if diff:
        shown = ", ".join(f"model.{k} ({ours.get(k)!r} vs {theirs.get(k)!r})" if "(" not in k else k for k in diff[:6])
        raise TanetError(f"train.init {name}: the params' network differs from {name}'s: {shown}")
    return name, load_file(str(folder / CKPT_WEIGHTS))


def train_joint(
    params: Params,
    dirs: DataDirs,
    pretrain_dir: Path | None,
    out_dir: Path,
    ckpt_root: Path,
    *,
    device: torch.device,
    tracker: Tracker | None = None,
    **kw: Any,
) -> dict[str, Any]:
    """Trains the joint network into ``out_dir``; returns its metrics incl. the bicubic baseline (rank 0)."""
    job = joint_job(params)
    rank0 = dist_info()[0] == 0
    clips = load_val_clips(params, dirs.clips, dirs.lr, dirs.flow, params.train.val_frames) if rank0 else []
    shipped = shipped_init(params)
    if shipped is not None:
        init: dict[str, torch.Tensor] | None = shipped[1]
    else:
        init = pretrained_init(params, pretrain_dir) if params.train.init_from_pretrain and pretrain_dir else None
    bicubic = bicubic_psnr(clips, params.model.scale) if rank0 else float("nan")
    meta = {**model_meta(params, dirs.patches), "val_psnr_bicubic": bicubic, "init": params.train.init}
    if tracker is not None and tracker.enabled and rank0:
        # model.json names its MLflow run: the register stage logs the model into it (lineage).
        meta["training_run"] = tracker.run_id
        log_training_data(tracker, dirs.patches, meta)
    metrics = run_job(
        job,
        dirs.patches,
        clips,
        out_dir,
        ckpt_root / job.name,
        device=device,
        init_weights=init,
        tracker=tracker,
        meta=meta,
        **kw,
    )
    if metrics and "val_psnr" in metrics:
        metrics["val_psnr_bicubic"] = bicubic
        if tracker is not None:
            tracker.log_metrics({"val_psnr_bicubic": bicubic}, params.train.steps)
    return metrics


def log_training_data(tracker: Tracker, patches_dir: Path, meta: dict[str, Any]) -> None:
    """Logs the training shards as the run's ``training`` dataset input, by their hash.

    The digest is DVC's hash of ``data/patches`` when DVC runs the stage (the one in
    ``dvc.lock``), else the shards' sha256; the full sha256 and the licences are input tags.
    """
    digest = meta.get("patches_dvc_md5") or meta["patches_sha256"]
    tags = {"tanet.sha256": meta["patches_sha256"], "tanet.licences": json.dumps(meta.get("licences", []))}
    tracker.log_dataset("patches", patches_dir, digest, "training", tags)


def train_metrics(pretrain_dir: Path, train_dir: Path, num_branches: int) -> dict[str, Any]:
    """``metrics/train.json``: ``{"pretrain": {"branch_i": {"val_psnr"}}, "joint": {...}}``."""
    pre = {}
    for i in range(1, num_branches + 1):
        meta = json.loads((pretrain_dir / f"branch_{i}" / MODEL_META).read_text())
        pre[f"branch_{i}"] = {"val_psnr": round(meta["val_psnr"], 4)}
    joint = json.loads((train_dir / MODEL_META).read_text())
    return {
        "pretrain": pre,
        "joint": {"val_psnr": round(joint["val_psnr"], 4), "val_psnr_bicubic": round(joint["val_psnr_bicubic"], 4)},
    }


def run_train(
    params: Params,
    dirs: DataDirs,
    pretrain: Path,
    out: Path,
    metrics: Path,
    checkpoints: Path,
    plots: Path,
    *,
    tracker: Tracker,
) -> dict[str, Any]:
    """Trains the joint network, writes ``metrics/train.json`` (pretrain + joint) and its curves
    as DVC data plots into ``plots`` (``joint_loss.csv``, ``joint_val_psnr.csv``); returns the summary."""
    train_joint(params, dirs, pretrain, out, checkpoints, device=resolve_device("auto"), tracker=tracker)
    summary = train_metrics(pretrain, out, params.model.num_branches)
    atomic_write_json(metrics, summary)
    write_curve_data({"joint": json.loads((out / HISTORY).read_text())}, plots)
    return summary
