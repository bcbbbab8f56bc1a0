"""Small joint model folders with random weights, written as training writes them (for registry and upscale tests)."""

from __future__ import annotations

from pathlib import Path


def make_model_dir(path: Path, alignment: str = "none", seed: int = 0, scale: int = 4) -> Path:
    """Writes a small joint model folder (random weights) as training would."""
    import torch

    from tanet.config import OptimParams
    from tanet.io.model_files import write_model_dir
    from tanet.models import VSRNet, tanet_s
    from tanet.train.job import Job

    torch.manual_seed(seed)
    cfg = tanet_s(scale=scale, alignment=alignment, align_block=16)
    net = VSRNet(cfg)
    job = Job("joint", 0, cfg, OptimParams(steps=1))
    write_model_dir(
        path,
        net,
        job,
        {
            "scale": scale,
            "degradation": "BI",
            "val_psnr": 20.0,
            "val_psnr_bicubic": 19.0,
            "licences": ["test"],
            "patches_sha256": "0" * 64,
        },
        [],
    )
    return path


def weight_only_branch(net: object, i: int) -> None:
    """Sets a joint network's modulation so every pixel's weight is on branch ``i`` (softmax of ±1000)."""
    import torch

    tail = net.tanet.modulation.net.tail  # type: ignore[attr-defined]
    r2 = net.cfg.scale**2  # type: ignore[attr-defined]
    with torch.no_grad():
        tail.weight.zero_()
        tail.bias.fill_(-1000.0)
        tail.bias[(i - 1) * r2 : i * r2] = 1000.0
