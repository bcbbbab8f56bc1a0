"""Validation during training: Y-PSNR of whole validation frames, and bicubic's on the same frames."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from tanet.data.valset import ValClip, window
from tanet.ops.degrade import imresize
from tanet.ops.metrics import psnr
from tanet.train.job import Job, autocast, input_field


# -- validation ---------------------------------------------------------------------------
def _predict_full(job: Job, model: nn.Module, clip: ValClip, t: int, device: torch.device) -> torch.Tensor:
    """Full-frame prediction of frame ``t`` as Y in [0, 255] (float64, rounded)."""
    cfg = job.model
    win = window(clip, t, cfg.num_frames, aligned=input_field(job) == "rof")
    x = torch.from_numpy(win).to(device).float().div_(255)[None]  # (1, T, C, h, w)
    with autocast(device, job.optim.precision):
        sr = model(x) if job.kind == "branch" else model(x, full_frame=True)
    y = sr.float().clamp(0, 1)[0]
    if cfg.channels == 3:
        from tanet.ops.color import rgb_to_ycbcr

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
                from tanet.ops.color import rgb_to_ycbcr

                lr = rgb_to_ycbcr(lr / 255)[:1] * 255
            up = imresize(lr, scale=scale).clamp(0, 255)
            per.append(psnr(torch.floor(up[0] + 0.5), torch.from_numpy(gt).double()))
        values.append(float(np.mean(per)))
    return float(np.mean(values))
