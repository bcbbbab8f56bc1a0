"""Training throughput (patches/s): branch pretraining and the joint network, TANet-S at x4.

Usage::

    python benchmarks/bench_train.py                      # CPU: 32x32 LR patches, batch 32 and 64
    python benchmarks/bench_train.py --compare            # also the step before the CPU tuning
    python benchmarks/bench_train.py --device cuda --batch 64 --patch 48 --precision bf16   # the H100 figure

Each figure times :func:`tanet.train.loop.train_step` exactly as the training loop runs it
(augmentation on uint8, learning-rate update, loss, backward, AdamW) on synthetic uint8
batches in the loader's layout, so data loading is not included. Steps are timed in
``--repeats`` rounds after ``--warmup`` untimed steps; the best round is printed (the median
too), because other processes on a shared machine only ever slow a round down.

``--compare`` also times the step as it was before the CPU tuning (augmentation by masked
clones of the whole batch, for-loop AdamW), interleaved round by round with the current
one so that both see the same machine load.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable

import torch
from torch import nn

from tanet.config import OptimParams
from tanet.models import tanet_s
from tanet.train.job import Job, build_model
from tanet.train.loop import compute_loss, learning_rate_at, make_optimizer, train_step


def _legacy_augment(batch: dict[str, torch.Tensor], gen: torch.Generator) -> dict[str, torch.Tensor]:
    """The augmentation before the tuning: three masked clone/flip/scatter passes per field."""
    n = next(iter(batch.values())).shape[0]
    hflip, vflip, trans = (torch.rand(3, n, generator=gen) < 0.5).unbind(0)
    out = dict(batch)
    for key in ("lr", "rof", "hr"):
        if key in out:
            x = out[key].clone()
            x[hflip] = x[hflip].flip(-1)
            x[vflip] = x[vflip].flip(-2)
            x[trans] = x[trans].transpose(-1, -2)
            out[key] = x
    return out


def _legacy_step(
    job: Job,
    net: nn.Module,
    opt: torch.optim.Optimizer,
    batch: dict[str, torch.Tensor],
    step: int,
    device: torch.device,
    rank: int = 0,
) -> object:
    batch = _legacy_augment(batch, torch.Generator().manual_seed(step))
    for group in opt.param_groups:
        group["lr"] = learning_rate_at(step, job.optim)
    loss, _ = compute_loss(job, net, batch, device)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss


def _setup(
    kind: str,
    branch: int,
    batch: int,
    patch: int,
    precision: str,
    device: torch.device,
    legacy: bool,
) -> Callable[[int], object]:
    cfg = tanet_s(scale=4, alignment="rof", align_block=patch)
    job = Job(kind, branch, cfg, OptimParams(steps=10_000, batch_size=batch, precision=precision))  # type: ignore[arg-type]
    model = build_model(job).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=job.optim.lr) if legacy else make_optimizer(model, job.optim, device)
    gen = torch.Generator().manual_seed(0)
    data = {
        "rof": torch.randint(
            0, 256, (batch, cfg.num_frames, cfg.channels, patch, patch), dtype=torch.uint8, generator=gen
        ),
        "hr": torch.randint(0, 256, (batch, cfg.channels, 4 * patch, 4 * patch), dtype=torch.uint8, generator=gen),
    }
    step_fn = _legacy_step if legacy else train_step

    def run(step: int) -> object:
        return step_fn(job, model, opt, data, step, device)

    return run


def _round(run: Callable[[int], object], steps: int, start: int, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for s in range(start, start + steps):
        run(s)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", help="cpu | cuda")
    ap.add_argument("--batch", type=int, nargs="+", default=[32, 64], help="patches per step")
    ap.add_argument("--patch", type=int, default=32, help="LR patch side")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "auto"])
    ap.add_argument("--steps", type=int, default=5, help="steps per timed round")
    ap.add_argument("--repeats", type=int, default=5, help="timed rounds")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--jobs", nargs="+", default=["branch_1", "branch_2", "branch_3", "joint"])
    ap.add_argument("--compare", action="store_true", help="also time the step before the CPU tuning")
    args = ap.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(
            f"CUDA is not available on this machine: the GPU figure (--device {args.device} --batch 64 --patch 48 "
            "--precision bf16 on an H100) cannot be measured here.",
            file=sys.stderr,
        )
        return 1
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"TANet-S x4, {args.patch}x{args.patch} LR patches, {args.precision}, {name}, torch {torch.__version__}")
    print(f"best (median) of {args.repeats} rounds of {args.steps} steps; patches/s")
    variants = [("current", False)] + ([("before tuning", True)] if args.compare else [])
    for batch in args.batch:
        for job_name in args.jobs:
            kind, branch = ("joint", 0) if job_name == "joint" else ("branch", int(job_name.split("_")[1]))
            runs = {
                v: _setup(kind, branch, batch, args.patch, args.precision, device, legacy) for v, legacy in variants
            }
            for run in runs.values():
                _round(run, args.warmup, 0, device)
            times: dict[str, list[float]] = {v: [] for v in runs}
            for r in range(args.repeats):  # interleaved, so load changes hit every variant alike
                for v, run in runs.items():
                    times[v].append(_round(run, args.steps, args.warmup + r * args.steps, device))
            cells = []
            for v, ts in times.items():
                best, med = batch * args.steps / min(ts), batch * args.steps / statistics.median(ts)
                cells.append(f"{v} {best:8.1f} ({med:7.1f})")
            print(f"{job_name:9s} batch {batch:3d}: " + "   ".join(cells), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
