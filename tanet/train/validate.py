"""Validation during training: Y-PSNR of whole validation frames, and bicubic's on the same frames."""

from __future__ import annotations

from typing import cast

import numpy as np
import torch
from torch import nn

from tanet.data.valset import ValClip, window
from tanet.models.vsr import VSRNet, VSROutput
from tanet.ops.degrade import imresize
from tanet.ops.metrics import psnr
from tanet.train.job import Job, autocast, input_field


# -- validation ---------------------------------------------------------------------------
def _input(job: Job, clip: ValClip, t: int, device: torch.device) -> torch.Tensor:
    """The network's ``(1, T, C, h, w)`` input window for frame ``t``, in [0, 1]."""
    win = window(clip, t, job.model.num_frames, aligned=input_field(job) == "rof")
    return torch.from_numpy(win).to(device).float().div_(255)[None]


def _y255(sr: torch.Tensor) -> torch.Tensor:
    """``(C, H, W)`` network output in [0, 1] as Y in [0, 255] (float64, rounded, on the CPU)."""
    y = sr.float().clamp(0, 1)
    if y.shape[0] == 3:
        from tanet.ops.color import rgb_to_ycbcr

        y = rgb_to_ycbcr(y.double())[:1]
    return torch.floor(y[0].double() * 255 + 0.5).cpu()


def _predict_full(job: Job, model: nn.Module, clip: ValClip, t: int, device: torch.device) -> torch.Tensor:
    """Full-frame prediction of frame ``t`` as Y in [0, 255] (float64, rounded)."""
    x = _input(job, clip, t, device)
    with autocast(device, job.optim.precision):
        sr = model(x) if job.kind == "branch" else model(x, full_frame=True)
    return _y255(sr[0])


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


@torch.no_grad()
def mixing_figures(job: Job, model: VSRNet, clips: list[ValClip], device: torch.device) -> dict[str, float]:
    """What the temporal modulation does, on the validation frames (Sec. 3.2's aggregation).

    Y-PSNR (dB; mean over each clip's frames, then over clips, as :func:`validate`) of the
    learned per-pixel mixture Sum_i W_i * F_Bi (``mixed``), of the uniform mean of the same
    branch outputs (``uniform``: what the learned weights add over 1/N), of each branch's
    output inside the joint network (``branch_<i>``: how far the branches specialised), and
    of the oracle that takes, per pixel, the branch closest to the ground truth (``oracle``:
    a bound on per-pixel selection among these branches); ``weight_std`` is the per-pixel
    standard deviation of W over the N branches (0 for uniform mixing) and ``weight_max``
    the mean of each pixel's largest weight (1/N for uniform mixing), both averaged over
    pixels and frames.
    """
    was_training = model.training
    model.eval()
    per_clip: list[dict[str, float]] = []
    for clip in clips:
        rows: list[dict[str, float]] = []
        for t, gt in zip(clip.frames, clip.hr_y):
            with autocast(device, job.optim.precision):
                out = cast(VSROutput, model(_input(job, clip, t, device), return_all=True, full_frame=True))
            truth = torch.from_numpy(gt).double()
            branches = torch.stack([_y255(b) for b in out.branches[0]])  # (N, H, W)
            err = (branches - truth).abs()
            oracle = branches.gather(0, err.argmin(0, keepdim=True))[0]
            weights = out.weights[0, :, 0].float()  # (N, rH, rW)
            row: dict[str, float] = {
                "mixed": float(psnr(_y255(out.sr[0]), truth)),
                "uniform": float(psnr(_y255(out.branches[0].float().mean(0)), truth)),
                **{f"branch_{i + 1}": float(psnr(b, truth)) for i, b in enumerate(branches)},
                "oracle": float(psnr(oracle, truth)),
                "weight_std": float(weights.std(0, unbiased=False).mean()),
                "weight_max": float(weights.max(0).values.mean()),
            }
            rows.append(row)
        per_clip.append({k: float(np.mean([r[k] for r in rows])) for k in rows[0]})
    model.train(was_training)
    return {k: float(np.mean([c[k] for c in per_clip])) for k in per_clip[0]}


def bicubic_psnr(clips: list[ValClip], scale: int) -> float:
    """Y-PSNR of MATLAB-bicubic upscaling of the LR Y frames, on the validation frames."""
    values = []
    for clip in clips:
        per = []
        for t, gt in zip(clip.frames, clip.hr_y):
            lr = torch.from_numpy(clip.lr[t]).double()
            if lr.shape[0] == 3:
                from tanet.ops.color import rgb_to_ycbcr

                lr = rgb_to_ycbcr(lr / 255)[:1] * 255
            up = imresize(lr, scale=scale).clamp(0, 255)
            per.append(psnr(torch.floor(up[0] + 0.5), torch.from_numpy(gt).double()))
        values.append(float(np.mean(per)))
    return float(np.mean(values))
