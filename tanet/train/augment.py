"""Per-step augmentation: the 8 dihedral symmetries (flips and transposes) of a batch.

Stateless: the codes come from a generator seeded by (seed, step, rank), so a resumed run
augments exactly as an uninterrupted one.
"""

from __future__ import annotations

import torch

HFLIP, VFLIP, TRANSPOSE = 1, 2, 4  # bits of a dihedral code 0..7, applied in this order


def dihedral(x: torch.Tensor, code: int) -> torch.Tensor:
    """Applies dihedral transform ``code`` to the last two (square) axes: h-flip, v-flip, transpose."""
    dims = [d for bit, d in ((HFLIP, -1), (VFLIP, -2)) if code & bit]
    if dims:
        x = x.flip(dims)
    return x.transpose(-1, -2) if code & TRANSPOSE else x


def dihedral_theta(theta: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """Transforms shifts ``(B, K, 2)`` (dx, dy) like :func:`dihedral` transforms the frames.

    A horizontal flip negates dx, a vertical flip negates dy and a transpose swaps them, so
    theta_hat stays the shift that aligns the transformed neighbour with the transformed
    centre (``aligned[y, x] = nbr[y + dy, x + dx]``).
    """
    sx = 1 - 2 * (codes & HFLIP).ne(0).to(theta.dtype)  # (B,)
    sy = 1 - 2 * (codes & VFLIP).ne(0).to(theta.dtype)
    th = theta * torch.stack([sx, sy], -1)[:, None, :]
    return torch.where((codes & TRANSPOSE).ne(0)[:, None, None], th.flip(-1), th)


def apply_dihedral(batch: dict[str, torch.Tensor], codes: torch.Tensor) -> dict[str, torch.Tensor]:
    """Applies per-sample dihedral codes ``(B,)`` to the pixel fields and theta of a batch.

    Samples are grouped by code, so each field is gathered, transformed and scattered once
    per distinct code (at most 8 times) instead of being cloned and masked per operation.
    """
    out = dict(batch)
    groups = [(c, (codes == c).nonzero().squeeze(1)) for c in codes.unique().tolist()]
    for key in ("lr", "rof", "hr"):
        if key not in batch:
            continue
        x = batch[key]
        if x.shape[-1] != x.shape[-2]:
            raise ValueError(f"augment needs square patches, got {key} of shape {tuple(x.shape)}")
        if len(groups) == 1:
            out[key] = dihedral(x, groups[0][0]).contiguous()
            continue
        y = torch.empty_like(x)
        for code, idx in groups:
            y.index_copy_(0, idx, dihedral(x.index_select(0, idx), code))
        out[key] = y
    if "theta" in batch:
        out["theta"] = dihedral_theta(batch["theta"], codes)
    return out


def augment(batch: dict[str, torch.Tensor], gen: torch.Generator) -> dict[str, torch.Tensor]:
    """Random per-sample flips and transposes (the 8 dihedral symmetries), theta transformed alike.

    Runs on the loader's uint8 tensors (4x fewer bytes than float); codes come from ``gen``.
    """
    n = next(iter(batch.values())).shape[0]
    return apply_dihedral(batch, torch.randint(0, 8, (n,), generator=gen))
