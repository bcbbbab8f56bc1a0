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

The loop is flat: a pure learning-rate schedule (:func:`learning_rate_at`), a stateless per-step
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

import dataclasses
import hashlib
import logging
import math
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from tanet.config import OptimParams, TrainParams
from tanet.data.loader import LoaderState, PatchLoader
from tanet.data.valset import ValClip
from tanet.errors import TanetError
from tanet.io.model_files import write_model_dir
from tanet.io.shards import read_patch_manifest
from tanet.models.vsr import ModelConfig, VSRNet
from tanet.ops.degrade import DegradationKind
from tanet.track.tracking import Tracker, dvc_out_hash
from tanet.train.augment import augment
from tanet.train.checkpoint import checkpoint_dirs, job_fingerprint, load_checkpoint, save_checkpoint
from tanet.train.curves import plot_curves
from tanet.train.distributed import dist_info
from tanet.train.job import Job, autocast, build_model, input_field, job_seed
from tanet.train.validate import validate

log = logging.getLogger(__name__)


def learning_rate_at(step: int, optim: OptimParams) -> float:
    """Learning rate at ``step`` (0-based): linear warm-up, then cosine to ``lr_min`` or constant.

    Warm-up reaches ``lr`` at step ``warmup_steps - 1``; the cosine runs from ``lr`` at
    ``warmup_steps`` to ``lr_min`` at ``steps``.

    >>> learning_rate_at(0, OptimParams(lr=1e-3, warmup_steps=4))
    0.00025
    """
    if step < optim.warmup_steps:
        return optim.lr * (step + 1) / optim.warmup_steps
    if optim.schedule == "constant":
        return optim.lr
    span = max(1, optim.steps - optim.warmup_steps)
    progress = min(1.0, (step - optim.warmup_steps) / span)
    return optim.lr_min + 0.5 * (optim.lr - optim.lr_min) * (1 + math.cos(math.pi * progress))


# -- augmentation -------------------------------------------------------------------------


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
    with autocast(device, job.optim.precision):
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


def make_optimizer(
    model: nn.Module, optim: OptimParams, device: torch.device, modulation_lr_scale: float = 1.0
) -> torch.optim.Optimizer:
    """AdamW: fused kernels on CUDA, multi-tensor (``foreach``) on CPU.

    Args:
        model: the network to optimise.
        optim: the stage's optimisation settings.
        device: where the model lives.
        modulation_lr_scale: ``train.modulation_lr_scale``; other than 1, the joint network's
            modulation branch gets a parameter group of its own whose ``lr_scale`` multiplies
            the scheduled rate (one group otherwise, so older checkpoints still load).
    """
    fast: dict[str, Any] = {"fused": True} if device.type == "cuda" else {"foreach": True}
    if modulation_lr_scale == 1.0:
        groups: list[dict[str, Any]] = [{"params": list(model.parameters()), "lr_scale": 1.0}]
    elif not isinstance(model, VSRNet):
        raise TanetError("train.modulation_lr_scale applies to the joint network only")
    else:
        modulation = list(model.tanet.modulation.parameters())
        own = {id(p) for p in modulation}
        groups = [
            {"params": [p for p in model.parameters() if id(p) not in own], "lr_scale": 1.0},
            {"params": modulation, "lr_scale": modulation_lr_scale},
        ]
    return torch.optim.AdamW(groups, lr=optim.lr, weight_decay=optim.weight_decay, **fast)


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
    batch = augment(batch, torch.Generator().manual_seed(job_seed(job.seed, job.name, "aug", step, rank)))
    lr = learning_rate_at(step, job.optim)
    for group in opt.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
    loss, parts = compute_loss(job, net, batch, device)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if job.optim.grad_clip > 0:
        nn.utils.clip_grad_norm_(net.parameters(), job.optim.grad_clip)
    opt.step()
    return loss.detach(), parts


def load_init(model: nn.Module, init: dict[str, torch.Tensor]) -> None:
    """Loads a partial state dict (e.g. pretrained branches); a key the model lacks is an error."""
    unexpected = sorted(set(init) - set(model.state_dict()))
    if unexpected:
        raise TanetError(f"initial weights do not fit the model: unexpected keys {unexpected[:3]}")
    model.load_state_dict(init, strict=False)


