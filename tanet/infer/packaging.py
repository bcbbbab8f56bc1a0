"""What a registered tanet model carries: the pyfunc, its code, signature, example and requirements.

Used by the ``register`` stage (:mod:`tanet.stages.register`). The model is logged as
MLflow models-from-code (:mod:`tanet.infer.pyfunc_code`) with only the inference code of
``tanet`` (the import closure of :mod:`tanet.infer.pyfunc`), an explicit tensor signature with
free T, H and W (``(-1, -1, -1, 3)`` uint8 in and out), an input example cut from real frames
and requirements as ranges.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from tanet.io.imports import PACKAGE_ROOT, import_closure, package_inits

# What the pyfunc imports, as ranges a CPU or a CUDA machine can install: this machine's
# exact pins (torch==2.13.0 is a local CPU wheel here) would not resolve on a GPU host.
REQUIREMENTS = ("torch>=2.4,<3", "numpy>=1.26,<3", "opencv-python-headless>=4.8", "safetensors>=0.4", "pyyaml>=6")
PYFUNC_MODULE = "tanet/infer/pyfunc.py"
PYFUNC_CODE = "tanet/infer/pyfunc_code.py"  # models-from-code: nothing pickled


def inference_code(dest: Path) -> Path:
    """Copies the inference code of ``tanet`` (what :mod:`tanet.infer.pyfunc` imports) into ``dest/tanet``.

    Returns:
        The copied package folder, for ``code_paths``: no training, stages, tracking or CLI code.
    """
    files = import_closure([PYFUNC_MODULE, PYFUNC_CODE])
    for rel in sorted(files | package_inits(files)):
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(PACKAGE_ROOT / rel, target)
    return dest / "tanet"


def input_example(clip_lr: np.ndarray | None, num_branches: int, size: int = 32) -> np.ndarray:
    """An input example: a window's worth of LR frames ``(2N-1, size, size, 3)`` uint8.

    Args:
        clip_lr: LR frames ``(T, H, W, 3)`` uint8 of a validation clip (their centre crop is
            the example); None: a smooth synthetic gradient (no clip at hand, ``tanet register``).
        num_branches: N; the example holds ``2N - 1`` frames, one full temporal window.
        size: side of the crop.
    """
    t = 2 * num_branches - 1
    if clip_lr is not None and clip_lr.ndim == 4 and clip_lr.shape[0] >= 1:
        frames = np.asarray(clip_lr[:t], np.uint8)
        frames = np.concatenate([frames, np.repeat(frames[-1:], t - len(frames), 0)]) if len(frames) < t else frames
        h, w = frames.shape[1:3]
        y, x = max(0, (h - size) // 2), max(0, (w - size) // 2)
        return np.ascontiguousarray(frames[:, y : y + size, x : x + size])
    ramp = np.linspace(0, 255, size, dtype=np.float32)
    frame = np.stack([np.add.outer(ramp, ramp) / 2, np.tile(ramp, (size, 1)), np.tile(ramp[:, None], (1, size))], -1)
    return np.repeat(frame.astype(np.uint8)[None], t, 0)


def pyfunc_signature() -> Any:
    """``(T, H, W, 3)`` uint8 in and ``(T, rH, rW, 3)`` uint8 out, every size free."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Schema, TensorSpec

    spec = TensorSpec(np.dtype(np.uint8), (-1, -1, -1, 3))
    return ModelSignature(inputs=Schema([spec]), outputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, -1, -1, 3))]))


def log_pyfunc(
    mlflow: Any,
    model_dir: Path,
    *,
    model_name: str,
    num_branches: int,
    example_lr: np.ndarray | None,
    metrics: dict[str, float],
) -> Any:
    """Logs ``model_dir`` as a registered pyfunc in the active run; returns MLflow's model info.

    Args:
        mlflow: the configured ``mlflow`` module (a run is active).
        model_dir: the model folder (weights + ``model.json``), shipped as the artifact.
        model_name: registered model name.
        num_branches: N (the example holds one window of ``2N - 1`` frames).
        example_lr: LR frames ``(T, H, W, 3)`` of a validation clip for the input example.
        metrics: figures logged as the logged model's metrics.
    """
    from tanet.infer.pyfunc import ARTIFACT

    with tempfile.TemporaryDirectory() as tmp:
        code = inference_code(Path(tmp))
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=str(code.parent / PYFUNC_CODE),
            artifacts={ARTIFACT: str(Path(model_dir).resolve())},
            code_paths=[str(code)],
            signature=pyfunc_signature(),
            input_example=input_example(example_lr, num_branches),
            pip_requirements=list(REQUIREMENTS),
            registered_model_name=model_name,
        )
    if metrics:
        mlflow.log_metrics(metrics, model_id=info.model_id)
    return info
