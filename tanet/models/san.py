"""Spatial alignment network, SAN (Liu et al. 2017, Sec. 4.2, Fig. 3).

The SAN takes one LR reference frame and one LR neighbour (the source) and outputs the
neighbour aligned to the reference: a localisation net regresses a spatial transform
theta_ST, and the neighbour is resampled by differentiable bilinear sampling (a spatial
transformer). It trains jointly with the SR network; the rectified-optical-flow transform
theta_hat supervises it through the regression term

    lambda * Sum_j Sum_{k in N_j} || theta_hat^(k) - theta^(k) ||^2.

Units of theta (lambda is defined on them):
- ``translation`` (default): theta = (tx, ty) in LR pixels, meaning
  ``aligned(x, y) = neighbour(x + tx, y + ty)``; the ROF shift is exactly this quantity.
- ``affine``: theta is the 2x3 matrix of :func:`torch.nn.functional.affine_grid` in the
  normalised coordinates of the aligned block (align_corners=False, x and y in [-1, 1]),
  identity = [[1, 0, 0], [0, 1, 0]]; a shift of (tx, ty) pixels on a W x H block is
  [[1, 0, 2 tx / W], [0, 1, 2 ty / H]] (see :func:`translation_to_affine`).

The network sees patches in training. On full frames it runs on a grid of blocks
(``align_blocks``): one theta per block, the block's pixels sampled from the whole
neighbour frame (so content just outside a block is used, not border padding).

Shapes: ``ref``/``src`` ``(B, C, H, W)``; theta ``(B, 2)`` or ``(B, 2, 3)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from tanet.models.branch import Activation, make_activation


@dataclass(frozen=True)
class SANConfig:
    """Spatial alignment network: localisation net and transform kind."""

    mode: Literal["translation", "affine"] = "translation"  # what theta parameterises
    widths: tuple[int, ...] = (32, 64, 64, 64)  # localisation convs; all but the first stride 2
    hidden: int = 64  # width of the fully connected layer before theta
    activation: Activation = "relu"

    def __post_init__(self) -> None:
        if not self.widths or any(w <= 0 for w in self.widths) or self.hidden <= 0:
            raise ValueError(f"SAN widths/hidden must be positive, got {self.widths}/{self.hidden}")


def translation_to_affine(shift: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Converts pixel shifts ``(B, 2)`` (tx, ty) to normalised affine matrices ``(B, 2, 3)``."""
    theta = torch.zeros(shift.shape[0], 2, 3, dtype=shift.dtype, device=shift.device)
    theta[:, 0, 0] = 1.0
    theta[:, 1, 1] = 1.0
    theta[:, 0, 2] = 2.0 * shift[:, 0] / width
    theta[:, 1, 2] = 2.0 * shift[:, 1] / height
    return theta