def set_mixing(
    model: nn.Module, mixing: str, modulation_start: str, init_weights: dict[str, torch.Tensor] | None
) -> None:
    """Applies ``train.mixing`` and ``train.modulation_start`` to a freshly built joint network.

    Args:
        model: the joint network, initial weights loaded.
        mixing: ``uniform`` freezes the modulation at W_i = 1/N; ``adaptive`` trains it.
        modulation_start: ``uniform`` zeroes the modulation's output layer (W_i = 1/N at
            step 0, still trained) unless ``init_weights`` bring a modulation branch of their
            own (a shipped model's); ``random`` keeps PyTorch's init.
        init_weights: the state dict loaded before training, if any.
    """
    if not isinstance(model, VSRNet):
        raise TanetError("train.mixing applies to the joint network only")
    modulation = model.tanet.modulation
    if mixing == "uniform":
        modulation.fix_uniform()
    elif modulation_start == "uniform" and not any(".modulation." in k for k in init_weights or {}):
        modulation.start_uniform()


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
    deadline: float | None = None,
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
        deadline: a :func:`time.monotonic` time; the first step that ends past it is
            checkpointed and the job stops there without final outputs (a time-boxed run on
            a borrowed machine resumes from it on the next). Every DDP rank stops at the
            same step.
        on_step: called after every step (tests).

    Returns:
        The final metrics (``val_psnr``, ...) on rank 0; ``{}`` on other ranks.
    """
    # Long on purpose: loader position, optimiser, history and checkpoint cadence live in one frame;
    # their order is what makes a resumed run bit-identical to an uninterrupted one
    # (tests/test_train.py).
    tracker = tracker or Tracker()
    untagged = {"params", "training_run"}  # the flattened params are logged as params; the run is this one
    tracker.set_tags({f"tanet.{k}": v for k, v in (meta or {}).items() if k not in untagged and v is not None})
    optim = job.optim
    rank, world = dist_info()
    if optim.batch_size % world:
        raise TanetError(f"batch_size {optim.batch_size} is not divisible by the {world} DDP ranks")
    manifest = read_patch_manifest(patches_dir)
    fingerprint = job_fingerprint(job, manifest, init_weights)
    ckpt_meta = _checkpoint_meta(job, fingerprint, meta)
    model = build_model(job).to(device)
    if init_weights is not None:
        load_init(model, init_weights)
    if isinstance(optim, TrainParams):
        set_mixing(model, optim.mixing, optim.modulation_start, init_weights)
    loader = _loader(job, patches_dir, rank, world)
    opt = make_optimizer(model, optim, device, optim.modulation_lr_scale if isinstance(optim, TrainParams) else 1.0)
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
    batches = _batches(loader, device)

    def checkpoint(done: int) -> None:
        """Every rank's loader position gathered; rank 0 writes the checkpoint of step ``done``."""
        states = [loader.state] * world
        if world > 1:
            dist.all_gather_object(states, loader.state)
        if rank == 0:
            save_checkpoint(ckpt_dir, model, opt, done, states, history, ckpt_meta)

    busy, seen = 0.0, 0  # time in training steps (not validation or checkpoints) and patches since the last log
    try:
        for step in range(start, optim.steps):
            t0 = time.perf_counter()
            batch = next(batches)
            loss, parts = train_step(job, net, opt, batch, step, device, rank)
            seen += batch["hr"].shape[0] * world
            done = step + 1
            if done % optim.log_every == 0 or done == optim.steps:
                record = _log_record(job, done, loss, parts, seen, busy, t0, world)
                history.append(record)
                tracker.log_metrics({k: v for k, v in record.items() if k != "step"}, done)
                busy, seen = 0.0, 0
            else:
                busy += time.perf_counter() - t0
            if optim.val_every and done % optim.val_every == 0 and done < optim.steps and rank == 0:
                metrics = validate(job, model, val_clips, device)
                history.append({"step": done, **metrics})
                tracker.log_metrics(metrics, done)
            if done % optim.checkpoint_every == 0 or done == optim.steps:
                checkpoint(done)
            if on_step is not None:
                on_step(done)
            if stop_after is not None and done >= stop_after:
                return {"stopped_at": done}
            if deadline is not None and done < optim.steps and _past(deadline, device, world):
                if done % optim.checkpoint_every:
                    checkpoint(done)
                log.info("%s: time limit reached at step %d of %d; checkpointed", job.name, done, optim.steps)
                return {"stopped_at": done}
    finally:
        _close(batches)  # stops the prefetching thread
        loader.close()  # and the decoding threads
    metrics = _finish(job, model, val_clips, device, history, out_dir, ckpt_dir, meta, tracker) if rank == 0 else {}
    if world > 1:
        dist.barrier()  # no rank moves on (e.g. to read the pretrained branches) before the outputs exist
    return metrics


def _past(deadline: float, device: torch.device, world: int) -> bool:
    """Whether ``deadline`` has passed; under DDP rank 0's clock decides for every rank."""
    if world == 1:
        return time.monotonic() >= deadline
    flag = torch.tensor([float(time.monotonic() >= deadline)], device=device)
    dist.broadcast(flag, src=0)
    return bool(flag.item())


def _checkpoint_meta(job: Job, fingerprint: str, meta: dict[str, Any] | None) -> dict[str, Any]:
    """What a checkpoint says about itself: enough to rebuild the model and know its schedule
    without the pipeline's files (the scheduler and augmentation RNG are pure functions of the
    step, so they have no state to store)."""
    return {
        "fingerprint": fingerprint,
        "job": job.name,
        "model_config": job.model.to_dict(),
        "optim": dataclasses.asdict(job.optim),
        "san_lambda": job.san_lambda,
        "seed": job.seed,
        "params": (meta or {}).get("params"),
    }


