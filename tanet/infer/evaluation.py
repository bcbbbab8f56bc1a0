"""Stage ``evaluate``: the field's numbers for a trained model, its branches and bicubic.

Datasets (names carry degradation and scale, e.g. ``vid4_BIx4``, so scores are only ever
compared like with like):

- ``vid4_<D>x<r>``: Vid4 (calendar, city, foliage, walk) ground truth from
  ``evaluate.vid4_dir``, LR made with our own degradation D (the model's) at scale r;
- ``vid4ref_<D>x<r>``: calendar from the reference LR frames shipped beside the GT
  (``BIx4``/``BDx4``), when present;
- ``heldout_<D>x<r>``: the held-out validation clips of the manifest (the default clip of
  a fresh machine), LR from the degrade stage.

Methods: ``bicubic`` (MATLAB kernel), ``tanet`` (the trained network and alignment),
``tanet_branch_<i>`` (branch i's output inside the joint network), ``branch_<i>`` (the
standalone pretrained branch, loss 1), and ``tanet_align_<mode>`` (the same joint weights
with another alignment at inference, for each mode the weights allow).

Conventions (``tanet.ops.metrics``): Y-PSNR/SSIM from the uint8 RGB output, every frame
counted, border crop ``evaluate.crop`` (0 by default), mean over frames of a clip then over
clips. ``tof`` (temporal flicker, lower is better) for ``bicubic`` and ``tanet``.

Outputs: ``eval.json`` ``{dataset: {method: {psnr, ssim[, tof]}}}``, per-frame CSV, per-frame
PSNR plots, bicubic | tanet | GT crops and temporal weight maps coloured by branch (PNG,
so they display offline).
"""

from __future__ import annotations

import io
import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tanet.errors import InputError
from tanet.infer.upscaler import StandaloneBranch, Upscaler, edge_window, weight_map_image
from tanet.io.atomic import atomic_write_bytes
from tanet.io.clips import lr_set_name, read_manifest
from tanet.io.frames import list_frames, read_rgb
from tanet.io.model_files import load_model_dir
from tanet.io.video import lanczos_upscale
from tanet.models.vsr import Alignment, VSRNet
from tanet.ops.color import to_tensor
from tanet.ops.degrade import Degradation, DegradationKind, apply_degradation, imresize, mod_crop
from tanet.ops.metrics import clip_motion, temporal_flicker, y_psnr_ssim
from tanet.ops.optical_flow import DisPreset, FlowMethod

log = logging.getLogger(__name__)

VID4_CLIPS = ("calendar", "city", "foliage", "walk")


@dataclass(frozen=True)
class EvalClip:
    """A clip to evaluate: LR frames in, GT HR frames to compare with (RGB uint8)."""

    dataset: str
    clip_id: str
    lr: list[np.ndarray]  # (h, w, 3)
    gt: list[np.ndarray]  # (r h, r w, 3)


def _tensor(img: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)


def _numpy(chw: torch.Tensor) -> np.ndarray:
    return chw.permute(1, 2, 0).contiguous().numpy()


def vid4_clips(vid4_dir: Path, deg: Degradation, max_frames: int) -> Iterator[EvalClip]:
    """Vid4 clips with LR made by our degradation (GT mod-cropped to the scale)."""
    for name in VID4_CLIPS:
        files = list_frames(vid4_dir / "GT" / name)[: max_frames or None]
        gt = [_numpy(mod_crop(_tensor(read_rgb(f)), deg.scale)) for f in files]
        lr = [_numpy(apply_degradation(_tensor(g), deg)) for g in gt]
        yield EvalClip(f"vid4_{deg.kind}x{deg.scale}", name, lr, gt)


def vid4_reference_clips(vid4_dir: Path, deg: Degradation, max_frames: int) -> Iterator[EvalClip]:
    """Clips whose reference LR frames ship with the data (calendar, BIx4/BDx4)."""
    ref_root = vid4_dir / f"{deg.kind}x{deg.scale}"
    if not ref_root.is_dir():
        return
    for clip_dir in sorted(p for p in ref_root.iterdir() if p.is_dir()):
        lr_files = list_frames(clip_dir)[: max_frames or None]
        gt_files = list_frames(vid4_dir / "GT" / clip_dir.name)[: len(lr_files)]
        gt = [_numpy(mod_crop(_tensor(read_rgb(f)), deg.scale)) for f in gt_files]
        yield EvalClip(f"vid4ref_{deg.kind}x{deg.scale}", clip_dir.name, [read_rgb(f) for f in lr_files], gt)


