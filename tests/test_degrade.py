"""BI/BD degradations and MATLAB imresize: reference frames, shapes, gradients, replay."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tanet.errors import InputError
from tanet.io.frames import list_frames, read_rgb, write_rgb
from tanet.ops.color import to_numpy, to_tensor
from tanet.ops.degrade import (
    Degradation,
    _resize_matrix,
    apply_degradation,
    bd_degrade,
    bi_degrade,
    imresize,
    mod_crop,
    upscale_integer,
)
from tanet.stages.degrade import degrade_folder

# CI clones the repo next to ../shared; locally it is /work/shared.
SHARED = Path(__file__).resolve().parents[1].parent / "shared"
VID4 = SHARED / "data" / "vid4"

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA"))]


def gaussian_kernel2d(size: int, sigma: float) -> torch.Tensor:
    """The BD tests' reference: normalised 2-D Gaussian, MATLAB ``fspecial('gaussian', size, sigma)``, float64.

    ``k(i, j) ∝ exp(-(i² + j²) / (2 sigma²))`` for ``i, j`` in ``-(size-1)/2 .. (size-1)/2``,
    summing to 1.

    """
    if size < 1 or size % 2 == 0:
        raise ValueError(f"gaussian_kernel2d expects an odd size, got {size}")
    if not sigma > 0:
        raise ValueError(f"gaussian_kernel2d expects sigma > 0, got {sigma}")
    half = (size - 1) / 2
    t = torch.arange(size, dtype=torch.float64) - half
    k = torch.exp(-(t[:, None] ** 2 + t[None, :] ** 2) / (2 * sigma**2))
    # MATLAB fspecial('gaussian') zeroes values below eps * max before normalising.
    k = torch.where(k < torch.finfo(torch.float64).eps * k.max(), torch.zeros_like(k), k)
    return k / k.sum()


def _load_clip(folder: Path) -> torch.Tensor:
    if not folder.is_dir():
        pytest.skip(f"reference frames not found at {folder} (shared data is cloned beside the repo)")
    return torch.stack([to_tensor(read_rgb(p)) for p in list_frames(folder)])  # (T, 3, H, W)


@pytest.fixture(scope="module")
def calendar_gt() -> torch.Tensor:
    return _load_clip(VID4 / "GT" / "calendar")


# --- reference data --------------------------------------------------------------------


def test_bi_reproduces_reference_bit_exact(calendar_gt: torch.Tensor) -> None:
    ref = _load_clip(VID4 / "BIx4" / "calendar")
    lr = bi_degrade(calendar_gt, 4)
    assert lr.shape == ref.shape == (41, 3, 144, 180)
    diff = (lr.int() - ref.int()).abs()
    assert diff.max().item() == 0, f"{int((diff > 0).sum())} values differ, max {diff.max().item()}"


def test_bd_within_two_levels_of_reference(calendar_gt: torch.Tensor) -> None:
    ref = _load_clip(VID4 / "BDx4" / "calendar")
    lr = bd_degrade(calendar_gt, 4)
    assert lr.shape == ref.shape
    diff = (lr.int() - ref.int()).abs().double()
    exact = (diff == 0).double().mean().item()
    print(f"BD x4 calendar: max {diff.max().item():.0f}, mean {diff.mean().item():.4f}, exact {exact:.2%}")
    assert diff.max().item() <= 2
    assert exact > 0.875  # measured 87.53 % with floor; round gives 50.75 %
    assert diff.mean().item() < 0.125  # measured 0.1249


# --- imresize --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs", [{"scale": 0.5}, {"scale": 1 / 3}, {"scale": 0.25}, {"scale": 3.0}, {"out_size": (7, 30)}]
)
def test_imresize_keeps_constant_image_constant(kwargs: dict) -> None:
    x = torch.full((2, 3, 24, 21), 123.25, dtype=torch.float64)
    out = imresize(x, **kwargs)
    torch.testing.assert_close(out, torch.full_like(out, 123.25), rtol=0, atol=1e-11)


def test_imresize_upscale_hand_computed_values() -> None:
    # MATLAB cubic at scale 2: output 1 sits at u = 0.75 with taps (mirrored) a2, a1, a1, a2
    # and weights k(1.75), k(0.75), k(0.25), k(1.25) = -3/128, 29/128, 111/128, -9/128.
    # Output 5 sits at u = 2.75: taps a1..a4 with the same weights.
    x = torch.tensor([[1.0, 4.0, 2.0, 8.0]], dtype=torch.float64)
    out = imresize(x, out_size=(1, 8))
    assert out[0, 0].item() == (-3 * 4 + 29 * 1 + 111 * 1 - 9 * 4) / 128  # 0.71875
    assert out[0, 4].item() == (-3 * 1 + 29 * 4 + 111 * 2 - 9 * 8) / 128  # 2.0546875
    # A linear ramp is reproduced away from the mirrored border.
    ramp = torch.arange(1.0, 9.0, dtype=torch.float64)[None]
    torch.testing.assert_close(
        imresize(ramp, out_size=(1, 16))[0, 4:12], torch.arange(2.75, 6.75, 0.5, dtype=torch.float64)
    )


def test_imresize_output_sizes_and_order() -> None:
    x = torch.rand(3, 37, 41, dtype=torch.float64)
    assert imresize(x, scale=0.25).shape == (3, 10, 11)  # ceil(9.25), ceil(10.25)
    assert imresize(x, scale=2.0).shape == (3, 74, 82)
    assert imresize(x, out_size=(20, 50)).shape == (3, 20, 50)
    with pytest.raises(ValueError, match="exactly one"):
        imresize(x, scale=0.5, out_size=(2, 2))
    with pytest.raises(ValueError, match="floating"):
        imresize(x.to(torch.uint8), scale=0.5)


def test_imresize_weight_matrices_are_cached() -> None:
    x = torch.rand(1, 40, 52, dtype=torch.float64)
    imresize(x, scale=0.5)
    hits = _resize_matrix.cache_info().hits
    imresize(x + 1, scale=0.5)
    assert _resize_matrix.cache_info().hits == hits + 2


def test_imresize_gradcheck() -> None:
    x = torch.rand(1, 6, 7, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: imresize(t, scale=0.5), (x,))
    assert torch.autograd.gradcheck(lambda t: imresize(t, out_size=(9, 4)), (x,))


def test_imresize_cache_filled_in_inference_mode_still_serves_autograd() -> None:
    with torch.inference_mode():
        imresize(torch.rand(1, 9, 11, dtype=torch.float64), scale=1 / 3)
    x = torch.rand(1, 9, 11, dtype=torch.float64, requires_grad=True)
    imresize(x, scale=1 / 3).sum().backward()
    assert x.grad is not None and x.grad.shape == x.shape


@pytest.mark.parametrize("device", DEVICES)
def test_imresize_device_matches_cpu(device: str) -> None:
    x = torch.rand(2, 3, 20, 24, dtype=torch.float64)
    out = imresize(x.to(device), scale=0.25)
    assert out.device.type == device
    torch.testing.assert_close(out.cpu(), imresize(x, scale=0.25), rtol=0, atol=1e-12)


@pytest.mark.parametrize("scale", [2, 3, 4])
@pytest.mark.parametrize("size", [(1, 1), (2, 3), (5, 6), (17, 11)])
def test_upscale_integer_equals_imresize(scale: int, size: tuple[int, int]) -> None:
    """The two-convolution enlargement (chroma of upscaled video) is MATLAB's imresize,
    borders included (tiny sizes reflect the symmetric padding more than once)."""
    lr = torch.rand(2, *size, dtype=torch.float64, generator=torch.Generator().manual_seed(scale))
    up = upscale_integer(lr, scale)
    assert up.shape == (2, scale * size[0], scale * size[1])
    torch.testing.assert_close(up, imresize(lr, scale=float(scale)), rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="scale >= 2"):
        upscale_integer(lr, 1)


# --- BI / BD ---------------------------------------------------------------------------


def test_mod_crop_keeps_top_left() -> None:
    x = torch.arange(37 * 41).view(1, 37, 41)
    y = mod_crop(x, 4)
    assert y.shape == (1, 36, 40)
    assert torch.equal(y, x[:, :36, :40])


@pytest.mark.parametrize("scale", [2, 3, 4])
@pytest.mark.parametrize("fn", [bi_degrade, bd_degrade])
def test_degrade_shapes_on_odd_sizes(fn, scale: int) -> None:
    hr = torch.randint(0, 256, (2, 3, 37, 41), dtype=torch.uint8)
    lr = fn(hr, scale)
    assert lr.shape == (2, 3, 37 // scale, 41 // scale) and lr.dtype == torch.uint8
    # mod-crop: the LR frame only depends on the cropped HR frame
    assert torch.equal(lr, fn(hr[..., : 37 // scale * scale, : 41 // scale * scale].contiguous(), scale))


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_bd_keeps_flat_areas_flat(scale: int) -> None:
    # Plain floor turns 127 of these 256 levels into v - 1 (float sum just below v).
    levels = torch.arange(256, dtype=torch.uint8).view(256, 1, 1, 1).expand(256, 1, 24, 24)
    assert torch.equal(bd_degrade(levels, scale)[..., 0, 0, 0], torch.arange(256, dtype=torch.uint8))


def test_bd_separable_matrices_equal_direct_convolution() -> None:
    hr = torch.randint(0, 256, (2, 3, 30, 24), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    padded = F.pad(hr.double().reshape(6, 1, 30, 24), (6, 6, 6, 6), mode="replicate")
    direct = F.conv2d(padded, gaussian_kernel2d(13, 1.6)[None, None], stride=3).reshape(2, 3, 10, 8)
    assert torch.equal(bd_degrade(hr, 3), torch.floor(direct + 1e-9).to(torch.uint8))


def test_bd_samples_from_top_left() -> None:
    hr = torch.zeros(1, 40, 40, dtype=torch.uint8)
    hr[0, 20, 20] = 255  # on the kept grid (20 = 5 * 4) -> strongest response at LR (5, 5)
    lr = bd_degrade(hr, 4).int()
    assert lr[0].argmax().item() == 5 * 10 + 5
    assert lr[0, 5, 5].item() == int(255 * gaussian_kernel2d(13, 1.6)[6, 6].item())


def test_gaussian_kernel_matches_fspecial() -> None:
    # MATLAB fspecial('gaussian', 3, 1) centre value.
    # 1 / (1 + 4 exp(-1/2) + 4 exp(-1)) = 0.2042 (as MATLAB prints it)
    assert gaussian_kernel2d(3, 1.0)[1, 1].item() == pytest.approx(
        1 / (1 + 4 * np.exp(-0.5) + 4 * np.exp(-1)), abs=1e-15
    )
    k = gaussian_kernel2d(13, 1.6)
    assert k.sum().item() == pytest.approx(1.0, abs=1e-15)
    torch.testing.assert_close(k, k.T)
    with pytest.raises(ValueError, match="odd"):
        gaussian_kernel2d(12, 1.6)


# --- Degradation records ---------------------------------------------------------------


def test_degradation_validation() -> None:
    with pytest.raises(ValueError, match="scale"):
        Degradation("BI", 5)
    with pytest.raises(ValueError, match="sigma"):
        Degradation("BD", 4, sigma=0.0)
    with pytest.raises(ValueError, match="kernel_size"):
        Degradation("BD", 4, kernel_size=12)
    with pytest.raises(ValueError, match="kind"):
        Degradation("XX", 4)  # type: ignore[arg-type]


# --- folders ---------------------------------------------------------------------------


def _write_clip(folder: Path, frames: int, h: int = 18, w: int = 22) -> list[np.ndarray]:
    rng = np.random.default_rng(3)
    images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for _ in range(frames)]
    for i, img in enumerate(images):
        write_rgb(folder / f"{i:08d}.png", img)
    return images


def test_degrade_folder_writes_every_frame(tmp_path: Path) -> None:
    images = _write_clip(tmp_path / "hr", 3)
    n = degrade_folder(tmp_path / "hr", tmp_path / "lr", "BD", 2, sigma=1.2)
    assert n == 3
    out = list_frames(tmp_path / "lr")
    assert [p.name for p in out] == ["00000000.png", "00000001.png", "00000002.png"]
    expected = to_numpy(apply_degradation(to_tensor(images[1]), Degradation("BD", 2, sigma=1.2)))
    np.testing.assert_array_equal(read_rgb(out[1]), expected)


def test_degrade_folder_failure_leaves_nothing(tmp_path: Path) -> None:
    _write_clip(tmp_path / "hr", 3)
    (tmp_path / "hr" / "00000002.png").write_bytes(b"not a png")
    with pytest.raises(InputError, match="00000002.png"):
        degrade_folder(tmp_path / "hr", tmp_path / "lr", "BI", 2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hr"]
