"""Models shipped inside the package, by name: ``tanet-s``, ``tanet-l``, ``tanet-s-bd``.

Each shipped model is a model folder (``model.safetensors`` + ``model.json``, as training
writes it) under ``tanet/weights/<name>/`` with its card: ``card.json`` (machine-readable:
architecture, data and licences, schedule, device and wall time, validation and Vid4
figures, a named crop with its figure, git commit, sha256 of the weights) and ``README.md``
(the same, for people). The names map onto the architecture presets of
:data:`tanet.models.vsr.MODEL_PRESETS` (``tanet-s-bd`` is TANet-S trained on BD inputs).

A name resolves only when its weights are in this install: a name known here but not
shipped yet is a clear error, never a silent fallback.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict, cast

from tanet.errors import TanetError
from tanet.io.markdown import markdown_table

if TYPE_CHECKING:
    from tanet.ops.degrade import DegradationKind

WEIGHTS_DIR = Path(__file__).resolve().parents[1] / "weights"
CARD = "card.json"
CARD_README = "README.md"
# shipped name -> (architecture preset of MODEL_PRESETS, degradation it was trained for)
SHIPPED_NAMES: dict[str, tuple[str, DegradationKind]] = {
    "tanet-s": ("tanet-s", "BI"),
    "tanet-l": ("tanet-l", "BI"),
    "tanet-s-bd": ("tanet-s", "BD"),
}


def available() -> list[str]:
    """Names whose weights and card are in this install."""
    return [
        n for n in SHIPPED_NAMES if (WEIGHTS_DIR / n / CARD).is_file() and (WEIGHTS_DIR / n / "model.json").is_file()
    ]


def is_shipped_name(spec: str) -> bool:
    """Whether ``spec`` is one of the shipped names (shipped in this install or not)."""
    return spec in SHIPPED_NAMES


def shipped_dir(name: str) -> Path:
    """The model folder of a shipped name.

    Raises:
        TanetError: unknown name, or a known name whose weights this install lacks.
    """
    if name not in SHIPPED_NAMES:
        raise TanetError(f"model {name}: not a shipped model (shipped names: {', '.join(SHIPPED_NAMES)})")
    folder = WEIGHTS_DIR / name
    if name not in available():
        have = ", ".join(available()) or "none"
        raise TanetError(f"model {name}: not shipped in this version of tanet yet (shipped here: {have})")
    return folder


def read_card(name: str) -> dict[str, Any]:
    """The card of a shipped model (``card.json``)."""
    return json.loads((shipped_dir(name) / CARD).read_text())


def weights_sha256(folder: Path) -> str:
    """sha256 of a model folder's ``model.safetensors`` (recorded on the card)."""
    return hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()


def render_card(card: dict[str, Any]) -> str:
    """The card as markdown (``README.md`` beside the weights)."""
    lines = [f"# {card['name']}", "", card.get("summary", ""), ""]
    rows = [
        ("architecture", card["architecture"]),
        ("parameters", f"{card['parameters']:,}"),
        ("degradation", card["degradation"]),
        ("alignment", card["alignment"]),
        ("training data", "; ".join(card["data"]["sources"])),
        ("data licences", "; ".join(card["data"]["licences"])),
        ("weights' terms", card["terms"]),
        ("schedule", card["schedule"]),
        ("trained on", f"{card['device']}, {card['wall_time']}"),
        ("git commit", card["git_commit"]),
        ("sha256 of model.safetensors", card["sha256"]),
    ]
    lines += [*markdown_table(["", ""], rows), ""]
    lines += [
        "## Figures (Y-PSNR dB / SSIM, x4, all frames, crop 0)",
        "",
        *markdown_table(
            ["data", "bicubic", "ffmpeg lanczos", "model"],
            [[r["data"], r["bicubic"], r.get("lanczos", ""), r["model"]] for r in card["figures"]],
        ),
    ]
    crop = card["crop"]
    lines += [
        "",
        "## Named crop (recomputed by the tests)",
        "",
        f"{crop['clip']} frames {crop['frames'][0]}..{crop['frames'][-1]}, box x={crop['box'][0]} y={crop['box'][1]} "
        f"w={crop['box'][2]} h={crop['box'][3]} (HR pixels), LR made by our BI x{card['scale']}: "
        f"Y-PSNR {crop['psnr']:.4f} dB.",
        "",
    ]
    if card.get("notes"):
        lines += ["## Notes", "", *[f"- {n}" for n in card["notes"]], ""]
    return "\n".join(lines)


