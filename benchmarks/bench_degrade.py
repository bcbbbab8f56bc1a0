"""Throughput of the degradations and metrics on 720x576 frames (Vid4 calendar size), x4.

Usage: ``python benchmarks/bench_degrade.py [--frames 20] [--device cpu|cuda] [--threads N]``

Frames are synthetic uint8 RGB; each op runs once untimed first so the cached weight
matrices are built, then frame by frame (as ``degrade_folder`` and ``evaluate_folders``
do). Prints frames per second.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch

from tanet.ops.degrade import bd_degrade, bi_degrade
from tanet.ops.metrics import psnr, ssim, y_channel, y_psnr_ssim

HEIGHT, WIDTH, SCALE = 576, 720, 4


def _fps(fn: Callable[[torch.Tensor], object], frames: torch.Tensor, device: torch.device) -> float:
    fn(frames[0])  # warm-up: builds the cached matrices
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for frame in frames:
        fn(frame)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return len(frames) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=20)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    gen = torch.Generator().manual_seed(0)
    hr = torch.randint(0, 256, (args.frames, 3, HEIGHT, WIDTH), dtype=torch.uint8, generator=gen).to(device)
    noisy = (hr.int() + torch.randint(-6, 7, hr.shape, generator=gen).to(device)).clamp(0, 255).to(torch.uint8)
    y_a, y_b = y_channel(hr), y_channel(noisy)

    print(f"{WIDTH}x{HEIGHT} RGB, x{SCALE}, {args.frames} frames, {device}, {torch.get_num_threads()} threads")
    rows = [
        ("BI degrade (uint8 RGB)", lambda f: bi_degrade(f, SCALE), hr),
        ("BD degrade (uint8 RGB)", lambda f: bd_degrade(f, SCALE), hr),
        ("PSNR on Y (float64)", lambda i: psnr(y_a[i], y_b[i]), torch.arange(args.frames)),
        ("SSIM on Y (float64)", lambda i: ssim(y_a[i], y_b[i]), torch.arange(args.frames)),
        ("Y + PSNR + SSIM (uint8 RGB)", lambda i: y_psnr_ssim(noisy[i], hr[i]), torch.arange(args.frames)),
    ]
    for name, fn, inputs in rows:
        print(f"{name:30s} {_fps(fn, inputs, device):8.1f} frames/s")


if __name__ == "__main__":
    main()
