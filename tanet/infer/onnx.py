"""Export a trained network to ONNX, checked against PyTorch with onnxruntime.

The exported graph is the model's network on an LR window: input ``window``
``(B, 2N-1, C, H, W)`` float32 in [0, 1] (ROF-aligned beforehand for ``rof`` models; SAN runs
inside the graph, block by block), output ``sr`` ``(B, C, rH, rW)``. Batch, H and W are
dynamic. Colour conversion and ROF alignment stay outside the graph (``tanet.infer.upscaler``).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from torch import nn

from tanet.errors import TanetError
from tanet.io.model_files import load_model_dir
from tanet.models.vsr import VSRNet

log = logging.getLogger(__name__)


class _FullFrame(nn.Module):
    """``VSRNet`` in inference form (SAN on the full frame), the graph that is exported."""

    def __init__(self, net: VSRNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, window: torch.Tensor) -> torch.Tensor:
        return self.net(window, full_frame=True)


def export_onnx(model_dir: Path, output: Path, opset: int = 18, check: bool = True, atol: float = 1e-4) -> Path:
    """Writes ``output`` (ONNX) for the model folder and checks it against PyTorch.

    Args:
        model_dir: trained joint model folder.
        output: the ``.onnx`` file to write (atomically).
        opset: ONNX opset.
        check: run onnxruntime on a window of another size and compare with PyTorch.
        atol: largest allowed absolute difference (outputs in [0, 1]).

    Returns:
        The written path.
    """
    net, _ = load_model_dir(model_dir, "cpu")
    if not isinstance(net, VSRNet):
        raise TanetError(f"{model_dir}: only joint models export to ONNX")
    module = _FullFrame(net).eval()
    cfg = net.cfg
    # Batch 2 and sizes that are not multiples of the SAN block, so the exporter keeps batch,
    # H and W symbolic (it specialises 1-sized dims and would drop the padding path).
    example = torch.rand(2, cfg.num_frames, cfg.channels, 2 * cfg.align_block + 5, 3 * cfg.align_block + 3)
    dims = {
        0: torch.export.Dim("batch", min=1, max=1024),
        3: torch.export.Dim("height", min=8, max=16384),
        4: torch.export.Dim("width", min=8, max=16384),
    }
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.name}.tmp")
    with torch.no_grad():
        torch.onnx.export(
            module,
            (example,),
            str(tmp),
            input_names=["window"],
            output_names=["sr"],
            opset_version=opset,
            dynamo=True,
            dynamic_shapes={"window": dims},
            external_data=False,
        )
    if check:
        err = parity(module, tmp, cfg.num_frames, cfg.channels)
        if err > atol:
            tmp.unlink(missing_ok=True)
            raise TanetError(f"ONNX export differs from PyTorch by {err:.2e} (> {atol:.0e})")
        log.info("ONNX parity: max |onnx - torch| = %.2e", err)
    tmp.replace(output)
    return output


def parity(
    module: nn.Module, onnx_path: Path, num_frames: int, channels: int, size: tuple[int, int] = (37, 53)
) -> float:
    """Max |onnxruntime - PyTorch| on a random window of an odd size unseen at export."""
    import onnxruntime as ort

    x = torch.rand(2, num_frames, channels, *size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = module(x).numpy()
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    out = session.run(["sr"], {"window": x.numpy()})[0]
    return float(np.abs(out - ref).max())
