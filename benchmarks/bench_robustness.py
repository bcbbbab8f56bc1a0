"""Neighbours that carry nothing: the joint network against its single-frame branch and bicubic.

``python benchmarks/bench_robustness.py [--model tanet-s] [--vid4 ../shared/data/vid4] [--frames 0]``

On each Vid4 clip (BI from GT by our degradation; the next clip in the list lends its
frames as the "other clip"), every frame is upscaled with its neighbour slots holding its
adjacent frames, another clip's frames, or its own frames in a random order
(:func:`tanet.infer.evaluation.neighbour_robustness`). Prints mean Y-PSNR (dB, crop 0) per
clip and over the four: the method's claim is that with useless neighbours it falls back
to about its single-frame quality (its branch 1) and never below bicubic.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from tanet.infer.evaluation import ROBUSTNESS_CASES, neighbour_robustness, vid4_clips
from tanet.infer.pipeline import resolve_model
from tanet.io.model_files import load_model_dir
from tanet.ops.degrade import Degradation

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="tanet-s", help="shipped name, model folder or models:/ URI")
    ap.add_argument("--vid4", type=Path, default=ROOT.parent / "shared" / "data" / "vid4")
    ap.add_argument("--frames", type=int, default=0, help="first frames of each clip (0: all)")
    args = ap.parse_args()
    net, meta = load_model_dir(resolve_model(args.model, ROOT), "cpu")
    clips = list(vid4_clips(args.vid4, Degradation(meta.get("degradation", "BI"), net.cfg.scale), args.frames))
    t0 = time.perf_counter()
    rows = []
    for i, clip in enumerate(clips):
        res = neighbour_robustness(
            clip, clips[(i + 1) % len(clips)], net, device=torch.device("cpu"), flow_method="dis"
        )
        rows.append(res)
        cells = "  ".join(f"{c} {res[c]['tanet']:.2f}" for c in ROBUSTNESS_CASES)
        print(
            f"{clip.clip_id:8s} {cells}  branch_1 {res['adjacent']['branch_1']:.2f}  bicubic {res['bicubic']['psnr']:.2f}"
        )
    mean = {c: sum(r[c]["tanet"] for r in rows) / len(rows) for c in ROBUSTNESS_CASES}
    b1 = sum(r["adjacent"]["branch_1"] for r in rows) / len(rows)
    bic = sum(r["bicubic"]["psnr"] for r in rows) / len(rows)
    cells = "  ".join(f"{c} {mean[c]:.2f}" for c in ROBUSTNESS_CASES)
    print(
        f"{'mean':8s} {cells}  branch_1 {b1:.2f}  bicubic {bic:.2f}  ({args.model}, {time.perf_counter() - t0:.0f} s)"
    )


if __name__ == "__main__":
    main()