def heldout_clips(
    clips_dir: Path, lr_dir: Path, scale: int, kind: DegradationKind, max_frames: int
) -> Iterator[EvalClip]:
    """The manifest's validation clips (LR from the degrade stage's ``x<scale>_<kind>`` set)."""
    r = scale
    for rec in read_manifest(clips_dir):
        if rec.split != "val":
            continue
        lr_files = list_frames(lr_dir / lr_set_name(r, kind) / rec.clip_id)[: max_frames or None]
        lr = [read_rgb(f) for f in lr_files]
        hr_files = list_frames(clips_dir / rec.clip_id)[: len(lr)]
        gt = [read_rgb(f)[: r * x.shape[0], : r * x.shape[1]] for f, x in zip(hr_files, lr)]
        yield EvalClip(f"heldout_{kind}x{r}", rec.clip_id, lr, gt)


def bicubic_frames(clip: EvalClip, scale: int) -> list[np.ndarray]:
    """MATLAB-bicubic upscaling of each LR frame (RGB, rounded to uint8)."""
    out = []
    for lr in clip.lr:
        up = imresize(_tensor(lr).double(), scale=scale)
        out.append(_numpy(torch.floor(up.clamp(0, 255) + 0.5).to(torch.uint8)))
    return out


def with_alignment(model: VSRNet, mode: Alignment) -> VSRNet:
    """The same joint weights behind another alignment mode (SAN weights dropped if unused)."""
    net = VSRNet(replace(model.cfg, alignment=mode))
    state = {k: v for k, v in model.state_dict().items() if mode == "san" or not k.startswith("san.")}
    net.load_state_dict(state)
    return net.eval()


def run_methods(
    clip: EvalClip,
    joint: VSRNet,
    branches: list[torch.nn.Module],
    *,
    device: torch.device,
    tile: int,
    flow_method: FlowMethod,
    flow_preset: DisPreset = "medium",
) -> tuple[dict[str, list[np.ndarray]], np.ndarray | None]:
    """Every method's HR frames for a clip, and the joint network's weights at the middle frame."""
    cfg = joint.cfg
    outputs: dict[str, list[np.ndarray]] = {
        "bicubic": bicubic_frames(clip, cfg.scale),
        "lanczos": lanczos_upscale(clip.lr, cfg.scale),  # ffmpeg's scaler: what video engineers use today
    }
    up = Upscaler(joint, device=device, tile=tile, flow_method=flow_method, flow_preset=flow_preset)
    prepared = [up.prepare(f) for f in clip.lr]
    half, mid = cfg.num_frames // 2, len(clip.lr) // 2
    mid_weights = None
    names = ["tanet"] + [f"tanet_branch_{i}" for i in range(1, cfg.num_branches + 1)]
    for name in names:
        outputs[name] = []
    for t in range(len(clip.lr)):
        win = edge_window(prepared[max(0, t - half) : t], prepared[t : t + half + 1], half)
        out = up.network(up._network_input(win), want_all=True)
        outputs["tanet"].append(up.to_rgb(out["sr"], prepared[t]))
        for i in range(cfg.num_branches):
            outputs[f"tanet_branch_{i + 1}"].append(up.to_rgb(out["branches"][i], prepared[t]))
        if t == mid:
            mid_weights = out["weights"].cpu().numpy()
    others: list[Alignment] = [m for m in ("none", "rof") if m != cfg.alignment]
    for mode in others:
        outputs[f"tanet_align_{mode}"] = [
            r.rgb
            for r in Upscaler(
                with_alignment(joint, mode), device=device, tile=tile, flow_method=flow_method, flow_preset=flow_preset
            ).upscale_frames(clip.lr)
        ]
    for i, branch in enumerate(branches, start=1):
        outputs[f"branch_{i}"] = [
            r.rgb
            for r in Upscaler(
                StandaloneBranch(branch), device=device, tile=tile, flow_method=flow_method, flow_preset=flow_preset
            ).upscale_frames(clip.lr)
        ]
    return outputs, mid_weights


def score(
    outputs: dict[str, list[np.ndarray]], gt: list[np.ndarray], crop: int, flicker: bool
) -> tuple[dict[str, dict[str, float]], list[dict[str, Any]]]:
    """Per-method clip means and per-frame rows."""
    gt_t = [_tensor(g) for g in gt]
    gt_clip = torch.stack(gt_t)
    gt_motion = clip_motion(gt_clip) if flicker and len(gt) >= 2 else None  # shared by every method
    summary, rows = {}, []
    for method, frames in outputs.items():
        per = [y_psnr_ssim(_tensor(f), g, crop) for f, g in zip(frames, gt_t)]
        p = [float(a) for a, _ in per]
        s = [float(b) for _, b in per]
        summary[method] = {"psnr": float(np.mean(p)), "ssim": float(np.mean(s))}
        if flicker and method in ("bicubic", "tanet") and len(frames) >= 2:
            sr_clip = torch.stack([_tensor(f) for f in frames])
            summary[method]["tof"] = float(temporal_flicker(sr_clip, gt_clip, gt_motion))
        rows += [{"method": method, "frame": i, "psnr": a, "ssim": b} for i, (a, b) in enumerate(zip(p, s))]
    return summary, rows