def crop_psnr(
    model_dir: Path,
    gt_dir: Path,
    frames: list[int],
    box: tuple[int, int, int, int],
    *,
    degradation: DegradationKind = "BI",
    device: str = "cpu",
) -> float:
    """Mean Y-PSNR of a model on a named crop: HR ``box`` (x, y, w, h) of ``frames`` of a clip.

    The LR clip is made from the ground truth with our degradation (``degradation`` at the
    model's scale, GT mod-cropped), the whole clip is upscaled as ``tanet upscale`` would
    (so edge windows match), and only the crop is scored (crop 0 inside the box).
    """
    import torch

    from tanet.infer.upscaler import Upscaler, flow_settings
    from tanet.io.frames import list_frames, read_rgb
    from tanet.io.model_files import load_model_dir
    from tanet.ops.degrade import Degradation, apply_degradation, mod_crop
    from tanet.ops.metrics import y_psnr_ssim

    net, meta = load_model_dir(model_dir)
    scale = int(meta["scale"])
    deg = Degradation(degradation, scale)
    files = list_frames(gt_dir)
    gt = [mod_crop(torch.from_numpy(read_rgb(f)).permute(2, 0, 1), scale) for f in files]
    lr = [apply_degradation(g, deg).permute(1, 2, 0).contiguous().numpy() for g in gt]
    sr = [r.rgb for r in Upscaler(net, device=device, **flow_settings(meta)).upscale_frames(lr)]
    x, y, w, h = box
    values = []
    for t in frames:
        got = torch.from_numpy(sr[t][y : y + h, x : x + w]).permute(2, 0, 1)
        values.append(float(y_psnr_ssim(got, gt[t][:, y : y + h, x : x + w], 0)[0]))
    return sum(values) / len(values)


class _CardCrop(TypedDict):
    clip: str
    frames: list[int]
    box: list[int]  # x, y, w, h


# The crop every card names: Vid4 calendar (the test set, measured once per shipped model),
# five frames from the middle, the central quarter of the frame (text and brick texture).
CARD_CROP: _CardCrop = {"clip": "vid4/calendar", "frames": [18, 19, 20, 21, 22], "box": [180, 144, 360, 288]}
TERMS = (
    "Code: MIT. Weights: trained on data of which parts are licensed for non-commercial use only "
    "(Cityscapes: CC BY-NC-SA 4.0 and the Cityscapes terms; Vimeo-90K: non-commercial), so the "
    "weights are for non-commercial research use; check each source's terms (listed above) before any other use."
)


def vid4_figures(
    model_dir: Path, vid4_dir: Path, degradation: DegradationKind, device: str = "cpu", crops: Sequence[int] = (0,)
) -> dict[str, Any]:
    """Y-PSNR/SSIM (all frames) of the model, bicubic and lanczos on the four Vid4 clips with our LR.

    ``model_dir`` is a joint network or a pretrained branch (scored alone, for the ablation
    rows). ``crops``: HR pixels left out at each border; ``mean`` and ``clips`` are at the
    first (0 for our tables), ``by_crop`` holds the means at each (8 where a reference
    scored so), all from one upscaling pass.
    """
    import numpy as np

    from tanet.infer.evaluation import bicubic_frames, score, vid4_clips
    from tanet.infer.upscaler import StandaloneBranch, Upscaler, flow_settings
    from tanet.io.model_files import BranchModel, load_model_dir
    from tanet.io.video import lanczos_upscale
    from tanet.ops.degrade import Degradation

    loaded, meta = load_model_dir(model_dir)
    net = StandaloneBranch(loaded) if isinstance(loaded, BranchModel) else loaded
    deg = Degradation(degradation, int(meta["scale"]))
    per_crop: dict[int, dict[str, dict[str, dict[str, float]]]] = {c: {} for c in crops}
    for clip in vid4_clips(vid4_dir, deg, 0):
        outputs = {
            "bicubic": bicubic_frames(clip, deg.scale),
            "lanczos": lanczos_upscale(clip.lr, deg.scale),
            "tanet": [r.rgb for r in Upscaler(net, device=device, **flow_settings(meta)).upscale_frames(clip.lr)],
        }
        for c in crops:
            per_crop[c][clip.clip_id], _ = score(outputs, clip.gt, c, flicker=True)

    def means(per_clip: dict[str, dict[str, dict[str, float]]]) -> dict[str, dict[str, float]]:
        out = {}
        for method in ("bicubic", "lanczos", "tanet"):
            keys = sorted({k for c in per_clip.values() for k in c[method]})
            out[method] = {k: float(np.mean([c[method][k] for c in per_clip.values() if k in c[method]])) for k in keys}
        return out

    first = per_crop[crops[0]]
    return {"mean": means(first), "clips": first, "by_crop": {str(c): means(per_crop[c]) for c in crops}}


