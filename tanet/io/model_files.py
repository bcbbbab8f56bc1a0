"""Model folders: the weights (safetensors), ``model.json`` and ``history.json`` of a trained model.

``model.json`` holds the model config (enough to rebuild the network), what it was trained
for (scale, degradation, colour, alignment), its validation scores, the params that made it
and the licences of its training data. This module is light (no data or training imports)
so registered models load it alone.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from tanet.config import model_config_from_dict
from tanet.errors import TanetError
from tanet.io.atomic import atomic_dir, atomic_write_json
from tanet.models import SRBranch, VSRNet
from tanet.models.vsr import ModelConfig

CKPT_WEIGHTS = "model.safetensors"
MODEL_META = "model.json"
HISTORY = "history.json"


class BranchModel(nn.Module):
    """Branch B_i alone: takes the whole window and uses its centre 2i-1 frames."""

    def __init__(self, cfg: ModelConfig, branch: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.index = branch
        self.branch = SRBranch(cfg.branch, 2 * branch - 1, cfg.channels, cfg.scale)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """``(B, 2N-1, C, h, w)`` -> ``(B, C, r h, r w)``."""
        centre = frames.shape[1] // 2
        return self.branch(frames[:, centre - (self.index - 1) : centre + self.index])


def write_model_dir(
    out_dir: Path, model: nn.Module, job: Any, meta: dict[str, Any], history: list[dict[str, Any]]
) -> None:
    """Writes ``model.safetensors``, ``model.json`` and ``history.json`` into a folder, atomically."""
    with atomic_dir(out_dir) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(tmp / CKPT_WEIGHTS))
        atomic_write_json(
            tmp / MODEL_META,
            {"format": 1, "kind": job.kind, "branch": job.branch, "model": job.model.to_dict(), **meta},
        )
        atomic_write_json(tmp / HISTORY, history)


def load_model_dir(path: Path, device: torch.device | str = "cpu") -> tuple[VSRNet | BranchModel, dict[str, Any]]:
    """Loads a model folder written by :func:`write_model_dir` (joint or branch).

    Raises:
        TanetError: naming the file at fault: ``model.json`` missing, not JSON or without a
            valid model config; weights unreadable (damaged, or not safetensors: pickles are
            never loaded), not fitting the config, or holding NaN/inf values.
    """
    path = Path(path)
    meta_path = path / MODEL_META
    if not meta_path.is_file():
        raise TanetError(f"{path}: not a tanet model folder ({MODEL_META} missing)")
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise TanetError(f"{meta_path}: not valid JSON ({err})") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("model"), dict):
        raise TanetError(f"{meta_path}: no 'model' section (the network's config); not a tanet model.json")
    try:
        cfg = model_config_from_dict(meta["model"])
        kind, branch = meta.get("kind", "joint"), int(meta.get("branch", 0))
        if kind not in ("joint", "branch"):
            raise ValueError(f"kind must be 'joint' or 'branch', got {kind!r}")
        model: VSRNet | BranchModel = BranchModel(cfg, branch) if kind == "branch" else VSRNet(cfg)
    except (TanetError, ValueError, TypeError) as err:
        raise TanetError(f"{meta_path}: invalid model config: {err}") from None
    weights_path = path / CKPT_WEIGHTS
    try:
        weights = load_file(str(weights_path))
    except Exception as err:  # noqa: BLE001 - safetensors raises several types for a damaged file
        raise TanetError(f"{weights_path}: not a readable safetensors file ({err})") from None
    bad = sorted(k for k, v in weights.items() if v.is_floating_point() and not torch.isfinite(v).all())
    if bad:
        raise TanetError(f"{weights_path}: non-finite weights (NaN or inf) in {', '.join(bad[:3])}")
    try:
        model.load_state_dict(weights)
    except RuntimeError as err:
        raise TanetError(
            f"{weights_path}: weights do not fit the model config in {MODEL_META}: {str(err).splitlines()[0]}"
        ) from None
    return model.to(device).eval(), meta
