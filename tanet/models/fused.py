"""Inference form of the temporal adaptive network: the same function, less work.

1. Aggregation in sub-pixel space. The pixel shuffle is a permutation, so the per-pixel
   softmax and the weighted sum ``Sum_i W_i * F_Bi`` can be taken on the ``(N, r^2, h, w)``
   maps *before* shuffling, with one pixel shuffle at the end instead of N + 1 (on a 2-core
   CPU this removes about a quarter of the non-convolution time).
2. Optional conv fusion (``fuse_convs``, for GPUs). The N SR branches and the temporal
   modulation branch all read the same 2N-1 frame window and, in the ESPCN presets, have
   the same depth and kernel sizes, so their layers can be fused:

- layer 1: one convolution over all 2N-1 frames with ``(N+1) * width`` outputs; each
  sub-network's filters sit at its own frames and are zero elsewhere (branch B_i reads the
  2i-1 centre frames);
- hidden layers: one grouped convolution (``groups = N + 1``);
- output layer: one grouped convolution for the N branches and one for the modulation
  branch, each followed by its pixel shuffle.

   Fusion adds the MACs of the zero taps in layer 1 (22.4 k -> 32 k per LR pixel for
   TANet-S) but runs 3-4 large kernels instead of 12 small ones. On GPUs that pays; on a
   2-core AVX2 CPU grouped convolutions run slower than separate ones (measured by
   ``benchmarks/bench_upscale.py``), so CPUs keep separate convolutions.

The output equals the plain network's up to float rounding (tested). Only ESPCN bodies with
equal widths and kernel sizes across branches and modulation qualify (:func:`can_fuse`).

Shapes: as :class:`~tanet.models.temporal_adaptive.TemporalAdaptiveNetwork`.
"""

from __future__ import annotations

from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from tanet.models.branch import SRBranch, SubPixelNet, check_clip, make_activation
from tanet.models.temporal_adaptive import TANetOutput, TemporalAdaptiveNetwork


def can_fuse(net: TemporalAdaptiveNetwork) -> bool:
    """Whether :class:`FusedTANet` can represent ``net`` exactly."""
    b, m = net.cfg.branch, net.cfg.modulation
    return (
        b.kind == "espcn"
        and m.kind == "espcn"
        and b.widths == m.widths
        and b.kernel_sizes == m.kernel_sizes
        and b.activation == m.activation
        and not m.global_residual
    )


def _conv(layer: nn.Module) -> nn.Conv2d:
    """A layer of an ESPCN body, which holds convolutions and activations only (:func:`can_fuse`)."""
    return cast(nn.Conv2d, layer)


def _bias(conv: nn.Conv2d) -> torch.Tensor:
    """The bias of a convolution made with one (``bias=True``, every convolution here)."""
    return cast(torch.Tensor, conv.bias)