def _loader(job: Job, patches_dir: Path, rank: int, world: int) -> PatchLoader:
    """This rank's share of the shards, in the job's seeded order, with the fields its loss needs."""
    fields = (input_field(job), "hr") + (("theta",) if job.model.alignment == "san" and job.kind == "joint" else ())
    return PatchLoader(
        patches_dir,
        job.optim.batch_size // world,
        seed=job_seed(job.seed, job.name, "data"),
        shuffle_groups=job.optim.shuffle_groups,
        consumer=rank,
        num_consumers=world,
        fields=fields,
        verify=rank == 0,
    )


RESIDENT_SHARE = 0.25  # of the GPU's memory the whole decoded dataset may take to be held there


def _batches(loader: PatchLoader, device: torch.device) -> Iterator[dict[str, torch.Tensor]]:
    """The loader's batches: on a GPU from a copy of all the data held there when it fits in
    :data:`RESIDENT_SHARE` of its memory (a step on TANet-S outruns decoding the shards),
    else streamed with prefetching; on the CPU streamed."""
    if device.type != "cuda":
        return iter(loader)
    need, total = loader.decoded_bytes(), torch.cuda.get_device_properties(device).total_memory
    if need <= RESIDENT_SHARE * total:
        log.info("patches held on %s: %.2f GiB of %.0f", device, need / 2**30, total / 2**30)
        return loader.resident(device)
    log.info("patches streamed: %.2f GiB decoded exceeds %.0f %% of %s", need / 2**30, 100 * RESIDENT_SHARE, device)
    return loader.prefetching(pin_memory=True)


def _log_record(
    job: Job,
    done: int,
    loss: torch.Tensor,
    parts: dict[str, torch.Tensor],
    seen: int,
    busy: float,
    t0: float,
    world: int,
) -> dict[str, Any]:
    """The history record of step ``done`` (the global batch's loss under DDP), logged on rank 0.

    ``seen`` patches went through in ``busy`` seconds of earlier steps plus this one, begun at
    ``t0`` and timed up to the device's answer.
    """
    values = torch.stack([loss, *parts.values()]).float()
    if world > 1:  # the loss of the global batch, not of rank 0's share
        dist.all_reduce(values)
        values /= world
    values_list = values.tolist()  # waits for the device
    rate = seen / max(1e-9, busy + time.perf_counter() - t0)
    record = {
        "step": done,
        "loss": values_list[0],
        **dict(zip(parts, values_list[1:])),
        "lr": learning_rate_at(done - 1, job.optim),
        "patches_per_s": rate,
    }
    if dist_info()[0] == 0:
        log.info(
            "%s step %d/%d loss %.5f lr %.2e %.0f patches/s",
            job.name,
            done,
            job.optim.steps,
            record["loss"],
            record["lr"],
            record["patches_per_s"],
        )
    return record


def _finish(
    job: Job,
    model: nn.Module,
    val_clips: list[ValClip],
    device: torch.device,
    history: list[dict[str, Any]],
    out_dir: Path,
    ckpt_dir: Path,
    meta: dict[str, Any] | None,
    tracker: Tracker,
) -> dict[str, Any]:
    """Rank 0 after the last step: final validation, the model folder, and its artifacts in the run."""
    metrics = validate(job, model, val_clips, device)
    history.append({"step": job.optim.steps, **metrics})
    tracker.log_metrics(metrics, job.optim.steps)
    write_model_dir(out_dir, model, job, {**(meta or {}), **metrics}, history)
    if tracker.enabled:
        tracker.log_artifact(out_dir, "model")
        latest = checkpoint_dirs(ckpt_dir)
        if latest:
            tracker.log_artifact(latest[0], "checkpoint")
        with tempfile.TemporaryDirectory(prefix="tanet-curves-") as tmp:
            if plot_curves(history, Path(tmp) / f"{job.name}_curves.png", title=job.name):
                tracker.log_artifact(Path(tmp) / f"{job.name}_curves.png", "curves")
    return metrics


def model_meta(
    model: ModelConfig, degradation: DegradationKind, record: dict[str, Any], patches_dir: Path
) -> dict[str, Any]:
    """``model.json``'s description of a trained model: its network, data and params.

    Args:
        model: the network.
        degradation: the LR operator of its training data.
        record: the whole params (recorded, not read).
        patches_dir: the patches stage's output (licences, hashes).
    """
    manifest = read_patch_manifest(patches_dir)
    return {
        "scale": model.scale,
        "degradation": degradation,
        "color": model.color,
        "alignment": model.alignment,
        "licences": manifest.get("licences", []),
        "patches_sha256": hashlib.sha256("".join(str(s["sha256"]) for s in manifest["shards"]).encode()).hexdigest(),
        "patches_dvc_md5": dvc_out_hash(patches_dir),  # DVC's own hash of the shards, when run by DVC
        "params": record,
    }
