"""PSNR/SSIM on Y: known values, parity with scikit-image, crop, folders, flicker."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from skimage.metrics import structural_similarity

from tanet.errors import InputError
from tanet.infer.evaluation import evaluate_folders
from tanet.io.frames import write_rgb
from tanet.ops.color import to_tensor
from tanet.ops.metrics import psnr, ssim, temporal_flicker, y_channel, y_psnr_ssim


def _rand(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, shape, generator=torch.Generator().manual_seed(seed)).to(torch.float64)


def test_psnr_known_values() -> None:
    a = _rand(2, 30, 40)
    assert psnr(a, a + 1).tolist() == pytest.approx([48.1308036] * 2, abs=1e-6)  # 20 log10(255)
    assert psnr(a, a + 10).tolist() == pytest.approx([28.1308036] * 2, abs=1e-6)
    assert torch.isinf(psnr(a, a)).all()
    assert psnr(a, a + 1).shape == (2,)


def test_psnr_crop_removes_border() -> None:
    a = _rand(20, 20)
    b = a.clone()
    b[:, :2] += 50  # damage only the two left columns
    assert math.isfinite(psnr(a, b, crop=1).item())
    assert math.isinf(psnr(a, b, crop=2).item())
    with pytest.raises(ValueError, match="crop"):
        psnr(a, b, crop=10)


@pytest.mark.parametrize("shape", [(11, 11), (48, 64), (57, 33)])
def test_ssim_matches_scikit_image(shape: tuple[int, int]) -> None:
    a = _rand(*shape, seed=1)
    b = (a + 25 * torch.randn(shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)).clamp(0, 255)
    # skimage filters with a reflected border and then averages only the SSIM map at least
    # (win_size - 1) / 2 = 5 pixels from the border: that region is our valid filtering.
    expected = structural_similarity(
        a.numpy(), b.numpy(), gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255
    )
    assert ssim(a, b).item() == pytest.approx(expected, abs=1e-6)


def test_ssim_batch_identity_and_crop() -> None:
    a, b = _rand(3, 40, 50, seed=3), _rand(3, 40, 50, seed=4)
    s = ssim(a, b)
    assert s.shape == (3,)
    torch.testing.assert_close(s[1], ssim(a[1], b[1]))
    torch.testing.assert_close(ssim(a, a), torch.ones(3, dtype=torch.float64))
    torch.testing.assert_close(ssim(a, b, crop=4), ssim(a[..., 4:-4, 4:-4], b[..., 4:-4, 4:-4]))
    assert ssim(a, b, crop=4).tolist() != s.tolist()
    with pytest.raises(ValueError, match="11x11"):
        ssim(a, b, crop=15)
    with pytest.raises(ValueError, match="same shape"):
        ssim(a, b[..., :-1])


def test_y_psnr_ssim_uses_rounded_matlab_y() -> None:
    gt = torch.zeros(2, 3, 16, 16, dtype=torch.uint8)
    sr = gt.clone()
    sr[:, 2] = 1  # +1 in blue moves Y by 0.098: rounded Y is unchanged
    p, s = y_psnr_ssim(sr, gt)
    assert torch.isinf(p).all() and torch.equal(s, torch.ones(2, dtype=torch.float64))
    sr[:, 1] = 1  # +1 in green too: Y 16.6 -> 17
    p, _ = y_psnr_ssim(sr, gt)
    assert p.tolist() == pytest.approx([48.1308036] * 2, abs=1e-6)
    assert y_channel(gt).shape == (2, 16, 16)


def _write_clip(folder: Path, images: list[np.ndarray]) -> None:
    for i, img in enumerate(images):
        write_rgb(folder / f"{i:08d}.png", img)


def test_evaluate_folders(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    gt = [rng.integers(0, 256, (24, 20, 3), dtype=np.uint8) for _ in range(3)]
    sr = [np.clip(g.astype(int) + rng.integers(-8, 9, g.shape), 0, 255).astype(np.uint8) for g in gt]
    _write_clip(tmp_path / "gt", gt)
    _write_clip(tmp_path / "sr", sr)
    res = evaluate_folders(tmp_path / "sr", tmp_path / "gt", crop=2)
    assert res["frames"] == 3 and res["crop"] == 2
    p, s = y_psnr_ssim(to_tensor(np.stack(sr)), to_tensor(np.stack(gt)), crop=2)
    assert [f["psnr"] for f in res["per_frame"]] == pytest.approx(p.tolist(), abs=1e-12)
    assert [f["ssim"] for f in res["per_frame"]] == pytest.approx(s.tolist(), abs=1e-12)
    assert res["psnr"] == pytest.approx(p.mean().item()) and res["ssim"] == pytest.approx(s.mean().item())
    assert res["per_frame"][0]["name"] == "00000000.png"


def test_evaluate_folders_mismatch(tmp_path: Path) -> None:
    img = np.zeros((24, 20, 3), dtype=np.uint8)
    _write_clip(tmp_path / "gt", [img, img])
    _write_clip(tmp_path / "sr", [img])
    with pytest.raises(InputError, match=r"sr: 1 frames, but ground truth .*gt has 2"):
        evaluate_folders(tmp_path / "sr", tmp_path / "gt")
    _write_clip(tmp_path / "sr2", [img, img[:-1]])
    with pytest.raises(InputError, match=r"00000001.png: frame is 20x23, ground truth"):
        evaluate_folders(tmp_path / "sr2", tmp_path / "gt")


def test_temporal_flicker() -> None:
    yy, xx = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")
    frames = [127 + 100 * torch.sin((xx - 2.0 * t) / 5) * torch.cos(yy / 7) for t in range(4)]  # moves 2 px/frame
    gt = torch.stack([f.expand(3, 64, 64) for f in frames]).round().to(torch.uint8)
    assert temporal_flicker(gt, gt) == 0.0
    still = gt[:1].expand(4, 3, 64, 64).contiguous()  # SR that does not move
    assert temporal_flicker(still, gt) > 1.0
    with pytest.raises(ValueError, match="T>=2"):
        temporal_flicker(gt[:1], gt[:1])


def test_ssim_is_differentiable() -> None:
    a = _rand(12, 13, seed=6).requires_grad_(True)
    b = _rand(12, 13, seed=7)
    assert torch.autograd.gradcheck(lambda t: ssim(t, b), (a,))