def _best_crop(gt: np.ndarray, size: int) -> tuple[int, int]:
    """Top-left of the ``size`` square with the most gradient energy (the most telling crop)."""
    g = gt.mean(2)
    energy = np.abs(np.diff(g, axis=0))[:, :-1] + np.abs(np.diff(g, axis=1))[:-1]
    h, w = energy.shape
    size = min(size, h, w)
    integral = np.pad(energy.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    sums = integral[size:, size:] - integral[:-size, size:] - integral[size:, :-size] + integral[:-size, :-size]
    y, x = np.unravel_index(np.argmax(sums), sums.shape)
    return int(y), int(x)


def save_figures(
    out_dir: Path,
    dataset: str,
    clip: str,
    outputs: dict[str, list[np.ndarray]],
    gt: list[np.ndarray],
    weights: np.ndarray | None,
    rows: list[dict[str, Any]],
) -> None:
    """Crops (bicubic | tanet | GT), the weight map and the per-frame PSNR curves, as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mid = len(gt) // 2
    y, x = _best_crop(gt[mid], 160)
    size = min(160, gt[mid].shape[0], gt[mid].shape[1])
    fig, axes = plt.subplots(1, 4 if weights is not None else 3, figsize=(13, 3.6))
    panels = [("bicubic", outputs["bicubic"][mid]), ("tanet", outputs["tanet"][mid]), ("ground truth", gt[mid])]
    for ax, (name, img) in zip(axes, panels):
        ax.imshow(img[y : y + size, x : x + size], interpolation="nearest")
        ax.set_title(name)
        ax.axis("off")
    if weights is not None:
        axes[-1].imshow(weight_map_image(weights))
        axes[-1].set_title("weights: " + " / ".join(f"B{i + 1}" for i in range(len(weights))) + " = R / G / B")
        axes[-1].axis("off")
    fig.suptitle(f"{dataset} / {clip}, frame {mid}")
    _save(fig, out_dir / f"{dataset}__{clip}__crops.png")
    fig, ax = plt.subplots(figsize=(8, 3.6))
    for method in ("bicubic", "tanet", *[m for m in outputs if m.startswith("branch_")]):
        vals = [r["psnr"] for r in rows if r["method"] == method]
        ax.plot(vals, label=method)
    ax.set_xlabel("frame")
    ax.set_ylabel("Y-PSNR (dB)")
    ax.set_title(f"{dataset} / {clip}")
    ax.legend(fontsize=8)
    _save(fig, out_dir / f"{dataset}__{clip}__psnr.png")


def _save(fig: Any, path: Path) -> None:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def evaluate_folders(sr_dir: str | Path, gt_dir: str | Path, crop: int = 0) -> dict[str, Any]:
    """PSNR/SSIM on Y of an SR frame folder against its ground truth (backs ``tanet metrics``).

    Frames are paired by their order in each folder (``tanet.io.frames.list_frames``), not by
    name, so SR tools that rename frames still compare.

    Args:
        sr_dir: folder of SR frames.
        gt_dir: folder of ground-truth frames.
        crop: border crop in pixels.

    Returns:
        ``{"sr_dir", "gt_dir", "crop", "frames": n, "psnr": mean, "ssim": mean,
        "per_frame": [{"name", "psnr", "ssim"}, ...]}`` with plain floats; ``name`` is
        the SR frame's file name. A mean PSNR is +inf only if some frame is identical.

    Raises:
        InputError: a folder is missing/empty, the frame counts differ (names the SR
            folder), or a frame's size differs from its ground truth (names the frame).
    """
    sr_paths, gt_paths = list_frames(sr_dir), list_frames(gt_dir)
    if len(sr_paths) != len(gt_paths):
        raise InputError(sr_dir, f"{len(sr_paths)} frames, but ground truth {gt_dir} has {len(gt_paths)}")
    per_frame: list[dict[str, Any]] = []  # {"name": str, "psnr": float, "ssim": float}
    for sr_path, gt_path in zip(sr_paths, gt_paths):
        sr, gt = to_tensor(read_rgb(sr_path)), to_tensor(read_rgb(gt_path))
        if sr.shape != gt.shape:
            raise InputError(
                sr_path,
                f"frame is {sr.shape[-1]}x{sr.shape[-2]}, ground truth {gt_path} is {gt.shape[-1]}x{gt.shape[-2]}",
            )
        p, s = y_psnr_ssim(sr, gt, crop=crop)
        per_frame.append({"name": sr_path.name, "psnr": p.item(), "ssim": s.item()})
    n = len(per_frame)
    return {
        "sr_dir": str(sr_dir),
        "gt_dir": str(gt_dir),
        "crop": crop,
        "frames": n,
        "psnr": math.fsum(f["psnr"] for f in per_frame) / n,
        "ssim": math.fsum(f["ssim"] for f in per_frame) / n,
        "per_frame": per_frame,
    }


def heldout_scores(
    model_dir: Path,
    clips: list[EvalClip],
    *,
    device: torch.device,
    tile: int,
    crop: int,
    flow_method: FlowMethod,
    flow_preset: DisPreset = "medium",
) -> dict[str, dict[str, float]]:
    """``{dataset: {"psnr", "ssim"}}`` of a joint model folder on clips, averaged as ``eval.json`` is.

    The champion gate re-evaluates its reference with this on the candidate's validation
    clips, so both figures come from the same frames and protocol.
    """
    model, _ = load_model_dir(model_dir, device)
    up = Upscaler(model, device=device, tile=tile, flow_method=flow_method, flow_preset=flow_preset)
    per: dict[str, list[dict[str, float]]] = {}
    for clip in clips:
        summary, _ = score({"model": [r.rgb for r in up.upscale_frames(clip.lr)]}, clip.gt, crop, False)
        per.setdefault(clip.dataset, []).append(summary["model"])
    return {ds: clip_means(vals) for ds, vals in per.items()}


ROBUSTNESS_CASES = ("adjacent", "other_clip", "shuffled")  # what the neighbour slots hold


def neighbour_robustness(
    clip: EvalClip,
    other: EvalClip,
    joint: VSRNet,
    *,
    device: torch.device,
    flow_method: FlowMethod,
    flow_preset: DisPreset = "medium",
    crop: int = 0,
    seed: int = 0,
) -> dict[str, dict[str, float]]:
    """The joint network when its neighbours carry nothing (the robustness of Liu et al. 2017).

    Every frame of ``clip`` is upscaled with its 2N-2 neighbour slots holding: its adjacent
    frames (``adjacent``, the normal case), the frames of ``other`` at the same times
    (``other_clip``), or frames of ``clip`` in a seeded random order (``shuffled``). A
    network that learnt when to trust its neighbours falls back to about its single-frame
    quality (the joint's own branch 1, which sees only the centre frame) and never below
    bicubic. Both clips are cropped to their common LR size from the top-left.

    Returns:
        ``{case: {"tanet": psnr, "branch_1": psnr}}`` and ``{"bicubic": {"psnr": ...}}``:
        mean Y-PSNR over the clip's frames.
    """
    h = min(f.shape[0] for f in [*clip.lr, *other.lr])
    w = min(f.shape[1] for f in [*clip.lr, *other.lr])
    r, half = joint.cfg.scale, joint.cfg.num_frames // 2
    lr = [np.ascontiguousarray(f[:h, :w]) for f in clip.lr]
    gt = torch.stack([_tensor(g[: r * h, : r * w]) for g in clip.gt[: len(lr)]])
    up = Upscaler(joint, device=device, flow_method=flow_method, flow_preset=flow_preset)
    own = [up.prepare(f) for f in lr]
    theirs = [up.prepare(np.ascontiguousarray(f[:h, :w])) for f in other.lr]
    order = np.random.default_rng(seed).permutation(len(own))

    def neighbours(case: str, t: int) -> list[dict[str, Any]]:
        if case == "adjacent":
            return edge_window(own[max(0, t - half) : t], own[t : t + half + 1], half)
        pool = theirs if case == "other_clip" else [own[i] for i in order]
        return [own[t] if k == half else pool[(t + k) % len(pool)] for k in range(2 * half + 1)]

    def psnr(frames: list[np.ndarray]) -> float:
        sr = torch.stack([_tensor(f) for f in frames])
        return float(y_psnr_ssim(sr, gt, crop)[0].mean())

    out: dict[str, dict[str, float]] = {}
    for case in ROBUSTNESS_CASES:
        sr, single = [], []
        for t in range(len(own)):
            res = up.network(up._network_input(neighbours(case, t)), want_all=True)
            sr.append(up.to_rgb(res["sr"], own[t]))
            single.append(up.to_rgb(res["branches"][0], own[t]))
        out[case] = {"tanet": psnr(sr), "branch_1": psnr(single)}
    out["bicubic"] = {"psnr": psnr(bicubic_frames(EvalClip(clip.dataset, clip.clip_id, lr, []), r))}
    return out


def clip_means(per_clip: list[dict[str, float]]) -> dict[str, float]:
    """The mean over clips of each per-clip figure, to 4 decimals (how ``eval.json`` averages a dataset).

    >>> clip_means([{"psnr": 30.0, "ssim": 0.9}, {"psnr": 31.0, "ssim": 0.8}])
    {'psnr': 30.5, 'ssim': 0.85}
    """
    return {k: round(float(np.mean([v[k] for v in per_clip])), 4) for k in per_clip[0]}
