"""The MLflow pyfunc flavour of a tanet model (imported by MLflow from the model's code path).

Input: a clip ``(T, H, W, 3)`` uint8 RGB, any T >= 1, H and W. Output: ``(T, rH, rW, 3)``
uint8, every frame upscaled (windows at the clip's ends replicate the edge frames); the
scale comes from the model. The weights ship as the ``model_dir`` artifact (the folder
written by training: safetensors + ``model.json``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from mlflow.pyfunc import PythonModel  # not mlflow.pyfunc.PythonModel: mlflow binds .pyfunc to a lazy loader

from tanet.infer.upscaler import Upscaler, flow_settings
from tanet.io.model_files import load_model_dir

ARTIFACT = "model_dir"


class TanetPyfunc(PythonModel):
    """pyfunc wrapper around :class:`tanet.infer.upscaler.Upscaler`."""

    def load_context(self, context: Any) -> None:
        """Loads the weights from the ``model_dir`` artifact onto the best device."""
        device = "cuda" if torch.cuda.is_available() else "cpu"
        model, self.meta = load_model_dir(Path(context.artifacts[ARTIFACT]), device)
        self.upscaler = Upscaler(model, device=device, **flow_settings(self.meta))

    def predict(self, context: Any, model_input: np.ndarray, params: dict[str, Any] | None = None) -> np.ndarray:
        """Upscales every frame of ``model_input`` ``(T, H, W, 3)`` uint8."""
        clip = np.asarray(model_input)
        if clip.ndim != 4 or clip.shape[-1] != 3 or clip.dtype != np.uint8:
            raise ValueError(f"expected a clip (T, H, W, 3) uint8, got {clip.dtype} {clip.shape}")
        return np.stack([r.rgb for r in self.upscaler.upscale_frames(list(clip))])
