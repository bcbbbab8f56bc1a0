"""Throughput of the data stages (ingest, degrade, flow, patches) on a preset.

Runs each stage function in this process, in a temporary folder, on the preset's own
sources (default ``quick``: the embedded clips), and prints frames/s per stage (patches/s
for ``patches``). With ``--prefect`` it also times ``python -m flows.stage <stage>`` processes on
the same inputs, twice: with the default early temporary server (``flows/common.py``) and
with ``TANET_EPHEMERAL=prefect`` (Prefect's own lazy ephemeral mode); process wall time
minus the in-process stage time is the per-stage start-up cost.

Usage::

    .venv/bin/python benchmarks/bench_pipeline.py [--preset quick] [--workers 2] [--prefect] [--keep DIR]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from tanet.config import dump_params, params_from_dict, preset_params
from tanet.stages import run_stage
from tanet.stages.parallel import Mapper, serial_map, thread_map

ROOT = Path(__file__).resolve().parents[1]


def _timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def run_stages(preset: str, out: Path, mapper: Mapper) -> dict[str, float]:
    """Runs the four stages into ``out``; prints and returns each stage's seconds."""
    p = params_from_dict(preset_params(preset))
    sets = len(p.degrade.scales) * len(p.degrade.kinds)
    records, t_ingest = _timed(lambda: run_stage("ingest", p, root=ROOT, out_dir=out / "clips", mapper=mapper))
    frames = sum(r.frames for r in records)
    pixels = sum(r.frames * r.width * r.height for r in records)
    print(
        f"ingest   {frames:6d} frames of {len(records)} clips ({pixels / frames / 1e3:.0f} kpixel/frame) "
        f"in {t_ingest:6.2f} s: {frames / t_ingest:8.1f} frames/s"
    )
    lr, t_degrade = _timed(lambda: run_stage("degrade", p, clips_dir=out / "clips", out_dir=out / "lr", mapper=mapper))
    lr_frames = sum(lr.values())
    print(
        f"degrade  {lr_frames:6d} LR frames ({sets} set(s)) in {t_degrade:6.2f} s: {lr_frames / t_degrade:8.1f} frames/s "
        f"({frames / t_degrade:.1f} HR frames/s)"
    )
    flows, t_flow = _timed(
        lambda: run_stage("flow", p, clips_dir=out / "clips", lr_dir=out / "lr", out_dir=out / "flow", mapper=mapper)
    )
    fields = sum(flows.values())
    print(
        f"flow     {lr_frames:6d} reference frames, {fields} flow fields in {t_flow:6.2f} s: "
        f"{lr_frames / t_flow:8.1f} frames/s ({fields / t_flow:.1f} flows/s)"
    )
    manifest, t_patches = _timed(
        lambda: run_stage(
            "patches",
            p,
            clips_dir=out / "clips",
            lr_dir=out / "lr",
            flow_dir=out / "flow",
            out_dir=out / "patches",
            mapper=mapper,
        )
    )
    rows = int(manifest["rows"])  # type: ignore[call-overload]
    size = sum(int(s["bytes"]) for s in manifest["shards"]) / 2**20  # type: ignore[union-attr]
    print(
        f"patches  {rows:6d} patches, {len(manifest['shards'])} shard(s), {size:.1f} MiB in {t_patches:6.2f} s: "  # type: ignore[arg-type]
        f"{rows / t_patches:8.1f} patches/s"
    )
    return {"ingest": t_ingest, "degrade": t_degrade, "flow": t_flow, "patches": t_patches}


FLOW_COMMANDS = {
    "ingest": ["flows.stage", "ingest", "--out", "{o}/clips"],
    "degrade": ["flows.stage", "degrade", "--clips", "{o}/clips", "--out", "{o}/lr"],
    "flow": ["flows.stage", "flow", "--clips", "{o}/clips", "--lr", "{o}/lr", "--out", "{o}/flow"],
    "patches": [
        "flows.stage",
        "patches",
        "--clips",
        "{o}/clips",
        "--lr",
        "{o}/lr",
        "--flow",
        "{o}/flow",
        "--out",
        "{o}/patches",
    ],
}


def time_flows(preset: str, out: Path, ephemeral: str) -> dict[str, float]:
    """Wall seconds of each ``python -m flows.stage <stage>`` process (stages run in order)."""
    out.mkdir(parents=True, exist_ok=True)
    params = out / "params.yaml"
    params.write_text(dump_params(preset_params(preset)))
    env = dict(os.environ, TANET_EPHEMERAL=ephemeral, PREFECT_LOGGING_LEVEL="WARNING")
    env.pop("PREFECT_API_URL", None)
    times = {}
    for stage, args in FLOW_COMMANDS.items():
        cmd = [sys.executable, "-m", *args[:2], "--params", str(params), *[a.format(o=out) for a in args[2:]]]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, check=False, cwd=ROOT, env=env, capture_output=True, text=True)
        times[stage] = time.perf_counter() - t0
        if proc.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="quick", choices=("tiny", "quick", "full"))
    ap.add_argument("--workers", type=int, default=1, help="thread_map workers (1: serial_map)")
    ap.add_argument(
        "--torch-threads",
        type=int,
        default=0,
        help="torch intra-op threads for the in-process stages (0: torch's default); on a busy "
        "machine OpenMP's busy-waiting makes per-frame torch ops many times slower with >1",
    )
    ap.add_argument("--prefect", action="store_true", help="also time the Prefect stage processes")
    ap.add_argument("--keep", type=Path, help="write the outputs here and keep them")
    args = ap.parse_args()
    mapper = serial_map if args.workers <= 1 else thread_map(args.workers)
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    out = args.keep or Path(tempfile.mkdtemp(prefix="tanet-bench-pipeline-"))
    out.mkdir(parents=True, exist_ok=True)
    try:
        print(
            f"preset {args.preset}, {'serial' if args.workers <= 1 else f'{args.workers} threads'}, {os.cpu_count()} CPUs, "
            f"torch threads {torch.get_num_threads()}, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '(unset)')}, "
            f"load average {os.getloadavg()[0]:.1f}"
        )
        inproc = run_stages(args.preset, out / "inproc", mapper)
        if args.prefect:
            print("\nstage      in-process   flows (early server)   flows (TANET_EPHEMERAL=prefect)")
            print("           [start-up = flow process - in-process stage]")
            early = time_flows(args.preset, out / "early", "early")
            lazy = time_flows(args.preset, out / "lazy", "prefect")
            for stage, t in inproc.items():
                print(
                    f"{stage:9s} {t:8.2f} s   {early[stage]:7.2f} s (+{early[stage] - t:5.2f})"
                    f"        {lazy[stage]:7.2f} s (+{lazy[stage] - t:5.2f})"
                )
            print(
                f"{'total':9s} {sum(inproc.values()):8.2f} s   {sum(early.values()):7.2f} s"
                f"                   {sum(lazy.values()):7.2f} s"
            )
    finally:
        if args.keep is None:
            shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
