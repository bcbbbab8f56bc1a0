"""Stage ``train``: the temporal adaptive network, initialised from the pretrained branches, with loss (2)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from tanet.config import TrainParams
from tanet.data.valset import ValClip, load_val_clips
from tanet.errors import TanetError
from tanet.io.atomic import atomic_write_json
from tanet.io.clips import DataDirs
from tanet.io.model_files import CKPT_WEIGHTS, HISTORY, MODEL_META
from tanet.models.vsr import ModelConfig
from tanet.ops.degrade import DegradationKind
from tanet.stages import ALL_PARAMS
from tanet.track.tracking import Tracker, flatten
from tanet.train.curves import write_curve_data
from tanet.train.distributed import dist_info, resolve_device
from tanet.train.job import Job
from tanet.train.loop import model_meta, run_job
from tanet.train.validate import bicubic_psnr


@dataclass(frozen=True)
class TrainingSetup:
    """What both training stages read beside their own section (bound by their ``PARAMS``)."""

    model: ModelConfig  # the network
    seed: int  # seeds every job's init, data order and augmentation
    init: str  # train.init: ``pretrain`` (the paper's schedule) or a shipped model to fine-tune
    degradation: DegradationKind  # patches.degradation: the LR set trained and validated on
    patch_size: int  # patches.patch_size: the ROF block grid of the validation windows
    record: dict[str, Any]  # the whole params, recorded in model.json (never decided on)

    def val_clips(self, dirs: DataDirs, val_frames: int) -> list[ValClip]:
        """The validation clips (full frames) of the data stages' outputs."""
        return load_val_clips(
            dirs.clips,
            dirs.lr,
            dirs.flow,
            model=self.model,
            degradation=self.degradation,
            block=self.patch_size,
            val_frames=val_frames,
        )

    def meta(self, patches_dir: Path) -> dict[str, Any]:
        """``model.json``'s fields for a model trained on ``patches_dir``."""
        return model_meta(self.model, self.degradation, self.record, patches_dir)


SETUP_PARAMS = {
    "model": "model",
    "seed": "seed",
    "init": "train.init",
    "degradation": "patches.degradation",
    "patch_size": "patches.patch_size",
    "record": ALL_PARAMS,
}
PARAMS = {"train": "train", **SETUP_PARAMS}


def joint_job(train: TrainParams, setup: TrainingSetup) -> Job:
    """The joint training job."""
    return Job("joint", 0, setup.model, train, train.san_lambda, setup.seed)


def pretrained_init(num_branches: int, pretrain_dir: Path) -> dict[str, torch.Tensor]:
    """State dict of the joint network filled with the pretrained branches (model A)."""
    init: dict[str, torch.Tensor] = {}
    for i in range(1, num_branches + 1):
        path = pretrain_dir / f"branch_{i}" / CKPT_WEIGHTS
        if not path.is_file():
            raise TanetError(f"{path}: pretrained branch missing; run the pretrain stage first")
        for k, v in load_file(str(path)).items():
            init[f"tanet.branches.{i - 1}.{k.removeprefix('branch.')}"] = v
    return init


