"""How much do the neighbours of the training patches tell, and how well does ROF align them?

    python benchmarks/bench_alignment.py data/patches [--max-rows 4000]

For every source (the clip id before ``__``) of a patches stage output, over up to
``--max-rows`` rows, prints per neighbour offset (t-2, t-1, t+1, t+2):
- raw: mean |neighbour - centre| of the LR Y patch (grey levels), no alignment;
- rof: the same after the stored ROF shift (the branches' training input);
- moving: share of patches whose rectified shift is not (0, 0);
and the mean |shift| in LR pixels. A multi-frame branch can only gain where the ROF-aligned
neighbour is close to the centre (rof well below raw) yet not identical (a static scene
adds no new samples of the scene).
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from tanet.io.shards import read_patch_manifest


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("patches", type=Path, help="patches stage output folder")
    ap.add_argument("--max-rows", type=int, default=4000, help="rows read per source")
    args = ap.parse_args()
    manifest = read_patch_manifest(args.patches)
    t, p, c = manifest["num_frames"], manifest["patch_size"], manifest["channels"]
    centre = t // 2
    stats: dict[str, dict[str, list[np.ndarray]]] = defaultdict(lambda: defaultdict(list))
    counts: dict[str, int] = defaultdict(int)
    for shard in manifest["shards"]:
        table = pq.read_table(args.patches / shard["file"])
        clips = np.array([s.split("__")[0] for s in table.column("clip").to_pylist()])
        for source in np.unique(clips):
            room = args.max_rows - counts[source]
            idx = np.flatnonzero(clips == source)[: max(room, 0)]
            if not len(idx):
                continue
            counts[source] += len(idx)

            def planes(name: str, idx: np.ndarray = idx, table: pa.Table = table) -> np.ndarray:
                col = table.column(name).take(idx).to_pylist()
                return np.frombuffer(b"".join(col), np.uint8).reshape(len(idx), c, p, p)[:, 0].astype(np.float32)

            ref = planes(f"lr_{centre}")
            shifts = np.frombuffer(b"".join(table.column("shift").take(idx).to_pylist()), np.int8)
            shifts = shifts.reshape(len(idx), t - 1, 2).astype(np.float32)
            for j, k in enumerate(k for k in range(t) if k != centre):
                stats[source][f"raw{k - centre:+d}"].append(np.abs(planes(f"lr_{k}") - ref).mean((1, 2)))
                stats[source][f"rof{k - centre:+d}"].append(np.abs(planes(f"rof_{k}") - ref).mean((1, 2)))
                stats[source][f"mov{k - centre:+d}"].append((np.abs(shifts[:, j]).sum(-1) > 0).astype(np.float32))
                stats[source][f"mag{k - centre:+d}"].append(np.hypot(shifts[:, j, 0], shifts[:, j, 1]))
    offsets = [f"{k - centre:+d}" for k in range(t) if k != centre]
    print(f"{'source':36s} {'rows':>6s} " + " ".join(f"{'raw/rof/moving/|s| t' + o:>30s}" for o in offsets))
    for source in sorted(stats):
        s = {k: float(np.concatenate(v).mean()) for k, v in stats[source].items()}
        cells = [f"{s['raw' + o]:6.2f} {s['rof' + o]:6.2f} {s['mov' + o]:5.2f} {s['mag' + o]:5.2f}" for o in offsets]
        print(f"{source:36s} {counts[source]:6d} " + " ".join(f"{cell:>30s}" for cell in cells))


if __name__ == "__main__":
    main()
