"""Training: branch pretraining with loss (1), then joint training with loss (2).

Schedule (Liu et al. 2017, Sec. 3.3): each SR branch B_i is first trained alone on its
2i-1 frames against the HR target, ``min ||F_Bi(y) - x||^2`` ("model A"); the temporal
adaptive network is then initialised from those branches and trained whole,
``min ||Sum_i W_i * F_Bi - x||^2``. With SAN alignment the alignment network trains in the
joint stage with the extra term ``lambda * Sum_k ||theta_hat_k - theta_k||^2`` (theta in LR
pixels, theta_hat the rectified-flow shift from the patches stage).

Inputs per alignment mode: ``none`` raw windows; ``rof`` ROF-aligned windows; ``san`` raw
windows aligned by the SAN (its branches are pretrained on ROF-aligned windows, which the
SAN is supervised to reproduce).

The loop is flat: a pure learning-rate schedule (:func:`lr_at`), a stateless per-step
augmentation (the 8 dihedral symmetries, drawn from a generator seeded by the step), one
:func:`train_step`, a no-grad validation helper, and checkpoints every ``checkpoint_every``
steps.

Checkpoints: ``<ckpt_dir>/step_<n>/`` holds the weights (safetensors), the optimiser state,
the loader position of every rank, the history and ``meta.json`` (step, fingerprint of the
job's params, data and initial weights, number of ranks). A folder is filled under a
temporary name, fsynced and renamed to a name that did not exist, and only then are older
ones removed, so a kill at any moment (even mid-write) leaves the previous complete
checkpoint. A restarted job resumes from the newest checkpoint with its fingerprint (one
for other params or data is ignored) and, on CPU, ends with bit-identical weights to an
uninterrupted run (tested): the data order is a pure function of (seed, loader position),
augmentation of (seed, step, rank), and nothing draws from the global RNG after the
model's seeded initialisation. Neither the optimiser nor the loader depend on wall time.

Several GPUs (or CPU processes): run under ``torchrun`` (DDP; gloo on CPU, NCCL on CUDA).
The global batch is split over the ranks, each rank reads a disjoint share of the row
groups, rank 0 alone validates and writes checkpoints and outputs, and every rank waits
for the outputs before moving on. A checkpoint resumes only with the same number of ranks.

Runs as a plain module (``python -m tanet.train``) on machines with only torch, numpy,
pyarrow, opencv and safetensors: MLflow is imported only when tracking is on.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import math
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from tanet.atomic import mkdtemp_public
from tanet.config import OptimParams, Params, load_params
from tanet.data.dataset import LoaderState, PatchLoader
from tanet.data.patches import read_patch_manifest
from tanet.data.valset import ValClip, load_val_clips, window
from tanet.degrade import imresize
from tanet.errors import TanetError
from tanet.metrics import psnr
from tanet.modelio import CKPT_WEIGHTS, MODEL_META, BranchModel, write_model_dir
from tanet.models import VSRNet
from tanet.models.vsr import ModelConfig
from tanet.tracking import Tracker, dvc_out_hash

log = logging.getLogger(__name__)

CKPT_STATE = "state.pt"  # optimiser, loader positions, history (torch.load(weights_only=True))
CKPT_META = "meta.json"  # step, fingerprint, job, world size: read without loading the state
CKPT_PREFIX = "step_"  # checkpoint folders are step_00000200, ...

# Model initialisation seeds and draws from the global RNG; branches pretrained on threads
# (``pretrain.parallel``) would interleave their draws without this lock.
_INIT_LOCK = threading.Lock()


@dataclass(frozen=True)
class Job:
    """One training job: a single branch (loss 1) or the joint network (loss 2)."""

    kind: Literal["branch", "joint"]
    branch: int  # 1..N for kind == "branch"; 0 for the joint network
    model: ModelConfig
    optim: OptimParams
    san_lambda: float = 0.0
    seed: int = 0

    @property
    def name(self) -> str:
        """``branch_<i>`` or ``joint``."""
        return f"branch_{self.branch}" if self.kind == "branch" else "joint"


def build_model(job: Job) -> nn.Module:
    """The network a job trains, initialised from the global RNG seeded by the job (thread-safe)."""
    with _INIT_LOCK:
        torch.manual_seed(_seed(job.seed, job.name, "init"))
        return BranchModel(job.model, job.branch) if job.kind == "branch" else VSRNet(job.model)


def input_field(job: Job) -> str:
    """Which loader field feeds the network: ``rof`` (pre-aligned) or ``lr`` (raw)."""
    if job.model.alignment == "rof" or (job.kind == "branch" and job.model.alignment == "san"):
        return "rof"
    return "lr"


def lr_at(step: int, optim: OptimParams) -> float:
    """Learning rate at ``step`` (0-based): linear warm-up, then cosine to ``lr_min`` or constant.

    Warm-up reaches ``lr`` at step ``warmup_steps - 1``; the cosine runs from ``lr`` at
    ``warmup_steps`` to ``lr_min`` at ``steps``.

    >>> lr_at(0, OptimParams(lr=1e-3, warmup_steps=4))
    0.00025
    """
    if step < optim.warmup_steps:
        return optim.lr * (step + 1) / optim.warmup_steps
    if optim.schedule == "constant":
        return optim.lr
    span = max(1, optim.steps - optim.warmup_steps)
    progress = min(1.0, (step - optim.warmup_steps) / span)
    return optim.lr_min + 0.5 * (optim.lr - optim.lr_min) * (1 + math.cos(math.pi * progress))


def _seed(*keys: Any) -> int:
    return int.from_bytes(hashlib.sha256("/".join(map(str, keys)).encode()).digest()[:4], "little")


# -- augmentation -------------------------------------------------------------------------
HFLIP, VFLIP, TRANSPOSE = 1, 2, 4  # bits of a dihedral code 0..7, applied in this order


def dihedral(x: torch.Tensor, code: int) -> torch.Tensor:
    """Applies dihedral transform ``code`` to the last two (square) axes: h-flip, v-flip, transpose."""
    dims = [d for bit, d in ((HFLIP, -1), (VFLIP, -2)) if code & bit]
    if dims:
        x = x.flip(dims)
    return x.transpose(-1, -2) if code & TRANSPOSE else x


def dihedral_theta(theta: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """Transforms shifts ``(B, K, 2)`` (dx, dy) like :func:`dihedral` transforms the frames.

    A horizontal flip negates dx, a vertical flip negates dy and a transpose swaps them, so
    theta_hat stays the shift that aligns the transformed neighbour with the transformed
    centre (``aligned[y, x] = nbr[y + dy, x + dx]``).
    """
    sx = 1 - 2 * (codes & HFLIP).ne(0).to(theta.dtype)  # (B,)
    sy = 1 - 2 * (codes & VFLIP).ne(0).to(theta.dtype)
    th = theta * torch.stack([sx, sy], -1)[:, None, :]
    return torch.where((codes & TRANSPOSE).ne(0)[:, None, None], th.flip(-1), th)


def apply_dihedral(batch: dict[str, torch.Tensor], codes: torch.Tensor) -> dict[str, torch.Tensor]:
    """Applies per-sample dihedral codes ``(B,)`` to the pixel fields and theta of a batch.

    Samples are grouped by code, so each field is gathered, transformed and scattered once
    per distinct code (at most 8 times) instead of being cloned and masked per operation.
    """
    out = dict(batch)
    groups = [(c, (codes == c).nonzero().squeeze(1)) for c in codes.unique().tolist()]
    for key in ("lr", "rof", "hr"):
        if key not in batch:
            continue
        x = batch[key]
        if x.shape[-1] != x.shape[-2]:
            raise ValueError(f"augment needs square patches, got {key} of shape {tuple(x.shape)}")
        if len(groups) == 1:
            out[key] = dihedral(x, groups[0][0]).contiguous()
            continue
        y = torch.empty_like(x)
        for code, idx in groups:
            y.index_copy_(0, idx, dihedral(x.index_select(0, idx), code))
        out[key] = y
    if "theta" in batch:
        out["theta"] = dihedral_theta(batch["theta"], codes)
    return out


def augment(batch: dict[str, torch.Tensor], gen: torch.Generator) -> dict[str, torch.Tensor]:
    """Random per-sample flips and transposes (the 8 dihedral symmetries), theta transformed alike.

    Runs on the loader's uint8 tensors (4x fewer bytes than float); codes come from ``gen``.
    """
    n = next(iter(batch.values())).shape[0]
    return apply_dihedral(batch, torch.randint(0, 8, (n,), generator=gen))


# -- loss and one optimisation step -------------------------------------------------------
def _autocast(device: torch.device, precision: str) -> Any:
    use_bf16 = precision == "bf16" or (precision == "auto" and device.type == "cuda")
    return torch.autocast(device.type, dtype=torch.bfloat16) if use_bf16 else nullcontext()


def compute_loss(
    job: Job,
    model: nn.Module,
    batch: dict[str, torch.Tensor],
    device: torch.device,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Loss (1) for a branch, loss (2) (+ lambda theta term for SAN) for the joint network.

    Returns:
        The loss and its detached parts (``mse``; ``theta`` for SAN with lambda > 0), kept
        as tensors so a step does not wait for the device.
    """
    x = batch[input_field(job)].to(device, non_blocking=True).float().div_(255)  # (B, T, C, p, p)
    target = batch["hr"].to(device, non_blocking=True).float().div_(255)  # (B, C, rp, rp)
    with _autocast(device, job.optim.precision):
        if job.kind == "branch":
            sr = model(x)
            theta = None
        else:
            out = model(x, return_all=True)
            sr, theta = out.sr, out.theta
    mse = F.mse_loss(sr.float(), target)
    parts = {"mse": mse.detach()}
    loss = mse
    if theta is not None and job.san_lambda > 0:
        theta_hat = batch["theta"].to(device, non_blocking=True)  # (B, T-1, 2) LR pixels
        if theta.ndim == 4:  # affine: compare with the shift as a normalised affine matrix
            from tanet.models.san import translation_to_affine

            p = x.shape[-1]
            theta_hat = translation_to_affine(theta_hat.reshape(-1, 2), p, p).view(theta.shape)
        reg = (theta.float() - theta_hat).square().flatten(2).sum(-1).mean()  # mean over pairs of ||.||^2
        loss = mse + job.san_lambda * reg
        parts["theta"] = reg.detach()
    return loss, parts