def shipped_init(setup: TrainingSetup) -> tuple[str, dict[str, torch.Tensor]] | None:
    """The trained network that ``train.init`` names, as ``(name, weights)``; None for ``pretrain``.

    ``train.init`` is a shipped name or a joint model folder (``model.safetensors`` +
    ``model.json``, as the train stage writes it; relative to the working directory): an
    existing folder of that name wins over a shipped name, as ``tanet upscale --model`` does.
    The params' network must be that one: every ``model`` key but ``align_block`` (the ROF
    block grid, which follows ``patches.patch_size``) and the degradation.

    Raises:
        TanetError: neither a joint model folder nor a shipped name, not shipped in this
            install, or its network or degradation differs from the params' (named key by key).
    """
    name = setup.init
    if name == "pretrain":
        return None
    from tanet.infer.shipped import shipped_dir

    folder = Path(name)
    if folder.is_dir():
        meta_path = folder / MODEL_META
        meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
        if meta.get("kind") != "joint":
            raise TanetError(f"train.init {name}: not a joint model folder (no model.json of kind 'joint')")
    else:
        try:
            folder = shipped_dir(name)
        except TanetError as err:
            raise TanetError(
                f"train.init: {err} (or a joint model folder, or 'pretrain' for the paper's schedule)"
            ) from err
        meta = json.loads((folder / MODEL_META).read_text())
    theirs, ours = flatten(meta["model"]), flatten(setup.model.to_dict())
    # align_block is the ROF block grid (it follows patches.patch_size), not part of the weights.
    diff = sorted(k for k in set(theirs) | set(ours) if theirs.get(k) != ours.get(k) and k != "align_block")
    if meta.get("degradation") != setup.degradation:
        diff.append(f"degradation ({meta.get('degradation')} vs patches.degradation {setup.degradation})")
    if diff:
        shown = ", ".join(f"model.{k} ({ours.get(k)!r} vs {theirs.get(k)!r})" if "(" not in k else k for k in diff[:6])
        raise TanetError(f"train.init {name}: the params' network differs from {name}'s: {shown}")
    return name, load_file(str(folder / CKPT_WEIGHTS))


def train_joint(
    train: TrainParams,
    setup: TrainingSetup,
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
    job = joint_job(train, setup)
    rank0 = dist_info()[0] == 0
    clips = setup.val_clips(dirs, train.val_frames) if rank0 else []
    shipped = shipped_init(setup)
    if shipped is not None:
        init: dict[str, torch.Tensor] | None = shipped[1]
    elif train.init_from_pretrain and pretrain_dir:
        init = pretrained_init(setup.model.num_branches, pretrain_dir)
    else:
        init = None
    bicubic = bicubic_psnr(clips, setup.model.scale) if rank0 else float("nan")
    meta = {**setup.meta(dirs.patches), "val_psnr_bicubic": bicubic, "init": setup.init}
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
            tracker.log_metrics({"val_psnr_bicubic": bicubic}, train.steps)
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
    train: TrainParams,
    *,
    model: ModelConfig,
    seed: int,
    init: str,
    degradation: DegradationKind,
    patch_size: int,
    record: dict[str, Any],
    dirs: DataDirs,
    pretrain: Path,
    out: Path,
    metrics: Path | None,
    checkpoints: Path,
    plots: Path | None,
    tracker: Tracker,
    device: torch.device | str = "auto",
    stop_after: int | None = None,
    deadline: float | None = None,
) -> dict[str, Any]:
    """Trains the joint network, writes ``metrics/train.json`` (pretrain + joint) and its curves
    as DVC data plots into ``plots`` (``joint_loss.csv``, ``joint_val_psnr.csv``).

    Args:
        train: the ``train`` section.
        model, seed, init, degradation, patch_size, record: the :class:`TrainingSetup` fields.
        dirs: the data stages' outputs.
        pretrain: the pretrained branches (the pretrain stage's output).
        out: the joint model folder.
        metrics: ``train.json`` to write (None: not written, as under ``python -m tanet.train``).
        checkpoints: checkpoint root (``joint/step_<n>``).
        plots: folder of the curves as DVC data plots (None: not written).
        tracker: the stage's MLflow run.
        device: a device, or ``auto``, ``cpu``, ``cuda``.
        stop_after: stop after this many steps without outputs (tests of resuming).
        deadline: a :func:`time.monotonic` time: past it the job checkpoints and stops
            (``stopped_at``) without outputs.

    Returns:
        The summary written to ``metrics`` (the joint run's metrics when it is None).
    """
    joint = train_joint(
        train,
        TrainingSetup(model, seed, init, degradation, patch_size, record),
        dirs,
        pretrain,
        out,
        checkpoints,
        device=resolve_device(device),
        tracker=tracker,
        stop_after=stop_after,
        deadline=deadline,
    )
    if metrics is None or "stopped_at" in joint or dist_info()[0] != 0:
        return joint
    summary = train_metrics(pretrain, out, model.num_branches)
    atomic_write_json(metrics, summary)
    if plots is not None:
        write_curve_data({"joint": json.loads((out / HISTORY).read_text())}, plots)
    return summary
