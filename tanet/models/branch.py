"""SR inference branch B_i (Liu et al. 2017, Sec. 3.2 "SR inference branches").

Branch B_i sees the 2i-1 consecutive LR frames centred on the reference frame, stacked on
the channel axis (early fusion: the first layer has (2i-1)*c input channels), and predicts
the HR frame through a sub-pixel (pixel-shuffle) output layer, as ESPCN (Shi et al. 2016):

    conv 5x5 -> 64, ReLU, conv 3x3 -> 32, ReLU, conv 3x3 -> c*r^2, pixel shuffle by r.

Any single-image SR network can serve as a branch (Sec. 3.2), so the body is
configurable: ``espcn`` (the paper's), ``srcnn`` (SRCNN-like: the input is first upsampled
by bicubic interpolation and the convs run at HR, e.g. 9-1-5 filter sizes, no pixel shuffle)
and ``residual`` (EDSR-style residual blocks, used by the deeper TANet-L preset). The temporal modulation branch reuses the same body with N
output maps instead of c (see ``modulation.py``).

Shapes: input ``(B, T*C, H, W)``, output ``(B, C_out, r*H, r*W)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

BranchKind = Literal["espcn", "srcnn", "residual"]
Activation = Literal["relu", "gelu"]


@dataclass(frozen=True)
class BranchConfig:
    """Architecture of one SR inference branch (shared by all N branches of a model)."""

    kind: BranchKind = "espcn"  # body: espcn (paper), srcnn (9-1-5 sizes) or residual
    widths: tuple[int, ...] = (64, 32)  # espcn/srcnn: width of each hidden conv; residual: (width,)
    kernel_sizes: tuple[int, ...] = (5, 3, 3)  # espcn/srcnn: one per conv, output conv last
    activation: Activation = "relu"  # the paper uses ReLU; GELU is the alternative offered
    num_blocks: int = 0  # residual only: number of residual blocks
    global_residual: bool = False  # add a bicubic upsampling of the centre frame to the output

    def __post_init__(self) -> None:
        if not self.widths or any(w <= 0 for w in self.widths):
            raise ValueError(f"widths must be positive, got {self.widths}")
        if any(k <= 0 or k % 2 == 0 for k in self.kernel_sizes):
            raise ValueError(f"kernel_sizes must be odd and positive, got {self.kernel_sizes}")
        if self.kind in ("espcn", "srcnn") and len(self.kernel_sizes) != len(self.widths) + 1:
            raise ValueError(
                f"{self.kind}: need len(kernel_sizes) == len(widths) + 1 "
                f"(one per hidden conv plus the output conv), got {self.kernel_sizes} / {self.widths}"
            )
        if self.kind == "residual" and (len(self.widths) != 1 or self.num_blocks < 1):
            raise ValueError("residual: widths must hold one width and num_blocks must be >= 1")


def make_activation(name: Activation) -> nn.Module:
    """Returns a fresh activation module by name."""
    if name == "relu":
        return nn.ReLU(inplace=True)
    if name == "gelu":
        return nn.GELU()
    raise ValueError(f"unknown activation {name!r}")


class ResidualBlock(nn.Module):
    """conv 3x3 -> act -> conv 3x3, plus the identity (EDSR, no batch norm)."""

    def __init__(self, width: int, activation: Activation) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(width, width, 3, padding=1)
        self.act = make_activation(activation)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(self.act(self.conv1(x)))


class SubPixelNet(nn.Module):
    """A conv body in LR space ending in ``out_channels * r^2`` maps and a pixel shuffle.

    Args:
        in_channels: input channels (frames x colour channels).
        out_channels: HR output channels (c for a branch, N for the modulation branch).
        scale: upscaling factor r.
        cfg: the body's architecture.
    """

    def __init__(self, in_channels: int, out_channels: int, scale: int, cfg: BranchConfig) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.scale = scale
        layers: list[nn.Module] = []
        # SRCNN-like bodies upsample first and run at HR, so they emit C maps, not C*r^2.
        self.upsample_first = cfg.kind == "srcnn"
        shuffle = 1 if self.upsample_first else scale
        if cfg.kind in ("espcn", "srcnn"):
            chans = (in_channels, *cfg.widths)
            for c_in, c_out, k in zip(chans, chans[1:], cfg.kernel_sizes):
                layers += [nn.Conv2d(c_in, c_out, k, padding=k // 2), make_activation(cfg.activation)]
            self.body = nn.Sequential(*layers)
            k_out = cfg.kernel_sizes[-1]
            self.tail = nn.Conv2d(chans[-1], out_channels * shuffle * shuffle, k_out, padding=k_out // 2)
            self.head = None
        else:
            width = cfg.widths[0]
            self.head = nn.Conv2d(in_channels, width, 3, padding=1)
            self.body = nn.Sequential(
                *[ResidualBlock(width, cfg.activation) for _ in range(cfg.num_blocks)],
                nn.Conv2d(width, width, 3, padding=1),
            )
            self.tail = nn.Conv2d(width, out_channels * shuffle * shuffle, 3, padding=1)
        self.shuffle = nn.PixelShuffle(shuffle)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Maps ``(B, in_channels, H, W)`` to ``(B, out_channels, r*H, r*W)``."""
        if self.upsample_first:
            x = F.interpolate(x, scale_factor=self.scale, mode="bicubic", align_corners=False)
        if self.head is not None:
            feat = self.head(x)
            feat = feat + self.body(feat)
        else:
            feat = self.body(x)
        return self.shuffle(self.tail(feat))