def make_optimizer(model: nn.Module, optim: OptimParams, device: torch.device) -> torch.optim.Optimizer:
    """AdamW: fused kernels on CUDA, multi-tensor (``foreach``) on CPU."""
    fast = {"fused": True} if device.type == "cuda" else {"foreach": True}
    return torch.optim.AdamW(model.parameters(), lr=optim.lr, weight_decay=optim.weight_decay, **fast)


def train_step(
    job: Job,
    net: nn.Module,
    opt: torch.optim.Optimizer,
    batch: dict[str, torch.Tensor],
    step: int,
    device: torch.device,
    rank: int = 0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One optimisation step at 0-based ``step``: augment, set the learning rate, loss, backward, update."""
    batch = augment(batch, torch.Generator().manual_seed(_seed(job.seed, job.name, "aug", step, rank)))
    lr = lr_at(step, job.optim)
    for group in opt.param_groups:
        group["lr"] = lr
    loss, parts = compute_loss(job, net, batch, device)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if job.optim.grad_clip > 0:
        nn.utils.clip_grad_norm_(net.parameters(), job.optim.grad_clip)
    opt.step()
    return loss.detach(), parts


# -- validation ---------------------------------------------------------------------------
def _predict_full(job: Job, model: nn.Module, clip: ValClip, t: int, device: torch.device) -> torch.Tensor:
    """Full-frame prediction of frame ``t`` as Y in [0, 255] (float64, rounded)."""
    cfg = job.model
    win = window(clip, t, cfg.num_frames, aligned=input_field(job) == "rof")
    x = torch.from_numpy(win).to(device).float().div_(255)[None]  # (1, T, C, h, w)
    with _autocast(device, job.optim.precision):
        sr = model(x) if job.kind == "branch" else model(x, full_frame=True)
    y = sr.float().clamp(0, 1)[0]
    if cfg.channels == 3:
        from tanet.color import rgb_to_ycbcr

        y = rgb_to_ycbcr(y.double())[:1]
    return torch.floor(y[0].double() * 255 + 0.5).cpu()


@torch.no_grad()
def validate(job: Job, model: nn.Module, clips: list[ValClip], device: torch.device) -> dict[str, float]:
    """Mean Y-PSNR (dB) over the validation frames of each clip, then over clips."""
    was_training = model.training
    model.eval()
    per_clip = {}
    for clip in clips:
        values = [
            psnr(_predict_full(job, model, clip, t, device), torch.from_numpy(gt).double())
            for t, gt in zip(clip.frames, clip.hr_y)
        ]
        per_clip[clip.clip_id] = float(np.mean(values))
    model.train(was_training)
    return {"val_psnr": float(np.mean(list(per_clip.values()))), **{f"val_psnr/{k}": v for k, v in per_clip.items()}}


def bicubic_psnr(clips: list[ValClip], scale: int) -> float:
    """Y-PSNR of MATLAB-bicubic upscaling of the LR Y frames, on the validation frames."""
    values = []
    for clip in clips:
        per = []
        for t, gt in zip(clip.frames, clip.hr_y):
            lr = torch.from_numpy(clip.lr[t]).double()
            if lr.shape[0] == 3:
                from tanet.color import rgb_to_ycbcr

                lr = rgb_to_ycbcr(lr / 255)[:1] * 255
            up = imresize(lr, scale=scale).clamp(0, 255)
            per.append(psnr(torch.floor(up[0] + 0.5), torch.from_numpy(gt).double()))
        values.append(float(np.mean(per)))
    return float(np.mean(values))


# -- checkpoints --------------------------------------------------------------------------
def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def checkpoint_dirs(ckpt_dir: Path) -> list[Path]:
    """Complete checkpoint folders of ``ckpt_dir``, newest step first."""
    if not ckpt_dir.is_dir():
        return []
    found = [
        p
        for p in ckpt_dir.iterdir()
        if p.is_dir() and p.name.startswith(CKPT_PREFIX) and p.name.removeprefix(CKPT_PREFIX).isdigit()
    ]
    return sorted(found, key=lambda p: int(p.name.removeprefix(CKPT_PREFIX)), reverse=True)


def save_checkpoint(
    ckpt_dir: Path,
    model: nn.Module,
    opt: torch.optim.Optimizer,
    step: int,
    loader_states: list[LoaderState],
    history: list[dict[str, Any]],
    meta: dict[str, Any],
) -> Path:
    """Writes ``ckpt_dir/step_<step>`` atomically, then removes every older checkpoint.

    The folder is filled and fsynced under a temporary name and renamed to a name that does
    not exist yet (one atomic rename; no moment without a complete checkpoint).
    """
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    final = ckpt_dir / f"{CKPT_PREFIX}{step:08d}"
    tmp = Path(mkdtemp_public(prefix=f".{final.name}.", suffix=".tmp", dir=ckpt_dir))
    try:
        save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(tmp / CKPT_WEIGHTS))
        torch.save(
            {
                "step": step,
                "optimizer": opt.state_dict(),
                "loader": [dataclasses.asdict(s) for s in loader_states],
                "history": history,
            },
            tmp / CKPT_STATE,
        )
        (tmp / CKPT_META).write_text(json.dumps({"step": step, "world": len(loader_states), **meta}, indent=2) + "\n")
        for f in tmp.iterdir():
            _fsync(f)
        _fsync(tmp)
        if final.exists():  # another job's checkpoint at this step (its fingerprint did not match)
            os.replace(final, ckpt_dir / f".{final.name}.stale-{os.getpid()}")
        os.replace(tmp, final)
        _fsync(ckpt_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for old in ckpt_dir.iterdir():  # older checkpoints, leftovers of killed writes, stale folders
        if (
            old != final
            and old.is_dir()
            and (old.name.startswith(CKPT_PREFIX) or old.name.startswith(f".{CKPT_PREFIX}"))
        ):
            shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(ckpt_dir: Path, fingerprint: str, world: int = 1) -> dict[str, Any] | None:
    """The newest complete checkpoint of ``ckpt_dir`` for the same job and inputs (else None).

    Checkpoints of other params, data or initial weights (another fingerprint) are skipped;
    an unreadable one is skipped for the next older one.

    Raises:
        TanetError: the checkpoint was written by another number of DDP ranks.
    """
    for folder in checkpoint_dirs(ckpt_dir):
        try:
            meta = json.loads((folder / CKPT_META).read_text())
        except (OSError, ValueError) as err:
            log.warning("%s: unreadable checkpoint (%s); trying an older one", folder, err)
            continue
        if meta.get("fingerprint") != fingerprint:
            log.info("%s is for other params, data or initial weights; not resumed", folder)
            continue
        if meta.get("world") != world:
            raise TanetError(
                f"{folder}: written by {meta.get('world')} DDP ranks, this run has {world}; "
                "resume with the same number of processes or delete the checkpoint"
            )
        try:
            state = torch.load(folder / CKPT_STATE, map_location="cpu", weights_only=True)
            state["weights"] = load_file(str(folder / CKPT_WEIGHTS))
        except Exception as err:  # noqa: BLE001 - a damaged checkpoint falls back to an older one
            log.warning("%s: unreadable checkpoint (%s); trying an older one", folder, err)
            continue
        state["path"] = folder
        return state
    return None


def job_fingerprint(job: Job, patches_manifest: dict[str, Any], init_weights: dict[str, torch.Tensor] | None) -> str:
    """Identity of a job's inputs: params, the shards' checksums and the initial weights."""
    digest = hashlib.sha256(
        json.dumps(
            [job.kind, job.branch, job.model.to_dict(), dataclasses.asdict(job.optim), job.san_lambda, job.seed],
            sort_keys=True,
        ).encode()
    )
    for shard in patches_manifest["shards"]:
        digest.update(str(shard["sha256"]).encode())
    for name in sorted(init_weights or {}):
        digest.update(name.encode() + init_weights[name].detach().cpu().contiguous().numpy().tobytes())  # type: ignore[index]
    return digest.hexdigest()


# -- the loop -----------------------------------------------------------------------------
def _dist_info() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA when present, else CPU; under DDP each rank takes its LOCAL_RANK GPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise TanetError(f"device {name} requested but CUDA is not available")
    if name == "cuda":
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device(name)


def load_init(model: nn.Module, init: dict[str, torch.Tensor]) -> None:
    """Loads a partial state dict (e.g. pretrained branches); a key the model lacks is an error."""
    unexpected = sorted(set(init) - set(model.state_dict()))
    if unexpected:
        raise TanetError(f"initial weights do not fit the model: unexpected keys {unexpected[:3]}")
    model.load_state_dict(init, strict=False)


def _close(it: Iterator[Any]) -> None:
    close = getattr(it, "close", None)
    if close is not None:
        close()


def run_job(
    job: Job,
    patches_dir: Path,
    val_clips: list[ValClip],
    out_dir: Path,
    ckpt_dir: Path,
    *,
    device: torch.device,
    init_weights: dict[str, torch.Tensor] | None = None,
    tracker: Tracker | None = None,
    meta: dict[str, Any] | None = None,
    stop_after: int | None = None,
    on_step: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Trains one job to ``job.optim.steps`` steps, resuming from ``ckpt_dir`` when possible.

    Args:
        job: what to train.
        patches_dir: the patches stage output.
        val_clips: validation clips (full frames; only rank 0 uses them).
        out_dir: where the final weights, ``model.json`` and ``history.json`` go (atomic).
        ckpt_dir: checkpoint folder (outside the stage's DVC outputs, so it survives a crash).
        device: training device.
        init_weights: state dict loaded into the model before training (joint: pretrained branches).
        tracker: MLflow run of this job (no-op if None).
        meta: extra fields for ``model.json`` (scale, degradation, params, licences...).
        stop_after: stop (without final outputs) after this many steps — for tests of resuming.
        on_step: called after every step (tests).

    Returns:
        The final metrics (``val_psnr``, ...) on rank 0; ``{}`` on other ranks.
    """
    tracker = tracker or Tracker()
    tracker.set_tags({f"tanet.{k}": v for k, v in (meta or {}).items() if k != "params" and v is not None})
    optim = job.optim
    rank, world = _dist_info()
    if optim.batch_size % world:
        raise TanetError(f"batch_size {optim.batch_size} is not divisible by the {world} DDP ranks")
    manifest = read_patch_manifest(patches_dir)
    fingerprint = job_fingerprint(job, manifest, init_weights)
    # What a checkpoint says about itself: enough to rebuild the model and know its schedule
    # without the pipeline's files (the scheduler and augmentation RNG are pure functions of
    # the step, so they have no state to store).
    ckpt_meta = {
        "fingerprint": fingerprint,
        "job": job.name,
        "model_config": job.model.to_dict(),
        "optim": dataclasses.asdict(optim),
        "san_lambda": job.san_lambda,
        "seed": job.seed,
        "params": (meta or {}).get("params"),
    }
    model = build_model(job).to(device)
    if init_weights is not None:
        load_init(model, init_weights)
    fields = (input_field(job), "hr") + (("theta",) if job.model.alignment == "san" and job.kind == "joint" else ())
    loader = PatchLoader(
        patches_dir,
        optim.batch_size // world,
        seed=_seed(job.seed, job.name, "data"),
        shuffle_groups=optim.shuffle_groups,
        consumer=rank,
        num_consumers=world,
        fields=fields,
        verify=rank == 0,
    )
    opt = make_optimizer(model, optim, device)
    start, history = 0, []
    state = load_checkpoint(ckpt_dir, fingerprint, world)
    if state is not None:
        model.load_state_dict(state["weights"])
        opt.load_state_dict(state["optimizer"])
        start, history = int(state["step"]), list(state["history"])
        loader.state = LoaderState(**state["loader"][rank])
        log.info("%s: resumed from %s (step %d)", job.name, state["path"], start)
    if tracker.enabled:
        tracker.log_params(
            {
                "job.name": job.name,
                "job.fingerprint": fingerprint,
                "job.world_size": world,
                "job.resumed_from_step": start,
            }
        )
    net: nn.Module = model
    if world > 1:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    net.train()
    batches = loader.prefetching(pin_memory=True) if device.type == "cuda" else iter(loader)
    busy, seen = 0.0, 0  # time in training steps (not validation or checkpoints) and patches since the last log
    try:
        for step in range(start, optim.steps):
            t0 = time.perf_counter()
            batch = next(batches)
            loss, parts = train_step(job, net, opt, batch, step, device, rank)
            seen += batch["hr"].shape[0] * world
            done = step + 1
            if done % optim.log_every == 0 or done == optim.steps:
                values = torch.stack([loss, *parts.values()]).float()
                if world > 1:  # the loss of the global batch, not of rank 0's share
                    dist.all_reduce(values)
                    values /= world
                values_list = values.tolist()  # waits for the device
                busy += time.perf_counter() - t0
                record = {
                    "step": done,
                    "loss": values_list[0],
                    **dict(zip(parts, values_list[1:])),
                    "lr": lr_at(step, optim),
                    "patches_per_s": seen / max(1e-9, busy),
                }
                history.append(record)
                tracker.log_metrics({k: v for k, v in record.items() if k != "step"}, done)
                if rank == 0:
                    log.info(
                        "%s step %d/%d loss %.5f lr %.2e %.0f patches/s",
                        job.name,
                        done,
                        optim.steps,
                        record["loss"],
                        record["lr"],
                        record["patches_per_s"],
                    )
                busy, seen = 0.0, 0
            else:
                busy += time.perf_counter() - t0
            if optim.val_every and done % optim.val_every == 0 and done < optim.steps and rank == 0:
                metrics = validate(job, model, val_clips, device)
                history.append({"step": done, **metrics})
                tracker.log_metrics(metrics, done)
            if done % optim.checkpoint_every == 0 or done == optim.steps:
                states = [loader.state] * world
                if world > 1:
                    dist.all_gather_object(states, loader.state)
                if rank == 0:
                    save_checkpoint(ckpt_dir, model, opt, done, states, history, ckpt_meta)
            if on_step is not None:
                on_step(done)
            if stop_after is not None and done >= stop_after:
                return {"stopped_at": done}
    finally:
        _close(batches)  # stops the prefetching thread
        loader.close()  # and the decoding threads
    metrics: dict[str, Any] = {}
    if rank == 0:
        metrics = validate(job, model, val_clips, device)
        history.append({"step": optim.steps, **metrics})
        tracker.log_metrics(metrics, optim.steps)
        write_model_dir(out_dir, model, job, {**(meta or {}), **metrics}, history)
        if tracker.enabled:
            tracker.log_artifact(out_dir, "model")
            latest = checkpoint_dirs(ckpt_dir)
            if latest:
                tracker.log_artifact(latest[0], "checkpoint")
            with tempfile.TemporaryDirectory(prefix="tanet-curves-") as tmp:
                if plot_curves(history, Path(tmp) / f"{job.name}_curves.png", title=job.name):
                    tracker.log_artifact(Path(tmp) / f"{job.name}_curves.png", "curves")
    if world > 1:
        dist.barrier()  # no rank moves on (e.g. to read the pretrained branches) before the outputs exist
    return metrics


# -- stages -------------------------------------------------------------------------------
@dataclass(frozen=True)
class DataDirs:
    """Inputs of the training stages."""

    clips: Path
    lr: Path
    flow: Path
    patches: Path


def plot_curves(history: list[dict[str, Any]], path: Path, title: str = "") -> bool:
    """Training curves as a PNG: loss (log scale) and learning rate over steps, validation
    Y-PSNR (and its bicubic reference) where measured.

    Returns:
        False when matplotlib is not installed (a bare GPU host) or there is nothing to plot.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    train = [r for r in history if "loss" in r]
    val = [r for r in history if "val_psnr" in r]
    if not train and not val:
        return False
    fig, (ax_loss, ax_val) = plt.subplots(1, 2, figsize=(10, 3.6))
    if train:
        steps = [r["step"] for r in train]
        ax_loss.semilogy(steps, [r["loss"] for r in train], color="tab:blue", label="loss")
        ax_loss.set_xlabel("step")
        ax_loss.set_ylabel("MSE loss")
        ax_lr = ax_loss.twinx()
        ax_lr.plot(steps, [r["lr"] for r in train], color="tab:grey", lw=0.8, label="learning rate")
        ax_lr.set_ylabel("learning rate")
    if val:
        ax_val.plot([r["step"] for r in val], [r["val_psnr"] for r in val], "o-", label="model")
        if "val_psnr_bicubic" in val[-1]:
            ax_val.axhline(val[-1]["val_psnr_bicubic"], color="tab:grey", ls="--", label="bicubic")
        ax_val.set_xlabel("step")
        ax_val.set_ylabel("validation Y-PSNR (dB)")
        ax_val.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def _meta(params: Params, patches_dir: Path) -> dict[str, Any]:
    manifest = read_patch_manifest(patches_dir)
    return {
        "scale": params.model.scale,
        "degradation": params.patches.degradation,
        "color": params.model.color,
        "alignment": params.model.alignment,
        "licences": manifest.get("licences", []),
        "patches_sha256": hashlib.sha256("".join(str(s["sha256"]) for s in manifest["shards"]).encode()).hexdigest(),  # type: ignore[union-attr]
        "patches_dvc_md5": dvc_out_hash(patches_dir),  # DVC's own hash of the shards, when run by DVC
        "params": params.to_dict(),
    }


def branch_job(params: Params, i: int) -> Job:
    """The pretraining job of branch ``i``."""
    return Job("branch", i, params.model, params.pretrain, 0.0, params.seed)


def joint_job(params: Params) -> Job:
    """The joint training job."""
    return Job("joint", 0, params.model, params.train, params.train.san_lambda, params.seed)


def pretrain_branch(
    params: Params,
    i: int,
    dirs: DataDirs,
    out_dir: Path,
    ckpt_root: Path,
    *,
    device: torch.device,
    tracker: Tracker | None = None,
    val_clips: list[ValClip] | None = None,
    **kw: Any,
) -> dict[str, Any]:
    """Pretrains branch ``i`` into ``out_dir/branch_<i>``; returns its validation metrics (rank 0)."""
    job = branch_job(params, i)
    clips = val_clips
    if clips is None:
        clips = (
            load_val_clips(params, dirs.clips, dirs.lr, dirs.flow, params.pretrain.val_frames)
            if _dist_info()[0] == 0
            else []
        )
    return run_job(
        job,
        dirs.patches,
        clips,
        out_dir / job.name,
        ckpt_root / job.name,
        device=device,
        init_weights=branch1_init(params, i, out_dir),
        tracker=tracker,
        meta={
            **_meta(params, dirs.patches),
            "init": "branch_1" if i > 1 and params.pretrain.init_from_branch1 else "scratch",
        },
        **kw,
    )


def inflate_branch1(weights: dict[str, torch.Tensor], num_frames: int, channels: int) -> dict[str, torch.Tensor]:
    """Branch 1's state dict grown into the initial weights of a branch on ``num_frames`` frames.

    The first convolution sees ``num_frames * channels`` input channels (early fusion,
    frame-major); its kernels for the centre frame are branch 1's and those for the
    neighbours are zero, so the grown branch computes exactly branch 1's output at step 0
    while the neighbours' kernels still receive gradients. Every other tensor is copied.

    Args:
        weights: a :class:`~tanet.modelio.BranchModel` state dict of branch 1.
        num_frames: frames of the new branch (2i-1).
        channels: colour channels per frame.

    Returns:
        The new branch's state dict (same keys).
    """
    centre = num_frames // 2
    out = {}
    for key, value in weights.items():
        if value.ndim == 4 and value.shape[1] == channels and key.endswith(("body.0.weight", "head.weight")):
            grown = value.new_zeros(value.shape[0], num_frames * channels, *value.shape[2:])
            grown[:, centre * channels : (centre + 1) * channels] = value
            out[key] = grown
        else:
            out[key] = value.clone()
    return out


def branch1_init(params: Params, i: int, pretrain_dir: Path) -> dict[str, torch.Tensor] | None:
    """Initial weights of branch ``i`` (``pretrain.init_from_branch1``): branch 1 grown, or None."""
    if i == 1 or not params.pretrain.init_from_branch1:
        return None
    path = pretrain_dir / "branch_1" / CKPT_WEIGHTS
    if not path.is_file():
        raise TanetError(
            f"{path}: branch {i} starts from branch 1 (pretrain.init_from_branch1); pretrain branch 1 first"
        )
    return inflate_branch1(load_file(str(path)), 2 * i - 1, params.model.channels)


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
    rank0 = _dist_info()[0] == 0
    clips = load_val_clips(params, dirs.clips, dirs.lr, dirs.flow, params.train.val_frames) if rank0 else []
    init = pretrained_init(params, pretrain_dir) if params.train.init_from_pretrain and pretrain_dir else None
    bicubic = bicubic_psnr(clips, params.model.scale) if rank0 else float("nan")
    meta = {**_meta(params, dirs.patches), "val_psnr_bicubic": bicubic}
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


# -- command line (a plain module: runs where only torch & co. are installed) -------------
def _setup_distributed(device_name: str) -> torch.device:
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        device = resolve_device(device_name)
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        return device
    return resolve_device(device_name)


def main(argv: list[str] | None = None) -> int:
    """``python -m tanet.train {pretrain,train,all} ...`` (see ``--help``)."""
    ap = argparse.ArgumentParser(prog="python -m tanet.train", description=__doc__.split("\n\n")[0])
    ap.add_argument("stage", choices=["pretrain", "train", "all"], help="which part of the schedule to run")
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    ap.add_argument("--clips", type=Path, default=Path("data/clips"))
    ap.add_argument("--lr-dir", type=Path, default=Path("data/lr"))
    ap.add_argument("--flow", type=Path, default=Path("data/flow"))
    ap.add_argument("--patches", type=Path, default=Path("data/patches"))
    ap.add_argument("--pretrain-out", type=Path, default=Path("data/models/pretrain"))
    ap.add_argument("--train-out", type=Path, default=Path("data/models/tanet"))
    ap.add_argument("--checkpoints", type=Path, default=Path(".tanet/checkpoints"))
    ap.add_argument("--branch", type=int, default=0, help="pretrain only this branch (1..N); 0 = all")
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda")
    ap.add_argument(
        "--tracking",
        choices=["auto", "mlflow", "none"],
        default="none",
        help="MLflow logging (import the run later with `tanet import-run` when none)",
    )
    ap.add_argument("--stop-after", type=int, default=None, help="stop after N steps (testing resumption)")
    args = ap.parse_args(argv)
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(
        level=logging.INFO if rank == 0 else logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    params = load_params(args.params)
    if args.branch and not 1 <= args.branch <= params.model.num_branches:
        ap.error(f"--branch must be in 1..{params.model.num_branches}")
    device = _setup_distributed(args.device)
    dirs = DataDirs(args.clips, args.lr_dir, args.flow, args.patches)
    from tanet.tracking import child_run, stage_run

    rank, _ = _dist_info()
    use_mlflow = rank == 0 and (args.tracking == "mlflow" or (args.tracking == "auto" and _has_mlflow()))
    results: dict[str, Any] = {}
    try:
        # Both stages of `all` nest under one parent run (tanet.tracking reuses it per process).
        if args.stage in ("pretrain", "all"):
            branches = [args.branch] if args.branch else list(range(1, params.model.num_branches + 1))
            with stage_run("pretrain", params.to_dict(), experiment=params.mlflow.experiment, enabled=use_mlflow) as tr:
                for i in branches:
                    branch_tr = child_run(tr, f"branch_{i}", {"tanet.stage": "pretrain", "tanet.branch": i})
                    try:
                        results[f"branch_{i}"] = pretrain_branch(
                            params,
                            i,
                            dirs,
                            args.pretrain_out,
                            args.checkpoints / "pretrain",
                            device=device,
                            tracker=branch_tr,
                            stop_after=args.stop_after,
                        )
                    except BaseException:
                        branch_tr.finish("FAILED")
                        raise
                    branch_tr.finish()
        if args.stage in ("train", "all"):
            with stage_run("train", params.to_dict(), experiment=params.mlflow.experiment, enabled=use_mlflow) as tr:
                results["joint"] = train_joint(
                    params,
                    dirs,
                    args.pretrain_out,
                    args.train_out,
                    args.checkpoints / "train",
                    device=device,
                    tracker=tr,
                    stop_after=args.stop_after,
                )
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    if rank == 0:
        print(json.dumps(results, indent=2))
    return 0


def _has_mlflow() -> bool:
    import importlib.util

    return importlib.util.find_spec("mlflow") is not None


def _cli() -> int:
    """``python -m tanet.train``: user errors (bad params, missing data) as one line, exit 2."""
    try:
        return main()
    except TanetError as err:
        print(f"tanet.train: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(_cli())
