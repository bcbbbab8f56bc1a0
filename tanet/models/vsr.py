"""The full video SR model: alignment (none | rof | san) + temporal adaptive network.

- ``none``: the raw LR window goes straight into the temporal adaptive network.
- ``rof``: rectified optical flow alignment (paper Sec. 4.1). It is not differentiable
  and runs on the data side (``tanet.ops.rof``): the window passed to :meth:`VSRNet.forward`
  must already be ROF-aligned. The config records the mode so inference aligns first.
- ``san``: the spatial alignment network (paper Sec. 4.2) aligns each neighbour to the
  centre frame inside the model and returns theta for the regression loss.

Presets (``MODEL_PRESETS``): ``tanet-s`` is paper-faithful (N = 3 ESPCN branches, ESPCN
modulation branch); ``tanet-l`` has deeper residual branches (<= 2 M parameters).

Shapes: window ``(B, 2N-1, C, H, W)`` in [0, 1]; output ``(B, C, rH, rW)``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

import torch
from torch import nn

from tanet.models.branch import BranchConfig, check_clip
from tanet.models.san import SANConfig, SpatialAlignmentNetwork
from tanet.models.temporal_adaptive import TANetConfig, TemporalAdaptiveNetwork

Alignment = Literal["none", "rof", "san"]
Color = Literal["y", "rgb"]


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild a model; stored in every checkpoint and registered model."""

    scale: int = 4  # upscaling factor r
    color: Color = "y"  # y: network on BT.601 Y, Cb/Cr by bicubic; rgb: all three channels
    num_branches: int = 3  # N
    branch: BranchConfig = field(default_factory=BranchConfig)  # SR inference branch body
    modulation: BranchConfig = field(default_factory=BranchConfig)  # temporal modulation body
    alignment: Alignment = "rof"  # none | rof | san
    san: SANConfig = field(default_factory=SANConfig)  # used when alignment == "san"
    align_block: int = 32  # LR block size of ROF/SAN on full frames (= training patch size)

    def __post_init__(self) -> None:
        if self.align_block < 4:
            raise ValueError(f"align_block must be >= 4, got {self.align_block}")
        self.tanet()  # validates scale, channels, branches

    @property
    def channels(self) -> int:
        """Colour channels the network sees per frame."""
        return 1 if self.color == "y" else 3

    @property
    def num_frames(self) -> int:
        """Window length 2N-1."""
        return 2 * self.num_branches - 1

    def tanet(self) -> TANetConfig:
        """The temporal adaptive network's own config."""
        return TANetConfig(self.scale, self.channels, self.num_branches, self.branch, self.modulation)

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (tuples as lists), for JSON and checkpoints."""
        return to_plain(dataclasses.asdict(self))


def to_plain(obj: Any) -> Any:
    """Nested dicts/tuples of a dataclass dump as JSON/YAML-friendly dicts and lists."""
    if isinstance(obj, dict):
        return {k: to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    return obj


class VSROutput(NamedTuple):
    """Model outputs for one batch of windows."""

    sr: torch.Tensor  # (B, C, rH, rW)
    branches: torch.Tensor  # (B, N, C, rH, rW)
    weights: torch.Tensor  # (B, N, 1, rH, rW)
    theta: torch.Tensor | None  # SAN only: (B, 2N-2, 2) or (B, 2N-2, 2, 3); neighbours in time order
    aligned: torch.Tensor  # (B, 2N-1, C, H, W) the window the branches saw


class VSRNet(nn.Module):
    """Alignment + temporal adaptive network, built from a :class:`ModelConfig`."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.tanet = TemporalAdaptiveNetwork(cfg.tanet())
        self.san = SpatialAlignmentNetwork(cfg.san, cfg.channels) if cfg.alignment == "san" else None

    def align(self, frames: torch.Tensor, full_frame: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Applies the SAN to every neighbour (identity for ``none``/``rof``).

        Args:
            frames: ``(B, T, C, H, W)`` window.
            full_frame: align block by block on whole frames (inference) instead of one
                theta per patch (training).

        Returns:
            The aligned window and theta (``None`` unless SAN).
        """
        if self.san is None:
            return frames, None
        b, t, c, h, w = frames.shape
        centre = t // 2
        nbr_idx = [k for k in range(t) if k != centre]
        ref = frames[:, centre : centre + 1].expand(b, t - 1, c, h, w).reshape(b * (t - 1), c, h, w)
        src = frames[:, nbr_idx].reshape(b * (t - 1), c, h, w)
        if full_frame:
            aligned, theta = self.san.align_blocks(ref, src, self.cfg.align_block)
        else:
            aligned, theta = self.san(ref, src)
        aligned = aligned.view(b, t - 1, c, h, w)
        out = torch.cat([aligned[:, :centre], frames[:, centre : centre + 1], aligned[:, centre:]], dim=1)
        return out, theta.view(b, t - 1, *theta.shape[1:])

    def forward(
        self, frames: torch.Tensor, return_all: bool = False, full_frame: bool = False
    ) -> torch.Tensor | VSROutput:
        """Super-resolves the centre frame of each window.

        Args:
            frames: ``(B, 2N-1, C, H, W)`` LR window in [0, 1] (ROF-aligned for ``rof``).
            return_all: return a :class:`VSROutput` instead of the HR frame only.
            full_frame: SAN runs block by block over whole frames (inference).

        Returns:
            ``(B, C, rH, rW)`` or a :class:`VSROutput`.
        """
        check_clip(frames, self.cfg.num_frames, self.cfg.channels)
        aligned, theta = self.align(frames, full_frame)
        if not return_all:
            return self.tanet(aligned)
        out = self.tanet(aligned, return_all=True)
        return VSROutput(out.sr, out.branches, out.weights, theta, aligned)


def tanet_s(scale: int = 4, color: Color = "y", alignment: Alignment = "rof", align_block: int = 32) -> ModelConfig:
    """TANet-S: the paper's network (N = 3, ESPCN branches and modulation branch)."""
    return ModelConfig(scale=scale, color=color, num_branches=3, alignment=alignment, align_block=align_block)


def tanet_l(scale: int = 4, color: Color = "y", alignment: Alignment = "rof", align_block: int = 32) -> ModelConfig:
    """TANet-L: N = 3 residual branches (64 wide, 7 blocks, global bicubic skip), < 2 M parameters."""
    branch = BranchConfig(kind="residual", widths=(64,), kernel_sizes=(3,), num_blocks=7, global_residual=True)
    return ModelConfig(
        scale=scale, color=color, num_branches=3, branch=branch, alignment=alignment, align_block=align_block
    )


MODEL_PRESETS = {"tanet-s": tanet_s, "tanet-l": tanet_l}
