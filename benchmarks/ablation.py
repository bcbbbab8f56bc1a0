"""The ablation table: branches alone, uniform vs adaptive mixing, alignment modes.

``python benchmarks/ablation.py --params P --clips D/clips --lr D/lr --flow D/flow LABEL=MODEL_DIR ...``

Each ``LABEL=MODEL_DIR`` is a trained model folder: a pretrained branch (``branch_<i>``,
scored alone, as :class:`~tanet.infer.upscaler.StandaloneBranch` drives it) or a joint
network. For each it prints the validation Y-PSNR (the params' held-out clips, every frame
the training stages validate on: what the rows are chosen by) and, unless ``--vid4 ''``,
Vid4 ×4 (our LR from GT by the model's degradation, Y, all frames, crop 0; the test set,
measured once per row for the table; ``--crop 8`` adds that border crop) with SSIM and the flicker figure ``tof``.
``--mixing`` adds, for each joint row, what its temporal modulation does on the validation
frames (:func:`~tanet.train.validate.mixing_figures`: the learned mixture against the
uniform mean of the same branches, each branch inside the joint, the per-pixel oracle, the
weights' spread). ``--json FILE`` keeps the figures.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from tanet.config import PretrainParams, TrainParams, load_params
from tanet.data.valset import ValClip, load_val_clips
from tanet.infer.shipped import vid4_figures
from tanet.io.model_files import load_model_dir
from tanet.models.vsr import VSRNet
from tanet.train.job import Job
from tanet.train.validate import bicubic_psnr, mixing_figures, validate

ROOT = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("models", nargs="+", help="LABEL=MODEL_DIR, a row each")
    ap.add_argument("--params", type=Path, required=True, help="the params the models trained with")
    ap.add_argument("--clips", type=Path, required=True)
    ap.add_argument("--lr", type=Path, required=True)
    ap.add_argument("--flow", type=Path, required=True)
    ap.add_argument("--vid4", default=str(ROOT.parent / "shared" / "data" / "vid4"), help="'' to skip Vid4")
    ap.add_argument("--crop", type=int, default=None, help="Vid4 also at this HR border crop (8 as MMagic)")
    ap.add_argument("--mixing", action="store_true", help="also the modulation's figures of each joint row")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    params = load_params(args.params)
    rows: dict[str, dict[str, object]] = {}
    val_sets: dict[str, tuple[list[ValClip], float]] = {}  # per network config: rows share their clips
    for spec in args.models:
        label, sep, folder = spec.partition("=")
        if not sep:
            raise SystemExit(f"{spec}: expected LABEL=MODEL_DIR")
        t0 = time.perf_counter()
        net, meta = load_model_dir(Path(folder))
        cfg = net.cfg
        branch = int(meta.get("branch", 0)) if meta.get("kind") == "branch" else 0
        job = Job("branch", branch, cfg, PretrainParams()) if branch else Job("joint", 0, cfg, TrainParams())
        key = json.dumps(cfg.to_dict(), sort_keys=True)
        if key not in val_sets:
            clips = load_val_clips(
                args.clips,
                args.lr,
                args.flow,
                model=cfg,
                degradation=params.patches.degradation,
                block=params.patches.patch_size,
                val_frames=params.train.val_frames,
            )
            val_sets[key] = clips, bicubic_psnr(clips, cfg.scale)
        clips, bicubic = val_sets[key]
        row: dict[str, object] = {"model": folder, "val_psnr": validate(job, net, clips, CPU)["val_psnr"]}
        if args.mixing and isinstance(net, VSRNet):
            row["mixing"] = mixing_figures(job, net, clips, CPU)
        if args.vid4:
            crops = (0,) if args.crop is None else (0, args.crop)
            figures = vid4_figures(Path(folder), Path(args.vid4), params.patches.degradation, crops=crops)
            row["vid4"] = figures["mean"]
            if args.crop is not None:
                row[f"vid4_crop{args.crop}"] = figures["by_crop"][str(args.crop)]
        row["seconds"] = round(time.perf_counter() - t0, 1)
        rows[label] = row
        print(f"{label}: {json.dumps(row)}", flush=True)
    print(f"\n| row | validation dB (bicubic {bicubic:.2f}) | Vid4 dB / SSIM | tof |\n|---|---|---|---|")
    for label, row in rows.items():
        v4 = row.get("vid4") or {}
        t = v4.get("tanet", {}) if isinstance(v4, dict) else {}
        vid4 = f"{t['psnr']:.2f} / {t['ssim']:.4f}" if t else "—"
        tof = f"{t['tof']:.3f}" if "tof" in t else "—"
        print(f"| {label} | {row['val_psnr']:.3f} | {vid4} | {tof} |")
    mixing = {label: row["mixing"] for label, row in rows.items() if isinstance(row.get("mixing"), dict)}
    if mixing:
        names = list(next(iter(mixing.values())))
        print(f"\n| joint row | {' | '.join(names)} |\n|---|{'---|' * len(names)}")
        for label, fig in mixing.items():
            print(f"| {label} | {' | '.join(f'{fig[n]:.3f}' for n in names)} |")
    if args.json:
        args.json.write_text(json.dumps({"bicubic_val_psnr": bicubic, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