def warp(src: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Resamples ``src`` ``(B, C, H, W)`` with theta (pixel shift ``(B, 2)`` or affine ``(B, 2, 3)``)."""
    b, _, h, w = src.shape
    affine = translation_to_affine(theta, h, w) if theta.ndim == 2 else theta
    grid = F.affine_grid(affine.to(src.dtype), [b, 1, h, w], align_corners=False)
    return F.grid_sample(src, grid, mode="bilinear", padding_mode="border", align_corners=False)


class SpatialAlignmentNetwork(nn.Module):
    """Localisation net + spatial transformer aligning a neighbour to the reference.

    Args:
        cfg: architecture.
        channels: colour channels per frame.
    """

    def __init__(self, cfg: SANConfig, channels: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.channels = channels
        layers: list[nn.Module] = []
        c_in = 2 * channels  # reference and source stacked
        for k, width in enumerate(cfg.widths):
            stride = 1 if k == 0 else 2
            layers += [nn.Conv2d(c_in, width, 5 if k == 0 else 3, stride=stride, padding=2 if k == 0 else 1)]
            layers += [make_activation(cfg.activation)]
            c_in = width
        self.features = nn.Sequential(*layers)
        self.fc = nn.Sequential(nn.Linear(c_in, cfg.hidden), make_activation(cfg.activation))
        self.theta_dim = 2 if cfg.mode == "translation" else 6
        self.head = nn.Linear(cfg.hidden, self.theta_dim)
        # Start at the identity transform so untrained alignment passes frames through.
        nn.init.zeros_(self.head.weight)
        with torch.no_grad():
            self.head.bias.copy_(torch.zeros(2) if cfg.mode == "translation" else torch.tensor([1.0, 0, 0, 0, 1.0, 0]))

    def _check(self, ref: torch.Tensor, src: torch.Tensor) -> None:
        if ref.ndim != 4 or ref.shape != src.shape or ref.shape[1] != self.channels:
            raise ValueError(
                f"SAN expects ref and src (B, {self.channels}, H, W) of equal shape, "
                f"got {tuple(ref.shape)} and {tuple(src.shape)}"
            )

    def estimate(self, ref: torch.Tensor, src: torch.Tensor) -> torch.Tensor:
        """Regresses theta for each pair: ``(B, 2)`` pixel shift or ``(B, 2, 3)`` affine."""
        self._check(ref, src)
        feat = self.features(torch.cat([ref, src], dim=1)).mean(dim=(2, 3))  # (B, C_feat)
        theta = self.head(self.fc(feat))
        return theta if self.cfg.mode == "translation" else theta.view(-1, 2, 3)

    def forward(self, ref: torch.Tensor, src: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Aligns ``src`` to ``ref`` (patch level).

        Args:
            ref: ``(B, C, H, W)`` reference frames/patches.
            src: ``(B, C, H, W)`` neighbours to align.

        Returns:
            ``(aligned, theta)``: aligned ``(B, C, H, W)`` and theta.
        """
        theta = self.estimate(ref, src)
        return warp(src, theta), theta

    def align_blocks(self, ref: torch.Tensor, src: torch.Tensor, block: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Aligns whole frames block by block (one theta per block, sampled from the full frame).

        Blocks tile the frame from the top-left. When the size is not a multiple of
        ``block`` the frames are padded by edge replication for the estimate only, so the
        last row/column of blocks sees its real pixels plus replicated ones; sampling
        always reads the real neighbour frame (border-clamped).

        Args:
            ref: ``(B, C, H, W)`` reference frames.
            src: ``(B, C, H, W)`` neighbours.
            block: block size in LR pixels (the training patch size).

        Returns:
            ``(aligned (B, C, H, W), theta (B, nby, nbx, 2) or (B, nby, nbx, 2, 3))``.
        """
        self._check(ref, src)
        b, c, h, w = src.shape
        nby, nbx = (h + block - 1) // block, (w + block - 1) // block  # ceil; exports as plain integer division
        pad = (0, nbx * block - w, 0, nby * block - h)
        # Always pad (possibly by zero): no data-dependent branch, so exported graphs keep H, W free.
        pairs = F.pad(torch.cat([ref, src], dim=1), pad, mode="replicate")
        # (B, 2C, nby*bl, nbx*bl) -> (B*nby*nbx, 2C, bl, bl): every block is one batch item.
        tiles = pairs.view(b, 2 * c, nby, block, nbx, block).permute(0, 2, 4, 1, 3, 5)
        tiles = tiles.reshape(b * nby * nbx, 2 * c, block, block)
        theta = self.estimate(tiles[:, :c], tiles[:, c:])
        affine = translation_to_affine(theta, block, block) if theta.ndim == 2 else theta
        # Sampling grid: each block's normalised grid mapped to full-frame pixel coordinates.
        local = F.affine_grid(affine.to(src.dtype), [affine.shape[0], 1, block, block], align_corners=False)
        px = (local[..., 0] + 1) * block / 2 - 0.5  # (B*nby*nbx, bl, bl) block pixels
        py = (local[..., 1] + 1) * block / 2 - 0.5
        offs = torch.arange(nbx, device=src.device, dtype=src.dtype) * block
        offs_y = torch.arange(nby, device=src.device, dtype=src.dtype) * block
        px = px.view(b, nby, nbx, block, block) + offs.view(1, 1, nbx, 1, 1)
        py = py.view(b, nby, nbx, block, block) + offs_y.view(1, nby, 1, 1, 1)
        px = px.permute(0, 1, 3, 2, 4).reshape(b, nby * block, nbx * block)[:, :h, :w]
        py = py.permute(0, 1, 3, 2, 4).reshape(b, nby * block, nbx * block)[:, :h, :w]
        grid = torch.stack([2 * (px + 0.5) / w - 1, 2 * (py + 0.5) / h - 1], dim=-1)
        aligned = F.grid_sample(src, grid, mode="bilinear", padding_mode="border", align_corners=False)
        return aligned, theta.view(b, nby, nbx, *theta.shape[1:])
