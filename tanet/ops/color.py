"""ITU-R BT.601 colour conversion, exactly as MATLAB's ``rgb2ycbcr`` / ``ycbcr2rgb``.

The VSR literature computes its Y channel with MATLAB, so the numbers here follow MATLAB's
arithmetic, not just its formula:

    Y  = (16  + 65.481 R + 128.553 G +  24.966 B) / 255
    Cb = (128 - 37.797 R -  74.203 G + 112.000 B) / 255
    Cr = (128 + 112.000 R -  93.786 G -  18.214 B) / 255      (R, G, B in [0, 1])

* Float images (any floating dtype) are in ``[0, 1]`` on both sides; ``ycbcr_to_rgb``
  uses the float64 inverse of the 3x3 matrix, as MATLAB does, and does not clip.
* uint8 images are in ``[0, 255]`` on both sides; the result is computed in float64 as
  ``T[c,0]*R + T[c,1]*G + T[c,2]*B + offset[c]`` (MATLAB's ``imlincomb`` order), then
  rounded half away from zero and saturated to ``[0, 255]`` -- MATLAB's uint8 cast.
  ``torch.round`` rounds half to even, which differs on exact ties such as RGB
  (6, 34, 182), whose Y computes to exactly 52.5 (MATLAB: 53).

Images are torch tensors ``(..., 3, H, W)``: the channel axis is -3, with any leading
batch/time axes. ``to_tensor`` / ``to_numpy`` convert from/to the ``(..., H, W, 3)`` numpy
layout that ``tanet.io.frames`` reads and writes.
"""

from __future__ import annotations

from typing import overload

import numpy as np
import torch

__all__ = [
    "rgb_to_y_uint8",
    "rgb_to_ycbcr",
    "round_half_away",
    "to_numpy",
    "to_tensor",
    "planes",
    "to_uint8",
    "ycbcr_to_rgb",
]

# MATLAB's origT and origOffset: RGB in [0, 1] -> YCbCr in [0, 255].
_T = (
    (65.481, 128.553, 24.966),
    (-37.797, -74.203, 112.0),
    (112.0, -93.786, -18.214),
)
_OFFSET = (16.0, 128.0, 128.0)


def _forward_coeffs(offset_scale: float) -> tuple[np.ndarray, np.ndarray]:
    """MATLAB's ``T = (1/255) * origT`` and ``offset = offset_scale * origOffset``.

    ``offset_scale`` is 1/255 for float images and 1 for uint8. Multiplying by ``1/255``
    (not dividing by 255) copies MATLAB's arithmetic to the last bit.
    """
    return (1.0 / 255.0) * np.array(_T, dtype=np.float64), offset_scale * np.array(_OFFSET, dtype=np.float64)


def _inverse_coeffs(offset_scale: float) -> tuple[np.ndarray, np.ndarray]:
    """MATLAB's ``T = 255 * inv(origT)`` and ``offset = (offset_scale * inv(origT)) * origOffset``.

    ``offset_scale`` is 1 for float images (YCbCr in [0, 1] -> RGB in [0, 1]) and 255 for
    uint8 ([0, 255] -> [0, 255]); the coefficient matrix is the same for both.
    """
    t_inv = np.linalg.inv(np.array(_T, dtype=np.float64))
    return 255.0 * t_inv, (offset_scale * t_inv) @ np.array(_OFFSET, dtype=np.float64)


def _check_channels(x: torch.Tensor, name: str, channels: int = 3) -> None:
    if x.ndim < 3 or x.shape[-3] != channels:
        raise ValueError(f"{name} expects shape (..., {channels}, H, W), got {tuple(x.shape)}")


def _lincomb(x: torch.Tensor, coeffs: np.ndarray, offset: np.ndarray, rows: range) -> torch.Tensor:
    """``coeffs[c,0]*x0 + coeffs[c,1]*x1 + coeffs[c,2]*x2 + offset[c]`` for each row c.

    Written out term by term, not as an einsum, so the floating-point summation order is
    MATLAB's; that decides which side of .5 the exact ties land on before rounding.
    """
    x0, x1, x2 = x.unbind(-3)
    out = [
        float(coeffs[c, 0]) * x0 + float(coeffs[c, 1]) * x1 + float(coeffs[c, 2]) * x2 + float(offset[c]) for c in rows
    ]
    return torch.stack(out, dim=-3)


@overload
def round_half_away(x: torch.Tensor) -> torch.Tensor: ...
@overload
def round_half_away(x: np.ndarray) -> np.ndarray: ...
def round_half_away(x: torch.Tensor | np.ndarray) -> torch.Tensor | np.ndarray:
    """Rounds half away from zero (MATLAB ``round``), unlike ``torch.round``/``np.round`` (half to even).

    ``x - trunc(x)`` is exact in floating point, so ties are detected exactly (``floor(|x| +
    0.5)`` would round 0.49999999999999994 up). Tensors and numpy arrays alike.

    >>> round_half_away(torch.tensor([0.5, 1.5, 2.5, -0.5, 2.4999])).tolist()
    [1.0, 2.0, 3.0, -1.0, 2.0]
    >>> round_half_away(np.array([0.5, -1.5, 0.49999999999999994])).tolist()
    [1.0, -2.0, 0.0]
    """
    if isinstance(x, np.ndarray):
        whole_np = np.trunc(x)
        return whole_np + np.where(np.abs(x - whole_np) >= 0.5, np.sign(x), 0.0)
    whole = torch.trunc(x)
    return whole + torch.where((x - whole).abs() >= 0.5, torch.sign(x), torch.zeros_like(x))


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """MATLAB's cast of a float array in [0, 255] to uint8: round half away, saturate."""
    return round_half_away(x).clamp_(0, 255).to(torch.uint8)


