"""Temporal adaptive network (Liu et al. 2017, Sec. 3.1-3.3, Fig. 1, loss (2)).

N SR inference branches B_1..B_N, branch B_i on the 2i-1 frames centred on the reference
frame, and a temporal modulation branch T on all 2N-1 frames. The HR estimate is

    x_hat = Sum_{i=1..N} W_i(y) * F_{B_i}(y)        (element-wise product, per pixel)

trained with loss (2): || x_hat - x ||^2. With N = 1 the softmax weight is 1 everywhere
and the network is exactly its single branch.

Shapes: input window ``(B, 2N-1, C, H, W)``; output ``(B, C, r*H, r*W)``; with
``return_all`` also the branch outputs ``(B, N, C, rH, rW)`` and weights ``(B, N, 1, rH, rW)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from torch import nn

from tanet.models.branch import BranchConfig, SRBranch, check_clip
from tanet.models.modulation import TemporalModulationBranch


@dataclass(frozen=True)
class TANetConfig:
    """Temporal adaptive network: N branches and a modulation branch."""

    scale: int = 4  # upscaling factor r (2, 3 or 4)
    channels: int = 1  # colour channels per frame: 1 (Y) or 3 (RGB)
    num_branches: int = 3  # N; branch i sees 2i-1 frames, the window is 2N-1 frames
    branch: BranchConfig = field(default_factory=BranchConfig)  # SR inference branch body
    modulation: BranchConfig = field(default_factory=BranchConfig)  # temporal modulation body

    def __post_init__(self) -> None:
        if self.scale not in (2, 3, 4):
            raise ValueError(f"scale must be 2, 3 or 4, got {self.scale}")
        if self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 (Y) or 3 (RGB), got {self.channels}")
        if self.num_branches < 1:
            raise ValueError(f"num_branches must be >= 1, got {self.num_branches}")

    @property
    def num_frames(self) -> int:
        """Window length 2N-1."""
        return 2 * self.num_branches - 1


class TANetOutput(NamedTuple):
    """Everything the network computes for one window."""

    sr: torch.Tensor  # (B, C, rH, rW) aggregated HR estimate
    branches: torch.Tensor  # (B, N, C, rH, rW) per-branch HR estimates F_Bi
    weights: torch.Tensor  # (B, N, 1, rH, rW) softmax weights W_i


class TemporalAdaptiveNetwork(nn.Module):
    """Temporal adaptive network of N SR branches mixed by a temporal modulation branch."""

    def __init__(self, cfg: TANetConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.branches = nn.ModuleList(
            SRBranch(cfg.branch, 2 * i - 1, cfg.channels, cfg.scale) for i in range(1, cfg.num_branches + 1)
        )
        self.modulation = TemporalModulationBranch(cfg.modulation, cfg.num_branches, cfg.channels, cfg.scale)

    def branch_window(self, frames: torch.Tensor, i: int) -> torch.Tensor:
        """The 2i-1 frames centred on the reference, for branch ``i`` (1-based).

        Args:
            frames: ``(B, 2N-1, C, H, W)``.
            i: branch index in 1..N.
        """
        centre = self.cfg.num_branches - 1
        return frames[:, centre - (i - 1) : centre + i]

    def forward(self, frames: torch.Tensor, return_all: bool = False) -> torch.Tensor | TANetOutput:
        """Super-resolves the centre frame of each window.

        Args:
            frames: ``(B, 2N-1, C, H, W)`` LR window, values in [0, 1].
            return_all: also return branch outputs and weights.

        Returns:
            ``(B, C, rH, rW)``, or a :class:`TANetOutput` when ``return_all``.
        """
        check_clip(frames, self.cfg.num_frames, self.cfg.channels)
        outs = torch.stack(
            [branch(self.branch_window(frames, i)) for i, branch in enumerate(self.branches, start=1)], dim=1
        )  # (B, N, C, rH, rW)
        weights = self.modulation(frames)  # (B, N, 1, rH, rW)
        sr = (weights * outs).sum(dim=1)  # (B, C, rH, rW)
        if return_all:
            return TANetOutput(sr, outs, weights)
        return sr
