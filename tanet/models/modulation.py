"""Temporal modulation branch T (Liu et al. 2017, Sec. 3.2 "Temporal modulation branch").

The branch looks at the largest temporal scale, all 2N-1 frames, and predicts N
pixel-wise weight maps at HR resolution, one per SR inference branch. A softmax over the
branch axis makes the weights of each pixel sum to one (as in the published
re-implementation), so the aggregation Sum_i W_i * F_Bi is a per-pixel convex combination
of the branch estimates: the network chooses, per pixel, which temporal scale to trust.

Default body (the convention pinned for comparable costs): ESPCN-shaped, conv 5x5 -> 64,
ReLU, conv 3x3 -> 32, ReLU, conv 3x3 -> N*r^2, pixel shuffle by r, softmax over N.

Shapes: input ``(B, 2N-1, C, H, W)``, output ``(B, N, 1, r*H, r*W)``.
"""

from __future__ import annotations

import torch
from torch import nn

from tanet.models.branch import BranchConfig, SubPixelNet, check_clip


class TemporalModulationBranch(nn.Module):
    """Predicts per-pixel branch weights W_1..W_N from the whole 2N-1 frame window.

    Args:
        cfg: body architecture (ESPCN-shaped by default).
        num_branches: N, the number of SR inference branches to weight.
        channels: colour channels per frame.
        scale: upscaling factor r.
    """

    def __init__(self, cfg: BranchConfig, num_branches: int, channels: int, scale: int) -> None:
        super().__init__()
        self.num_branches = num_branches
        self.num_frames = 2 * num_branches - 1
        self.channels = channels
        self.net = SubPixelNet(self.num_frames * channels, num_branches, scale, cfg)

    def start_uniform(self) -> None:
        """Zeroes the output layer, so W_i = 1/N everywhere until the branch trains.

        Every logit is 0 and the softmax gives exactly 1/N: a joint network built on
        pretrained branches starts as their uniform mixture (the fixed-mixing ablation's
        model) and learns per-pixel weights from there. The output layer's weights still
        get gradients (the body's features times the logits' gradient), so the body starts
        learning once the output layer has moved.
        """
        tail = self.net.tail
        nn.init.zeros_(tail.weight)
        if tail.bias is not None:
            nn.init.zeros_(tail.bias)

    def fix_uniform(self) -> None:
        """Freezes the branch at W_i = 1/N everywhere: the fixed-mixing ablation.

        The output layer starts uniform (:meth:`start_uniform`) and no parameter of the
        branch trains any more. The network keeps its architecture, so every tool that loads
        a TANet loads the ablation too.
        """
        self.start_uniform()
        for p in self.parameters():
            p.requires_grad_(False)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """Returns softmax weights ``(B, N, 1, r*H, r*W)`` that sum to 1 over N.

        Args:
            frames: ``(B, 2N-1, C, H, W)``.
        """
        b, t, c, h, w = check_clip(frames, self.num_frames, self.channels)
        logits = self.net(frames.reshape(b, t * c, h, w))  # (B, N, rH, rW)
        return torch.softmax(logits, dim=1).unsqueeze(2)  # (B, N, 1, rH, rW)