def _check_float(x: torch.Tensor, name: str) -> None:
    _check_channels(x, name)
    if not x.is_floating_point():
        raise ValueError(f"{name} expects a floating tensor in [0, 1], got {x.dtype}")


def _check_uint8(x: torch.Tensor, name: str) -> None:
    _check_channels(x, name)
    if x.dtype != torch.uint8:
        raise ValueError(f"{name} expects a uint8 tensor, got {x.dtype}")


def rgb_to_ycbcr(rgb: torch.Tensor) -> torch.Tensor:
    """RGB -> YCbCr (BT.601, MATLAB ``rgb2ycbcr`` on a double image).

    Args:
        rgb: ``(..., 3, H, W)`` float in [0, 1].

    Returns:
        ``(..., 3, H, W)`` YCbCr in [0, 1] scale; Y in [16/255, 235/255], same dtype.

    >>> rgb_to_ycbcr(torch.ones(3, 1, 1, dtype=torch.float64)).flatten().mul(255).tolist()
    [235.0, 128.0, 128.0]
    """
    _check_float(rgb, "rgb_to_ycbcr")
    coeffs, offset = _forward_coeffs(1.0 / 255.0)
    return _lincomb(rgb, coeffs, offset, range(3))


def ycbcr_to_rgb(ycbcr: torch.Tensor) -> torch.Tensor:
    """YCbCr -> RGB (MATLAB ``ycbcr2rgb`` on a double image), without clipping.

    ``rgb = 255 inv(T) ycbcr - inv(T) offset`` with ``inv(T)`` computed in float64.
    Out-of-gamut inputs give values outside [0, 1]; clip where an image is needed.

    Args:
        ycbcr: ``(..., 3, H, W)`` float in [0, 1] scale.

    Returns:
        ``(..., 3, H, W)`` RGB, nominally in [0, 1], same dtype.
    """
    _check_float(ycbcr, "ycbcr_to_rgb")
    coeffs, offset = _inverse_coeffs(1.0)
    return _lincomb(ycbcr, coeffs, -offset, range(3))


def ycbcr_to_rgb_affine() -> tuple[np.ndarray, np.ndarray]:
    """``(A, b)`` with ``rgb = A @ ycbcr + b`` for float images in [0, 1] (MATLAB ``ycbcr2rgb``).

    For fast paths that fold the conversion into one matrix product (the upscaler's output);
    :func:`ycbcr_to_rgb` keeps MATLAB's term-by-term summation order.
    """
    coeffs, offset = _inverse_coeffs(1.0)
    return coeffs, -offset


def rgb_to_y_uint8(rgb: torch.Tensor) -> torch.Tensor:
    """Y channel of uint8 RGB as MATLAB computes it (the field's metric input).

    Args:
        rgb: ``(..., 3, H, W)`` uint8.

    Returns:
        ``(..., 1, H, W)`` uint8 Y in [16, 235].

    >>> rgb_to_y_uint8(torch.tensor([255, 0, 0], dtype=torch.uint8).view(3, 1, 1)).item()
    81
    """
    _check_uint8(rgb, "rgb_to_y_uint8")
    coeffs, offset = _forward_coeffs(1.0)
    return to_uint8(_lincomb(rgb.to(torch.float64), coeffs, offset, range(1)))


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """``(..., H, W, 3)`` numpy image (e.g. from ``tanet.io.frames.read_rgb``) -> ``(..., 3, H, W)``.

    The dtype is kept; the result shares memory with ``image`` where possible.
    """
    if image.ndim < 3 or image.shape[-1] != 3:
        raise ValueError(f"to_tensor expects shape (..., H, W, 3), got {image.shape}")
    return torch.from_numpy(np.ascontiguousarray(image)).movedim(-1, -3)


def to_numpy(image: torch.Tensor) -> np.ndarray:
    """``(..., C, H, W)`` tensor -> contiguous ``(..., H, W, C)`` numpy array on the CPU."""
    if image.ndim < 3:
        raise ValueError(f"to_numpy expects shape (..., C, H, W), got {tuple(image.shape)}")
    return image.detach().movedim(-3, -1).contiguous().cpu().numpy()


def planes(rgb: np.ndarray, channels: int) -> np.ndarray:
    """``(H, W, 3)`` uint8 numpy frame -> planar ``(C, H, W)``: Y (``channels == 1``: BT.601, MATLAB) or RGB."""
    chw = to_tensor(rgb)
    return (rgb_to_y_uint8(chw) if channels == 1 else chw).contiguous().numpy()
