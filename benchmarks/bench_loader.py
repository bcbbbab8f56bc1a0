"""Throughput of the patch loader (``tanet.data.loader.PatchLoader``), in patches/s.

Builds synthetic shards in the layout of the ``full``-like training setting (T = 5 LR frames
of 32 x 32 Y, their ROF-aligned neighbours, a 128 x 128 HR target at x4), written with the
patches stage's own ``ShardWriter``, then times the loader for three field sets, each with
plain iteration and with ``prefetching()``. Target: >= 50 000 patches/s on 2 cores.

Content: ``frames`` (default) is 8 x 8 blocks with low-bit noise, which zstd compresses about
1.35x, like the Y planes of real clips (carphone 1.24x, bikes 2.1x); ``random`` is
incompressible (larger files, no decompression work).

Usage::

    .venv/bin/python benchmarks/bench_loader.py                 # 16384 rows, batch 64
    .venv/bin/python benchmarks/bench_loader.py --content random --profile
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from tanet.data.loader import PatchLoader
from tanet.io.shards import DEFAULT_ZSTD_LEVEL, PatchLayout, ShardWriter, write_patch_manifest

FIELD_SETS = {"lr+hr": ("lr", "hr"), "rof+hr": ("rof", "hr"), "all": ("lr", "rof", "hr", "theta")}


def _planes(rng: np.random.Generator, n: int, side: int, content: str) -> np.ndarray:
    """``(n, side*side)`` uint8 planes: random bytes, or blocks that compress like frames."""
    if content == "random":
        return rng.integers(0, 256, (n, side * side), dtype=np.uint8)
    coarse = rng.integers(0, 64, (n, side // 8 + 1, side // 8 + 1), dtype=np.uint8) * 4
    fine = np.repeat(np.repeat(coarse, 8, 1), 8, 2)[:, :side, :side]
    noise = rng.integers(0, 4, fine.shape, dtype=np.uint8) * (rng.random(fine.shape) < 0.5)
    return (fine + noise).astype(np.uint8).reshape(n, side * side)


def build_shards(
    out: Path,
    rows: int,
    rows_per_group: int,
    content: str,
    seed: int = 0,
    layout: PatchLayout = PatchLayout(num_frames=5, channels=1, patch=32, scale=4),
    max_bytes: int = 64 << 20,
    zstd_level: int = DEFAULT_ZSTD_LEVEL,
) -> dict[str, object]:
    """Writes ``rows`` synthetic samples as shards + manifest into ``out``."""
    rng = np.random.default_rng(seed)
    schema = layout.schema()
    writer = ShardWriter(out, "synthetic", schema, max_bytes, zstd_level)
    p, rp, t = layout.patch, layout.scale * layout.patch, layout.num_frames
    for start in range(0, rows, rows_per_group):
        n = min(rows_per_group, rows - start)
        cols: dict[str, object] = {
            "clip": ["synthetic"] * n,
            "frame": np.arange(start, start + n, dtype=np.int32) // 16,
            "y": rng.integers(0, 256, n, dtype=np.int32),
            "x": rng.integers(0, 256, n, dtype=np.int32),
        }
        lr = [_planes(rng, n, p, content) for _ in range(t)]
        for k in range(t):
            cols[f"lr_{k}"] = _fixed(lr[k], layout.lr_bytes)
            if k != layout.centre:
                cols[f"rof_{k}"] = _fixed(np.roll(lr[k], 1, axis=1), layout.lr_bytes)
        cols["hr"] = _fixed(_planes(rng, n, rp, content), layout.hr_bytes)
        cols["shift"] = _fixed(rng.integers(-3, 4, (n, 2 * (t - 1)), dtype=np.int8).view(np.uint8), 2 * (t - 1))
        writer.write(pa.table(cols, schema=schema))
    return write_patch_manifest(out, layout, writer.close(), lr_set="synthetic")


def _fixed(rows: np.ndarray, width: int) -> pa.Array:
    """A ``fixed_size_binary(width)`` array over the bytes of a ``(n, width)`` uint8 array."""
    data = pa.py_buffer(np.ascontiguousarray(rows).tobytes())
    return pa.Array.from_buffers(pa.binary(width), len(rows), [None, data])


def measure(loader: PatchLoader, prefetch: bool, seconds: float) -> tuple[float, float]:
    """Patches/s over at least ``seconds`` (after one warm-up batch), and CPU us per patch.

    The CPU time (all threads of this process) is the steadier figure on a shared machine:
    other processes' load lowers the wall-clock rate but not the work per patch.
    """
    it = loader.prefetching() if prefetch else iter(loader)
    next(it)
    n, t0, c0 = 0, time.perf_counter(), time.process_time()
    while True:
        batch = next(it)
        n += next(iter(batch.values())).shape[0]
        if time.perf_counter() - t0 >= seconds:
            break
    rate, cpu = n / (time.perf_counter() - t0), (time.process_time() - c0) / n * 1e6
    if prefetch:
        it.close()  # type: ignore[attr-defined]
    return rate, cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=16384, help="synthetic samples")
    ap.add_argument("--rows-per-group", type=int, default=512)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--shuffle-groups", type=int, default=8)
    ap.add_argument("--content", choices=("frames", "random"), default="frames")
    ap.add_argument(
        "--zstd-level",
        type=int,
        default=DEFAULT_ZSTD_LEVEL,
        help="zstd level of the synthetic shards (patches.zstd_level)",
    )
    ap.add_argument("--seconds", type=float, default=3.0, help="per measurement")
    ap.add_argument("--fields", choices=tuple(FIELD_SETS), nargs="*", default=list(FIELD_SETS))
    ap.add_argument(
        "--cache-mb",
        type=int,
        nargs="*",
        default=[0, 1024],
        help="decoded row-group cache sizes to compare (0: decode every epoch)",
    )
    ap.add_argument("--profile", action="store_true", help="cProfile the 'all' fields, plain iteration")
    ap.add_argument("--dir", type=Path, help="reuse/keep shards here instead of a temp folder")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="tanet-bench-loader-")) if args.dir is None else args.dir
    try:
        if not (tmp / "manifest.json").is_file():
            tmp.mkdir(parents=True, exist_ok=True)
            t0 = time.perf_counter()
            m = build_shards(tmp, args.rows, args.rows_per_group, args.content, zstd_level=args.zstd_level)
            size = sum(int(s["bytes"]) for s in m["shards"]) / 2**20  # type: ignore[union-attr]
            print(
                f"built {m['rows']} rows in {len(m['shards'])} shard(s), {size:.0f} MiB ({args.content}, "  # type: ignore[arg-type]
                f"zstd level {args.zstd_level}), "
                f"{time.perf_counter() - t0:.1f} s"
            )
        print(f"batch {args.batch}, shuffle_groups {args.shuffle_groups}, rows/group {args.rows_per_group}")
        for cache_mb in args.cache_mb:
            print(f"cache_mb {cache_mb}" + (" (decodes every epoch)" if cache_mb == 0 else ""))
            for name in args.fields:
                kw = dict(shuffle_groups=args.shuffle_groups, fields=FIELD_SETS[name], cache_mb=cache_mb)
                plain, plain_cpu = measure(PatchLoader(tmp, args.batch, **kw), False, args.seconds)  # type: ignore[arg-type]
                ahead, ahead_cpu = measure(PatchLoader(tmp, args.batch, verify=False, **kw), True, args.seconds)  # type: ignore[arg-type]
                print(
                    f"  {name:7s} plain {plain:9,.0f} patches/s ({plain_cpu:5.1f} CPU us/patch)   "
                    f"prefetching {ahead:9,.0f} patches/s ({ahead_cpu:5.1f} CPU us/patch)"
                )
        if args.profile:
            loader = PatchLoader(
                tmp, args.batch, shuffle_groups=args.shuffle_groups, verify=False, cache_mb=args.cache_mb[0]
            )
            prof = cProfile.Profile()
            prof.enable()
            measure(loader, False, args.seconds)
            prof.disable()
            pstats.Stats(prof).sort_stats("tottime").print_stats(15)
    finally:
        if args.dir is None:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