class SRBranch(nn.Module):
    """SR inference branch B_i over ``num_frames`` = 2i-1 frames (paper Sec. 3.2).

    Args:
        cfg: the branch architecture.
        num_frames: frames seen by the branch (odd; the centre one is the reference).
        channels: colour channels per frame (1 for Y, 3 for RGB).
        scale: upscaling factor r.
    """

    def __init__(self, cfg: BranchConfig, num_frames: int, channels: int, scale: int) -> None:
        super().__init__()
        if num_frames < 1 or num_frames % 2 == 0:
            raise ValueError(f"a branch sees an odd number of frames, got {num_frames}")
        self.cfg = cfg
        self.num_frames = num_frames
        self.channels = channels
        self.scale = scale
        self.net = SubPixelNet(num_frames * channels, channels, scale, cfg)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """Super-resolves the centre frame.

        Args:
            frames: ``(B, T, C, H, W)`` with T = ``num_frames``, values in [0, 1].

        Returns:
            ``(B, C, r*H, r*W)``.
        """
        b, t, c, h, w = check_clip(frames, self.num_frames, self.channels)
        out = self.net(frames.reshape(b, t * c, h, w))  # early fusion: (B, T*C, H, W)
        if self.cfg.global_residual:
            centre = frames[:, t // 2]
            out = out + F.interpolate(centre, scale_factor=self.scale, mode="bicubic", align_corners=False)
        return out


def check_clip(frames: torch.Tensor, num_frames: int | None, channels: int | None) -> tuple[int, int, int, int, int]:
    """Checks a clip tensor is ``(B, T, C, H, W)`` with the expected T and C.

    Returns:
        The five sizes.

    Raises:
        ValueError: naming the expected and the actual shape.
    """
    if frames.ndim != 5:
        raise ValueError(f"expected a clip (B, T, C, H, W), got shape {tuple(frames.shape)}")
    b, t, c, h, w = frames.shape
    if num_frames is not None and t != num_frames:
        raise ValueError(f"expected T={num_frames} frames in (B, T, C, H, W), got shape {tuple(frames.shape)}")
    if channels is not None and c != channels:
        raise ValueError(f"expected C={channels} channels in (B, T, C, H, W), got shape {tuple(frames.shape)}")
    return b, t, c, h, w
