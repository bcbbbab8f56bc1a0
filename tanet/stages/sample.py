"""Stage ``sample``: a few seconds of the embedded clip degraded to LR and upscaled by the registered version."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from tanet.config import SampleParams
from tanet.data.sources import embedded_clip_path
from tanet.infer.pipeline import upscale_video
from tanet.io.atomic import atomic_dir
from tanet.io.video import open_video

if TYPE_CHECKING:
    from tanet.ops.degrade import DegradationKind
from tanet.io.writer import VideoWriter


def make_lr_sample(source: Path, out_path: Path, scale: int, seconds: float, kind: DegradationKind = "BI") -> int:
    """Cuts the first ``seconds`` of a video, degrades it by ``scale`` and writes it with its audio.

    Returns:
        The number of frames written.
    """
    from tanet.ops.degrade import Degradation, apply_degradation, mod_crop

    deg = Degradation(kind, scale)
    with open_video(source) as reader:
        info = reader.info
        n = max(1, round(seconds * float(info.fps)))
        h, w = (info.height // scale), (info.width // scale)
        with VideoWriter(
            out_path,
            w,
            h,
            info.fps,
            audio_from=source if info.has_audio else None,
            crf=12,
            overwrite=True,
            audio_duration=n / float(info.fps),
        ) as writer:
            for i, frame in enumerate(reader):
                if i >= n:
                    break
                hr = mod_crop(torch.from_numpy(frame).permute(2, 0, 1), scale)
                writer.write(np.ascontiguousarray(apply_degradation(hr, deg).permute(1, 2, 0).numpy()))
    return n


PARAMS = {"sample": "sample", "scale": "model.scale", "degradation": "patches.degradation"}


def run_sample(
    sample: SampleParams, *, scale: int, degradation: DegradationKind, registration: Path, out: Path, root: Path
) -> dict[str, Any]:
    """Cuts ``sample.seconds`` of ``sample.clip``, degrades it to LR, upscales it with the registered version.

    Args:
        sample: the ``sample`` section.
        scale: ``model.scale``, the factor the registered model upscales by.
        degradation: ``patches.degradation``, the LR operator it was trained for.
        registration: the register stage's record (``metrics/register.json``).
        out: this stage's output folder (replaced whole on success).
        root: repo root (embedded tracking store).

    Returns:
        The upscaling report.
    """
    sp = sample
    record = json.loads(registration.read_text())
    with atomic_dir(out) as tmp:
        lr_clip = tmp / "input_lr.mp4"
        make_lr_sample(embedded_clip_path(sp.clip), lr_clip, scale, sp.seconds, degradation)
        report = upscale_video(
            lr_clip,
            tmp / "upscaled.mp4",
            str(record["model_uri"]),
            crf=sp.crf,
            preset=sp.preset,
            progress=False,
            root=root,
            overwrite=True,
        )
    return dict(report.__dict__)
