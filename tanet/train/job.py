"""A training job (one branch with loss (1), or the joint network with loss (2)) and what follows from it alone: its network, its input field, its seeds and its autocast."""

from __future__ import annotations

import threading
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from tanet.config import OptimParams
from tanet.io.model_files import BranchModel
from tanet.models import VSRNet
from tanet.models.vsr import ModelConfig
from tanet.ops.seeds import seed_of

# Model initialisation seeds and draws from the global RNG; branches pretrained on threads
# (``pretrain.parallel``) would interleave their draws without this lock.
_INIT_LOCK = threading.Lock()


@dataclass(frozen=True)
class Job:
    """One training job: a single branch (loss 1) or the joint network (loss 2)."""

    kind: Literal["branch", "joint"]
    branch: int  # 1..N for kind == "branch"; 0 for the joint network
    model: ModelConfig
    optim: OptimParams
    san_lambda: float = 0.0
    seed: int = 0

    @property
    def name(self) -> str:
        """``branch_<i>`` or ``joint``."""
        return f"branch_{self.branch}" if self.kind == "branch" else "joint"


def build_model(job: Job) -> nn.Module:
    """The network a job trains, initialised from the global RNG seeded by the job (thread-safe)."""
    with _INIT_LOCK:
        torch.manual_seed(job_seed(job.seed, job.name, "init"))
        return BranchModel(job.model, job.branch) if job.kind == "branch" else VSRNet(job.model)


def input_field(job: Job) -> str:
    """Which loader field feeds the network: ``rof`` (pre-aligned) or ``lr`` (raw)."""
    if job.model.alignment == "rof" or (job.kind == "branch" and job.model.alignment == "san"):
        return "rof"
    return "lr"


def job_seed(*keys: Any) -> int:
    """A 32-bit seed of a job's named random stream (init, data order, augmentation)."""
    return seed_of(*keys, nbytes=4)


# -- loss and one optimisation step -------------------------------------------------------
def autocast(device: torch.device, precision: str) -> Any:
    use_bf16 = precision == "bf16" or (precision == "auto" and device.type == "cuda")
    return torch.autocast(device.type, dtype=torch.bfloat16) if use_bf16 else nullcontext()