def build(
    model_dir: Path,
    name: str,
    *,
    vid4_dir: Path,
    device_desc: str,
    wall_time: str,
    summary: str,
    notes: list[str],
    git_commit: str,
    device: str = "cpu",
    schedule: str | None = None,
) -> Path:
    """Writes ``tanet/weights/<name>/`` from a trained model folder: weights, model.json and the card."""
    # Long on purpose: the model card assembled field by field, each block a line or two.
    import shutil

    from tanet.io.atomic import atomic_dir, atomic_write_json, atomic_write_text
    from tanet.io.model_files import load_model_dir

    if name not in SHIPPED_NAMES:
        raise TanetError(f"{name}: not a shipped name ({', '.join(SHIPPED_NAMES)})")
    net, meta = load_model_dir(model_dir)
    degradation = SHIPPED_NAMES[name][1]
    if meta.get("degradation", "BI") != degradation:
        raise TanetError(f"{model_dir}: trained for {meta.get('degradation')}, {name} is for {degradation}")
    params = meta.get("params") or {}
    figures = vid4_figures(model_dir, vid4_dir, degradation, device)
    crop_value = crop_psnr(
        model_dir,
        vid4_dir / "GT" / "calendar",
        CARD_CROP["frames"],
        cast("tuple[int, int, int, int]", tuple(CARD_CROP["box"])),  # the four of the literal above
        degradation=degradation,
        device=device,
    )
    cfg = net.cfg
    m = figures["mean"]
    card = {
        "name": name,
        "summary": summary,
        "architecture": (
            f"{SHIPPED_NAMES[name][0]}: {cfg.num_branches} {cfg.branch.kind} branches (widths {list(cfg.branch.widths)}) "
            f"on 1..{cfg.num_frames} frames, {cfg.modulation.kind} temporal modulation, {cfg.alignment} alignment, "
            f"{cfg.color.upper()} channel, x{cfg.scale}"
        ),
        "parameters": sum(p.numel() for p in net.parameters()),
        "scale": cfg.scale,
        "degradation": degradation,
        "alignment": cfg.alignment,
        "data": {
            "sources": sorted({s.split("__")[0] for s in (params.get("ingest", {}).get("embedded") or [])})
            + (
                ["../shared/data/train (all four sources)"]
                if params.get("ingest", {}).get("include_shared_train")
                else []
            ),
            "validation": params.get("ingest", {}).get("val_clips", []),
            "licences": meta.get("licences", []),
        },
        "terms": TERMS,
        "schedule": schedule
        or (
            f"preset {params.get('preset')}: pretrain {params.get('pretrain', {}).get('steps')} steps per branch, "
            f"joint {params.get('train', {}).get('steps')} steps, batch {params.get('train', {}).get('batch_size')}, "
            f"{params.get('patches', {}).get('patch_size')}x{params.get('patches', {}).get('patch_size')} LR patches"
        ),
        "device": device_desc,
        "wall_time": wall_time,
        "git_commit": git_commit,
        "validation": {k: meta[k] for k in ("val_psnr", "val_psnr_bicubic") if k in meta},
        "vid4": figures,
        "figures": [
            {
                "data": "validation (the params' held-out clips), Y-PSNR",
                "bicubic": f"{meta.get('val_psnr_bicubic', float('nan')):.2f}",
                "model": f"{meta.get('val_psnr', float('nan')):.2f}",
            },
            {
                "data": f"Vid4 {degradation}x{cfg.scale} (our LR from GT), mean of 4 clips",
                "bicubic": f"{m['bicubic']['psnr']:.2f} / {m['bicubic']['ssim']:.4f}",
                "lanczos": f"{m['lanczos']['psnr']:.2f} / {m['lanczos']['ssim']:.4f}",
                "model": f"{m['tanet']['psnr']:.2f} / {m['tanet']['ssim']:.4f} (tof {m['tanet'].get('tof', float('nan')):.3f})",
            },
        ],
        "crop": {**CARD_CROP, "psnr": round(crop_value, 4)},
        "eval": {f"vid4_{degradation}x{cfg.scale}": m},
        "notes": notes,
    }
    folder = WEIGHTS_DIR / name
    with atomic_dir(folder) as tmp:
        shutil.copy2(Path(model_dir) / "model.safetensors", tmp / "model.safetensors")
        shutil.copy2(Path(model_dir) / "model.json", tmp / "model.json")
        card["sha256"] = weights_sha256(tmp)
        atomic_write_json(tmp / CARD, card)
        atomic_write_text(tmp / CARD_README, render_card(card))
    return folder


def main(argv: list[str] | None = None) -> int:
    """``python -m tanet.infer.shipped MODEL_DIR --name tanet-s ...``: package a trained model (maintainers)."""
    import argparse

    from tanet.track.tracking import git_commit

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("model_dir", type=Path)
    ap.add_argument("--name", required=True, choices=list(SHIPPED_NAMES))
    ap.add_argument("--vid4", type=Path, default=Path("../shared/data/vid4"))
    ap.add_argument("--device-desc", required=True, help="where it trained, e.g. '2 vCPU AMD EPYC (CPU)'")
    ap.add_argument("--wall-time", required=True, help="how long it trained, e.g. '2.1 h'")
    ap.add_argument("--summary", default="")
    ap.add_argument("--schedule", default=None, help="what was trained, when not the whole schedule of its params")
    ap.add_argument("--note", action="append", default=[])
    args = ap.parse_args(argv)
    folder = build(
        args.model_dir,
        args.name,
        vid4_dir=args.vid4,
        device_desc=args.device_desc,
        wall_time=args.wall_time,
        summary=args.summary,
        notes=args.note,
        git_commit=git_commit(),
        schedule=args.schedule,
    )
    print(json.dumps(read_card(args.name)["figures"], indent=2))
    print(f"wrote {folder}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
