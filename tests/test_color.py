"""BT.601 colour conversion: MATLAB rgb2ycbcr/ycbcr2rgb values, rounding and shapes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tanet.ops.color import (
    rgb_to_y_uint8,
    rgb_to_ycbcr,
    round_half_away,
    to_numpy,
    to_tensor,
    ycbcr_to_rgb,
)

# The MATLAB formula, written independently of tanet.ops.color: RGB in [0, 1] -> [0, 255].
MATLAB_T = np.array([[65.481, 128.553, 24.966], [-37.797, -74.203, 112.0], [112.0, -93.786, -18.214]])
MATLAB_OFFSET = np.array([16.0, 128.0, 128.0])


def _pixel(*values: int, dtype: torch.dtype = torch.uint8) -> torch.Tensor:
    return torch.tensor(values, dtype=dtype).view(3, 1, 1)


@pytest.mark.parametrize(
    ("rgb", "ycbcr"),
    [
        ((255, 255, 255), (235, 128, 128)),
        ((0, 0, 0), (16, 128, 128)),
        ((255, 0, 0), (81, 90, 240)),  # 16 + 65.481 = 81.481; 128 - 37.797 = 90.203
        ((0, 255, 0), (145, 54, 34)),  # 144.553, 53.797, 34.214
        ((0, 0, 255), (41, 240, 110)),  # 40.966, 240, 109.786
    ],
)
def test_uint8_known_values(rgb: tuple[int, int, int], ycbcr: tuple[int, int, int]) -> None:
    assert rgb_to_y_uint8(_pixel(*rgb)).item() == ycbcr[0]


def test_float_matches_matlab_formula() -> None:
    rgb = torch.rand(2, 3, 5, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    expected = (np.einsum("ij,bjhw->bihw", MATLAB_T, rgb.numpy()) + MATLAB_OFFSET[:, None, None]) / 255
    np.testing.assert_allclose(rgb_to_ycbcr(rgb).numpy(), expected, rtol=0, atol=1e-13)
    white = rgb_to_ycbcr(torch.ones(3, 1, 1, dtype=torch.float64)).flatten() * 255
    assert white.tolist() == pytest.approx([235, 128, 128], abs=1e-12)


def test_float_round_trip_is_exact_inverse_without_clipping() -> None:
    rgb = torch.rand(3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(ycbcr_to_rgb(rgb_to_ycbcr(rgb)), rgb, rtol=0, atol=1e-13)
    # Y = 235/255 with extreme chroma is out of gamut: no clipping in the float version.
    out = ycbcr_to_rgb(torch.tensor([235.0, 240.0, 240.0], dtype=torch.float64).view(3, 1, 1) / 255)
    assert out.max() > 1


def test_float32_is_supported() -> None:
    rgb = torch.rand(3, 4, 4)
    out = rgb_to_ycbcr(rgb)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), rgb_to_ycbcr(rgb.double()), rtol=0, atol=1e-6)


def test_round_half_away_from_zero() -> None:
    x = torch.tensor([0.5, 1.5, 2.5, -0.5, -1.5, 2.4999999999, 0.49999999999999994], dtype=torch.float64)
    assert round_half_away(x).tolist() == [1.0, 2.0, 3.0, -1.0, -2.0, 2.0, 0.0]


def test_y_rounds_exact_tie_away_from_zero() -> None:
    # 65.481*6 + 128.553*34 + 24.966*182 = 9307.5 / 255 = 36.5 exactly; in MATLAB's float64
    # arithmetic Y computes to exactly 52.5, which MATLAB rounds to 53 (half to even: 52).
    rgb = _pixel(6, 34, 182)
    y_float = (MATLAB_T[0] / 255 * np.array([6.0, 34.0, 182.0])).sum() + 16
    assert y_float == pytest.approx(52.5, abs=1e-12)
    assert rgb_to_y_uint8(rgb).item() == 53
    assert torch.round(torch.tensor(52.5)).item() == 52  # what a torch.round port would give


def test_leading_dims_and_shapes() -> None:
    rgb = torch.randint(0, 256, (2, 4, 3, 5, 6), dtype=torch.uint8)
    y = rgb_to_y_uint8(rgb)
    assert y.shape == (2, 4, 1, 5, 6) and y.dtype == torch.uint8
    assert torch.equal(y[1, 2], rgb_to_y_uint8(rgb[1, 2]))


@pytest.mark.parametrize(
    ("fn", "bad"),
    [
        (rgb_to_ycbcr, torch.rand(4, 5, 6)),  # 4 channels
        (rgb_to_ycbcr, torch.randint(0, 255, (3, 5, 6), dtype=torch.uint8)),  # not float
        (rgb_to_y_uint8, torch.rand(3, 5, 6)),  # not uint8
        (rgb_to_y_uint8, torch.zeros(5, 6, dtype=torch.uint8)),  # no channel axis
    ],
)
def test_bad_input_raises(fn, bad: torch.Tensor) -> None:
    with pytest.raises(ValueError, match=r"expects"):
        fn(bad)


def test_to_tensor_to_numpy_round_trip() -> None:
    img = np.random.default_rng(0).integers(0, 256, (2, 5, 7, 3), dtype=np.uint8)  # THWC
    t = to_tensor(img)
    assert t.shape == (2, 3, 5, 7) and t.dtype == torch.uint8
    assert torch.equal(t[1, 0], torch.from_numpy(img[1, :, :, 0]))
    np.testing.assert_array_equal(to_numpy(t), img)
    with pytest.raises(ValueError, match=r"\(\.\.\., H, W, 3\)"):
        to_tensor(img[..., :2])
