"""Device choice and DDP set-up (``torchrun``: gloo on CPU, NCCL on CUDA)."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

from tanet.errors import TanetError


# -- the loop -----------------------------------------------------------------------------
def dist_info() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """``auto`` picks CUDA when present, else CPU; under DDP each rank takes its LOCAL_RANK GPU.

    A ``torch.device`` (already resolved, e.g. by :func:`setup_distributed`) is returned as is.
    """
    if isinstance(name, torch.device):
        return name
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise TanetError(f"device {name} requested but CUDA is not available")
    if name == "cuda":
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device(name)


# -- command line (a plain module: runs where only torch & co. are installed) -------------
def setup_distributed(device_name: str) -> torch.device:
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        device = resolve_device(device_name)
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        return device
    return resolve_device(device_name)
