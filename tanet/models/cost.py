"""Model cost: parameter counts and multiply-accumulates (MACs) of conv layers."""

from __future__ import annotations

import torch
from torch import nn


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@torch.no_grad()
def count_macs(model: nn.Module, *inputs: torch.Tensor, **kwargs: object) -> int:
    """Counts conv and linear MACs of one forward pass (hooks; exact for conv nets).

    A conv's MACs are ``out_elements * (in_channels / groups) * kh * kw``; element-wise
    ops, pixel shuffle, softmax and sampling are not counted (they are not MACs).

    Args:
        model: the network.
        *inputs: its positional inputs.
        **kwargs: its keyword inputs.

    Returns:
        Total MACs.
    """
    total = 0

    def hook(mod: nn.Module, _inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        nonlocal total
        if isinstance(mod, nn.Conv2d):
            kh, kw = mod.kernel_size
            total += out.numel() * (mod.in_channels // mod.groups) * kh * kw
        elif isinstance(mod, nn.Linear):
            total += out.numel() * mod.in_features

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        model(*inputs, **kwargs)
    finally:
        for h in handles:
            h.remove()
    return total