class FusedTANet(nn.Module):
    """An inference-only copy of an ESPCN-based :class:`TemporalAdaptiveNetwork`.

    Args:
        net: the trained network (its weights are copied).
        fuse_convs: fuse the sub-networks' convolutions into grouped ones (GPUs); False
            keeps one convolution per sub-network (CPUs) and only aggregates in sub-pixel space.
    """

    def __init__(self, net: TemporalAdaptiveNetwork, fuse_convs: bool = True) -> None:
        super().__init__()
        if not can_fuse(net):
            raise ValueError("only ESPCN branches and modulation with equal widths/kernels can be fused")
        cfg = net.cfg
        self.cfg = cfg
        self.fuse_convs = fuse_convs
        self.plain = None if fuse_convs else net
        n, c, r, t = cfg.num_branches, cfg.channels, cfg.scale, cfg.num_frames
        # N + 1 SubPixelNets (TemporalAdaptiveNetwork.branches holds SRBranch modules)
        subnets: list[SubPixelNet] = [cast(SRBranch, br).net for br in net.branches] + [net.modulation.net]
        widths, kernels = cfg.branch.widths, cfg.branch.kernel_sizes
        self.global_residual = cfg.branch.global_residual
        self.act = make_activation(cfg.branch.activation)
        layers: list[nn.Conv2d] = []
        with torch.no_grad():
            # Layer 1: every sub-network reads its own frames out of the full window.
            first = nn.Conv2d(t * c, (n + 1) * widths[0], kernels[0], padding=kernels[0] // 2)
            first.weight.zero_()
            for j, sub in enumerate(subnets):
                conv = _conv(sub.body[0])
                frames = 2 * j + 1 if j < n else t
                lo = (t - frames) // 2 * c
                first.weight[j * widths[0] : (j + 1) * widths[0], lo : lo + frames * c] = conv.weight
                _bias(first)[j * widths[0] : (j + 1) * widths[0]] = _bias(conv)
            layers.append(first)
            # Hidden layers: grouped, one group per sub-network.
            for k in range(1, len(widths)):
                conv = nn.Conv2d(
                    (n + 1) * widths[k - 1], (n + 1) * widths[k], kernels[k], padding=kernels[k] // 2, groups=n + 1
                )
                for j, sub in enumerate(subnets):
                    src = _conv(sub.body[2 * k])
                    conv.weight[j * widths[k] : (j + 1) * widths[k]] = src.weight
                    _bias(conv)[j * widths[k] : (j + 1) * widths[k]] = _bias(src)
                layers.append(conv)
            self.hidden = nn.ModuleList(layers)
            k_out, w_last = kernels[-1], widths[-1]
            self.branch_tail = nn.Conv2d(n * w_last, n * c * r * r, k_out, padding=k_out // 2, groups=n)
            for j in range(n):
                self.branch_tail.weight[j * c * r * r : (j + 1) * c * r * r] = subnets[j].tail.weight
                _bias(self.branch_tail)[j * c * r * r : (j + 1) * c * r * r] = _bias(subnets[j].tail)
            self.mod_tail = nn.Conv2d(w_last, n * r * r, k_out, padding=k_out // 2)
            self.mod_tail.load_state_dict(subnets[n].tail.state_dict())
        self.w_last = w_last

    def _subpixel_maps(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Branch maps ``(B, N, C*r^2, h, w)`` and modulation logits ``(B, N, r^2, h, w)``, unshuffled."""
        b, t, c, h, w = frames.shape
        n, r = self.cfg.num_branches, self.cfg.scale
        if self.plain is not None:
            pre = []
            for i, branch in enumerate(self.plain.branches, start=1):
                sub = cast(SRBranch, branch).net
                pre.append(sub.tail(sub.body(self.plain.branch_window(frames, i).reshape(b, (2 * i - 1) * c, h, w))))
            mod = self.plain.modulation.net
            logits = mod.tail(mod.body(frames.reshape(b, t * c, h, w)))
            return torch.stack(pre, 1), logits.view(b, n, r * r, h, w)
        feat = frames.reshape(b, t * c, h, w)
        for conv in self.hidden:
            feat = self.act(conv(feat))
        outs = self.branch_tail(feat[:, : n * self.w_last]).view(b, n, c * r * r, h, w)
        return outs, self.mod_tail(feat[:, n * self.w_last :]).view(b, n, r * r, h, w)

    def forward(self, frames: torch.Tensor, return_all: bool = False) -> torch.Tensor | TANetOutput:
        """Same contract as :meth:`TemporalAdaptiveNetwork.forward`."""
        cfg = self.cfg
        b, t, c, h, w = check_clip(frames, cfg.num_frames, cfg.channels)
        n, r = cfg.num_branches, cfg.scale
        outs, logits = self._subpixel_maps(frames)
        # Softmax over branches and the weighted sum per sub-pixel position == per HR pixel.
        weights = torch.softmax(logits, dim=1).unsqueeze(2)  # (B, N, 1, r^2, h, w)
        outs = outs.view(b, n, c, r * r, h, w)
        sr = F.pixel_shuffle((weights * outs).sum(dim=1).view(b, c * r * r, h, w), r)  # (B, C, rH, rW)
        up = None
        if self.global_residual:
            up = F.interpolate(frames[:, t // 2], scale_factor=r, mode="bicubic", align_corners=False)
            sr = sr + up  # the weights sum to 1, so the shared skip comes out of the sum
        if not return_all:
            return sr
        branches = F.pixel_shuffle(outs.reshape(b, n * c * r * r, h, w), r).view(b, n, c, r * h, r * w)
        if up is not None:
            branches = branches + up[:, None]
        full_weights = F.pixel_shuffle(weights.reshape(b, n * r * r, h, w), r).unsqueeze(2)
        return TANetOutput(sr, branches, full_weights)
