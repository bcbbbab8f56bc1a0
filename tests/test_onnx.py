"""ONNX export: the graph matches PyTorch under onnxruntime, at sizes unseen at export."""

from __future__ import annotations

from pathlib import Path

import pytest
from model_factory import make_model_dir

from tanet.infer.onnx import export_onnx


@pytest.mark.parametrize("alignment", ["none", "san"])
def test_export_matches_pytorch(tmp_path: Path, alignment: str) -> None:
    pytest.importorskip("onnxruntime")
    model = make_model_dir(tmp_path / "m", alignment=alignment)
    out = export_onnx(model, tmp_path / "tanet.onnx", atol=1e-4)
    assert out.is_file() and out.stat().st_size > 10_000
    import onnxruntime as ort
    import torch

    from tanet.infer.onnx import _FullFrame, parity
    from tanet.io.model_files import load_model_dir

    net, _ = load_model_dir(model)
    err = parity(_FullFrame(net).eval(), out, 5, 1, size=(29, 41))
    assert err <= 1e-4
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    y = sess.run(["sr"], {"window": torch.rand(1, 5, 1, 12, 20).numpy()})[0]
    assert y.shape == (1, 1, 48, 80)


def test_cli_export(tmp_path: Path) -> None:
    from tanet.cli import main

    model = make_model_dir(tmp_path / "m")
    assert main(["export-onnx", str(tmp_path / "x.onnx"), "--model", str(model)]) == 0
    assert (tmp_path / "x.onnx").is_file()
