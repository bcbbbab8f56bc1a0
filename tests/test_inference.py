"""Whole-frame inference: tiling, edge windows, colour handling, streaming."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tanet.infer.upscaler import StandaloneBranch, Upscaler, edge_window, receptive_radius, weight_map_image
from tanet.io.model_files import BranchModel
from tanet.models import VSRNet, tanet_l, tanet_s


def _frames(n: int, h: int, w: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (h + 8, w + 8, 3), dtype=np.uint8)
    return [np.ascontiguousarray(base[k % 4 : k % 4 + h, 0:w]) for k in range(n)]


def _model(cfg) -> VSRNet:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    net = VSRNet(cfg).eval()
    with torch.no_grad():  # non-trivial weights everywhere (the SAN head starts at zero)
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return net


@pytest.mark.parametrize(
    ("cfg", "tile"),
    [
        (tanet_s(alignment="none"), 16),
        (tanet_s(alignment="rof", align_block=16), 13),
        (tanet_s(alignment="san", align_block=16), 16),
        (tanet_l(alignment="none"), 24),
    ],
)
def test_tiled_equals_untiled(cfg, tile: int) -> None:  # type: ignore[no-untyped-def]
    net = _model(cfg)
    whole, tiled = Upscaler(net), Upscaler(net, tile=tile)
    window = [whole.prepare(f) for f in _frames(cfg.num_frames, 45, 61)]
    x = whole._network_input(window)
    a, b = whole.network(x, want_all=True), tiled.network(x, want_all=True)
    for key in ("sr", "branches", "weights"):
        assert a[key].shape == b[key].shape
        assert (a[key] - b[key]).abs().max() <= 1e-5, key


def test_receptive_radius_covers_the_network() -> None:
    """Changing pixels just outside the radius must not change the centre output pixel."""
    cfg = tanet_s(alignment="none")
    net = _model(cfg)
    r = receptive_radius(cfg)
    x = torch.rand(1, 5, 1, 41, 41)
    y = x.clone()
    y[..., : 20 - r - 1, :] = torch.rand_like(y[..., : 20 - r - 1, :])
    with torch.no_grad():
        a, b = net(x), net(y)
    c = 4 * 20
    assert torch.equal(a[..., c : c + 4, c : c + 4], b[..., c : c + 4, c : c + 4])


def test_every_frame_is_upscaled_with_replicated_edges() -> None:
    net = _model(tanet_s(alignment="none"))
    up = Upscaler(net)
    frames = _frames(7, 20, 24)
    out = list(up.upscale_frames(iter(frames), want_weights=True))
    assert len(out) == 7
    assert out[0].rgb.shape == (80, 96, 3) and out[0].rgb.dtype == np.uint8
    np.testing.assert_allclose(out[3].weights.sum(0), 1.0, atol=1e-5)
    # The first frame's window replicates frame 0 for its missing past.
    first = up.upscale_prepared([up.prepare(f) for f in [frames[0]] * 3 + frames[1:3]])
    np.testing.assert_array_equal(first.rgb, out[0].rgb)
    # A single-frame clip still gives one frame.
    assert len(list(up.upscale_frames([frames[0]]))) == 1


def test_edge_window_indices() -> None:
    assert edge_window([], [0, 1, 2], 2) == [0, 0, 0, 1, 2]
    assert edge_window([3, 4], [5], 2) == [3, 4, 5, 5, 5]
    assert edge_window([1], [2, 3], 2) == [1, 1, 2, 3, 3]
    assert edge_window([], [7], 0) == [7]


def test_y_model_keeps_input_chroma_and_rgb_model_works() -> None:
    net = _model(tanet_s(alignment="none"))
    grey = [np.full((10, 12, 3), 128, np.uint8)] * 5
    out = Upscaler(net).upscale_prepared([Upscaler(net).prepare(f) for f in grey]).rgb
    # Neutral grey input: Cb = Cr = 128, so the output stays grey whatever Y the network says.
    assert np.abs(out.astype(int)[..., 0] - out[..., 1]).max() <= 1
    rgb_net = _model(tanet_s(color="rgb", alignment="none"))
    res = list(Upscaler(rgb_net).upscale_frames(_frames(3, 9, 11)))
    assert res[0].rgb.shape == (36, 44, 3)


def test_standalone_branch_upscales() -> None:
    cfg = tanet_s(alignment="rof", align_block=8)
    branch = BranchModel(cfg, 2).eval()
    up = Upscaler(StandaloneBranch(branch))
    assert up.cfg.alignment == "rof"
    out = list(up.upscale_frames(_frames(4, 16, 16)))
    assert len(out) == 4 and out[0].rgb.shape == (64, 64, 3)


def test_weight_map_colours() -> None:
    w = np.zeros((3, 2, 2), np.float32)
    w[0, 0, 0] = w[1, 0, 1] = w[2, 1, 0] = 1
    w[:, 1, 1] = 1 / 3
    img = weight_map_image(w)
    assert img[0, 0].argmax() == 0 and img[0, 1].argmax() == 1 and img[1, 0].argmax() == 2


def test_bad_frames_are_rejected() -> None:
    up = Upscaler(_model(tanet_s(alignment="none")))
    with pytest.raises(ValueError, match=r"\(H, W, 3\) uint8"):
        up.prepare(np.zeros((4, 4), np.uint8))
    with pytest.raises(ValueError, match="fp16 needs a CUDA"):
        Upscaler(_model(tanet_s(alignment="none")), precision="fp16")


@pytest.mark.parametrize("global_residual", [False, True])
def test_fused_network_equals_the_unfused_one(global_residual: bool) -> None:
    from dataclasses import replace

    from tanet.models.fused import FusedTANet, can_fuse

    cfg = tanet_s(alignment="none")
    cfg = replace(cfg, branch=replace(cfg.branch, global_residual=global_residual))
    net = _model(cfg)
    assert can_fuse(net.tanet) and not can_fuse(_model(tanet_l()).tanet)
    x = torch.rand(2, 5, 1, 19, 27)
    for fuse_convs in (True, False):
        with torch.no_grad():
            ref, got = net.tanet(x, return_all=True), FusedTANet(net.tanet, fuse_convs)(x, return_all=True)
        for a, b in zip(ref, got):
            assert (a - b).abs().max() <= 1e-5
    fused, plain = Upscaler(net), Upscaler(net, fuse=False)
    assert fused.sr_net is not net.tanet and plain.sr_net is net.tanet
    window = [fused.prepare(f) for f in _frames(5, 21, 30)]
    a = fused.network(fused._network_input(window), want_all=True)
    b = plain.network(plain._network_input(window), want_all=True)
    assert all((a[k] - b[k]).abs().max() <= 1e-5 for k in a)


def test_to_rgb_matches_float64_ycbcr2rgb() -> None:
    """The float32 OpenCV path equals MATLAB-style float64 ycbcr2rgb up to rounding ties."""
    from tanet.ops.color import rgb_to_ycbcr, ycbcr_to_rgb
    from tanet.ops.degrade import upscale_integer

    up = Upscaler(_model(tanet_s(alignment="none")))
    frame = _frames(1, 37, 53, seed=3)[0]
    prepared = up.prepare(frame)
    sr = torch.rand(1, 4 * 37, 4 * 53) * 1.2 - 0.1  # also outside [0, 1]: clamped like the float64 path
    got = up.to_rgb(sr, prepared)
    ycc = rgb_to_ycbcr(torch.from_numpy(frame).permute(2, 0, 1).double() / 255)
    hr = torch.cat([sr.double().clamp(0, 1), upscale_integer(ycc[1:], 4)], 0)
    ref = (ycbcr_to_rgb(hr) * 255 + 0.5).floor().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
    assert got.shape == ref.shape and got.dtype == np.uint8
    diff = np.abs(got.astype(int) - ref.astype(int))
    assert diff.max() <= 1 and (diff == 0).mean() > 0.999


def test_compiled_network_equals_the_eager_one() -> None:
    """``compile=True`` (torch.compile, Inductor with freezing) computes the same frames."""
    net = _model(tanet_s(alignment="none"))
    eager, compiled = Upscaler(net), Upscaler(net, compile=True, tile=24)
    window = [eager.prepare(f) for f in _frames(5, 30, 40)]
    x = eager._network_input(window)
    a, b = eager.network(x), compiled.network(x)  # tiles of 3 shapes: 3 compiles
    assert not compiled.sr_net.failed  # type: ignore[union-attr]
    assert (a["sr"] - b["sr"]).abs().max() <= 1e-5


def test_compile_failure_falls_back_to_eager(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Without a working C++ compiler Inductor fails; the upscaler warns and runs eagerly."""
    import subprocess
    import sys
    from pathlib import Path

    code = (
        "import logging, numpy as np, torch, torch._inductor.config as ic\n"
        "logging.basicConfig(level=logging.WARNING)\n"
        "ic.cpp.cxx = ('/nonexistent/c++',)\n"
        "from tanet.infer.upscaler import Upscaler\n"
        "from tanet.models import VSRNet, tanet_s\n"
        "torch.manual_seed(0)\n"
        "net = VSRNet(tanet_s(alignment='none')).eval()\n"
        "up, ref = Upscaler(net, compile=True), Upscaler(net)\n"
        "frames = [np.full((12, 14, 3), 90 + 10 * k, np.uint8) for k in range(5)]\n"
        "a = up.upscale_prepared([up.prepare(f) for f in frames]).rgb\n"
        "b = ref.upscale_prepared([ref.prepare(f) for f in frames]).rgb\n"
        "print('failed', up.sr_net.failed, 'equal', np.array_equal(a, b))\n"
    )
    env = {**__import__("os").environ, "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor")}
    res = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=env,
        cwd=Path(__file__).resolve().parents[1],
        timeout=600,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert "failed True equal True" in res.stdout
    assert "torch.compile failed" in res.stderr and "running the network uncompiled" in res.stderr


def test_inference_aligns_with_the_flow_the_model_was_trained_with() -> None:
    """ROF at inference uses the flow method/preset recorded in the model's params."""
    from tanet.infer.upscaler import flow_settings

    assert flow_settings({}) == {"flow_method": "dis", "flow_preset": "medium"}
    meta = {"params": {"flow": {"method": "farneback", "dis_preset": "fast"}}}
    assert flow_settings(meta) == {"flow_method": "farneback", "flow_preset": "fast"}
    net = _model(tanet_s(alignment="rof", align_block=8))
    frames = _frames(5, 24, 24)
    outs = {}
    for method in ("dis", "farneback"):
        up = Upscaler(net, **flow_settings({"params": {"flow": {"method": method, "dis_preset": "fast"}}}))
        assert (up.flow_method, up.flow_preset) == (method, "fast")
        outs[method] = [r.rgb for r in up.upscale_frames(frames)]
    assert len(outs["dis"]) == len(outs["farneback"]) == 5
    # The recorded method is the one used: the two flows give other shifts, so other frames.
    assert any(not np.array_equal(a, b) for a, b in zip(outs["dis"], outs["farneback"]))
