"""Choose the optical-flow estimator of ROF by measurement: DIS presets vs Farneback.

    python benchmarks/bench_flow.py [--vid4 ../shared/data/vid4]

Figures printed for each method:
- exact: fraction of 32x32 blocks whose rectified shift equals a known integer translation
  (synthetic texture moved by up to +-6 px);
- ROF error: mean |ROF-aligned neighbour - reference| (grey levels) on real LR video
  (Vid4 made LR with our BI x4 when ../shared is there, else the embedded bikes clip), for
  neighbours at t+-1 and t+-2; "no alignment" gives the reference point;
- ms/flow at 180x144 and 320x180.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from tanet.ops.optical_flow import estimate_flow
from tanet.ops.rof import apply_block_shifts, block_shifts

METHODS = [("dis", "ultrafast"), ("dis", "fast"), ("dis", "medium"), ("farneback", "medium")]
ROOT = Path(__file__).resolve().parents[1]


def synthetic_exact(method: str, preset: str, trials: int = 40) -> float:
    rng = np.random.default_rng(0)
    hits = total = 0
    for _ in range(trials):
        tex = cv2.GaussianBlur(rng.integers(0, 256, (200, 240)).astype(np.uint8), (0, 0), 1.5)
        dx, dy = rng.integers(-6, 7, 2)
        ref = tex[20:164, 20:200]
        nbr = tex[20 - dy : 164 - dy, 20 - dx : 200 - dx]
        shifts = block_shifts(estimate_flow(ref, nbr, method, preset), 32)[:-1, :-1]  # full blocks only
        hits += int((shifts == np.array([dx, dy])).all(-1).sum())
        total += shifts.shape[0] * shifts.shape[1]
    return hits / total


def real_clips(vid4: Path | None) -> list[np.ndarray]:
    from tanet.io.frames import list_frames, read_rgb
    from tanet.ops.color import rgb_to_y_uint8
    from tanet.ops.degrade import bi_degrade, mod_crop

    clips = []
    if vid4 is not None and (vid4 / "GT").is_dir():
        for name in ("calendar", "city", "foliage", "walk"):
            frames = []
            for f in list_frames(vid4 / "GT" / name)[:12]:
                hr = mod_crop(torch.from_numpy(read_rgb(f)).permute(2, 0, 1), 4)
                frames.append(rgb_to_y_uint8(bi_degrade(hr, 4))[0].numpy())
            clips.append(np.stack(frames))
        return clips
    from tanet.data.sources import embedded_clip_path
    from tanet.io.video import VideoReader

    with VideoReader(embedded_clip_path("bikes"), max_frames=12) as reader:
        frames = [
            cv2.resize(cv2.cvtColor(f, cv2.COLOR_RGB2GRAY), (160, 68), interpolation=cv2.INTER_AREA) for f in reader
        ]
    return [np.stack(frames)]


def rof_error(clips: list[np.ndarray], method: str | None, preset: str, offset: int) -> float:
    errs = []
    for clip in clips:
        for t in range(2, len(clip) - 2):
            ref, nbr = clip[t], clip[t + offset]
            if method is None:
                aligned = nbr
            else:
                aligned = apply_block_shifts(nbr, block_shifts(estimate_flow(ref, nbr, method, preset), 32), 32)
            errs.append(np.abs(aligned[4:-4, 4:-4].astype(np.float32) - ref[4:-4, 4:-4]).mean())
    return float(np.mean(errs))


def speed(method: str, preset: str, h: int, w: int, n: int = 30) -> float:
    rng = np.random.default_rng(1)
    a = cv2.GaussianBlur(rng.integers(0, 256, (h, w)).astype(np.uint8), (0, 0), 1.5)
    b = np.roll(a, (1, 2), (0, 1))
    estimate_flow(a, b, method, preset)
    t = time.perf_counter()
    for _ in range(n):
        estimate_flow(a, b, method, preset)
    return (time.perf_counter() - t) / n * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--vid4", type=Path, default=ROOT.parent / "shared/data/vid4")
    args = ap.parse_args()
    clips = real_clips(args.vid4)
    print(
        f"real LR clips: {len(clips)} ({'Vid4 BIx4' if len(clips) == 4 else 'embedded bikes'}); torch threads {torch.get_num_threads()}"
    )
    print(
        f"{'method':<20} {'exact':>7} {'ROF err t+-1':>13} {'ROF err t+-2':>13} {'ms 180x144':>11} {'ms 320x180':>11}"
    )
    base1 = np.mean([rof_error(clips, None, "", o) for o in (-1, 1)])
    base2 = np.mean([rof_error(clips, None, "", o) for o in (-2, 2)])
    print(f"{'no alignment':<20} {'':>7} {base1:>13.3f} {base2:>13.3f}")
    for method, preset in METHODS:
        e1 = np.mean([rof_error(clips, method, preset, o) for o in (-1, 1)])
        e2 = np.mean([rof_error(clips, method, preset, o) for o in (-2, 2)])
        label = f"{method}/{preset}" if method == "dis" else method
        print(
            f"{label:<20} {synthetic_exact(method, preset):>7.3f} {e1:>13.3f} {e2:>13.3f} "
            f"{speed(method, preset, 144, 180):>11.2f} {speed(method, preset, 180, 320):>11.2f}"
        )


if __name__ == "__main__":
    main()
