"""Degradations that make LR frames from HR frames: BI (bicubic) and BD (blur + decimate).

Conventions of the field (see ``shared/method.md``), at scales x2, x3 and x4:

* **Mod-crop first.** An HR frame is cropped from the top-left to a multiple of the scale
  (``mod_crop``), so LR x scale == HR exactly and SR output can be compared pixel for pixel.
* **BI** = MATLAB ``imresize(hr, 1/scale)`` (bicubic, a = -0.5, antialiased) on the uint8
  frame taken as float64 in [0, 255], then rounded half away from zero and saturated to
  uint8. This reproduces ``shared/data/vid4/BIx4/calendar`` from ``vid4/GT/calendar`` bit
  for bit (41 frames, max |diff| 0). MATLAB resizes a uint8 image one dimension at a time
  and rounds (and saturates) to uint8 after each pass; on calendar that per-pass path
  misses 10.7 % of the reference values (max |diff| 5), so the reference was made with a
  float path, and so is ours.
* **BD** = normalised 13x13 Gaussian, sigma 1.6, replicate border, then the pixel at (0, 0)
  and every ``scale``-th pixel after it, floored to uint8. Against
  ``shared/data/vid4/BDx4/calendar``: 87.5 % of values exact, mean |diff| 0.125, max 2
  (see ``bd_degrade``).

``imresize`` is our own float64 torch port of MATLAB's ``imresize``/``contributions``
rather than the ``bicubic-pytorch`` package: that package builds its kernel weights in
float32 and misses 26 values of calendar BIx4 by one, all near rounding ties
(``shared/INFRA.md``). In our float64 path no calendar value comes within 1e-9 of a tie.
Resizing is two cached separable weight matrices applied by matmul, so it runs on any
device and is differentiable with respect to the image.

A ``Degradation`` records what was applied (kind, scale, BD's sigma and kernel size), so a
run logs it and :func:`apply_degradation` replays it.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from typing import Literal

import torch

from tanet.ops.color import to_uint8

__all__ = [
    "SCALES",
    "Degradation",
    "DegradationKind",
    "apply_degradation",
    "bd_degrade",
    "bi_degrade",
    "gaussian_taps",
    "imresize",
    "mod_crop",
]

DegradationKind = Literal["BI", "BD"]
SCALES = (2, 3, 4)

# Support width of MATLAB's cubic kernel: it is non-zero on (-2, 2).
_CUBIC_WIDTH = 4.0


# ---------------------------------------------------------------------------------------
# MATLAB imresize (bicubic)
# ---------------------------------------------------------------------------------------


def _cubic(x: torch.Tensor) -> torch.Tensor:
    """MATLAB's bicubic kernel (Keys, a = -0.5).

    ``k(x) = 1.5|x|^3 - 2.5|x|^2 + 1`` for ``|x| <= 1``,
    ``-0.5|x|^3 + 2.5|x|^2 - 4|x| + 2`` for ``1 < |x| <= 2``, else 0.
    """
    ax = x.abs()
    ax2 = ax**2
    ax3 = ax**3
    inner = (1.5 * ax3 - 2.5 * ax2 + 1) * (ax <= 1)
    outer = (-0.5 * ax3 + 2.5 * ax2 - 4 * ax + 2) * ((ax > 1) & (ax <= 2))
    return inner + outer


def _contributions(in_len: int, out_len: int, scale: float, antialias: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """MATLAB ``contributions``: per output sample, the input indices and their weights.

    Output sample ``x`` (1-based) maps to input coordinate ``u = x/scale + (1 - 1/scale)/2``;
    the taps are ``floor(u - width/2) + (0..P-1)`` with ``P = ceil(width) + 2``. When
    shrinking with antialiasing the kernel is stretched to ``scale * k(scale * t)`` and
    ``width`` to ``4/scale``. Weights are normalised per row, out-of-range taps are
    mirrored (symmetric padding: ``... 2 1 | 1 2 ... n | n n-1 ...``) and tap columns that
    are zero for every output are dropped. Float64, operation for operation as MATLAB.

    Returns:
        ``(weights, indices)``, both ``(out_len, P')``; indices are 0-based.
    """
    kernel: Callable[[torch.Tensor], torch.Tensor]
    if scale < 1 and antialias:
        width = _CUBIC_WIDTH / scale

        def kernel(t: torch.Tensor) -> torch.Tensor:
            return scale * _cubic(scale * t)
    else:
        width = _CUBIC_WIDTH
        kernel = _cubic
    x = torch.arange(1, out_len + 1, dtype=torch.float64)
    u = x / scale + 0.5 * (1 - 1 / scale)
    left = torch.floor(u - width / 2)
    taps = math.ceil(width) + 2
    indices = left[:, None] + torch.arange(taps, dtype=torch.float64)  # (out_len, taps), 1-based
    weights = kernel(u[:, None] - indices)
    weights = weights / weights.sum(dim=1, keepdim=True)
    mirror = torch.cat([torch.arange(in_len), torch.arange(in_len - 1, -1, -1)])
    indices = mirror[torch.remainder(indices.long() - 1, 2 * in_len)]
    keep = (weights != 0).any(dim=0)
    return weights[:, keep], indices[:, keep]


@functools.lru_cache(maxsize=64)
def _resize_matrix(
    in_len: int, out_len: int, scale: float, antialias: bool, device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    """Dense ``(out_len, in_len)`` matrix of ``_contributions``; mirrored taps accumulate.

    Cached because every frame of a clip, and every clip of a data set, reuses it. Built
    outside inference mode: a cached inference tensor would break later autograd use.
    """
    with torch.inference_mode(False), torch.no_grad():
        weights, indices = _contributions(in_len, out_len, scale, antialias)
        matrix = torch.zeros(out_len, in_len, dtype=torch.float64)
        rows = torch.arange(out_len)[:, None].expand_as(indices)
        matrix.index_put_((rows.reshape(-1), indices.reshape(-1)), weights.reshape(-1), accumulate=True)
        return matrix.to(device=device, dtype=dtype)


def _resize_dim(x: torch.Tensor, dim: int, out_len: int, scale: float, antialias: bool) -> torch.Tensor:
    """Resizes axis ``dim`` (-2: rows, -1: columns) of ``x`` with one matrix product."""
    in_len = x.shape[dim]
    if out_len == in_len and scale == 1:
        return x  # MATLAB's kernel at scale 1 is the identity (k(0) = 1, k(+-1) = k(+-2) = 0)
    matrix = _resize_matrix(in_len, out_len, float(scale), antialias, x.device, x.dtype)
    if dim == -2:
        return torch.matmul(matrix, x)  # (out, H) @ (..., H, W) -> (..., out, W)
    return torch.matmul(x, matrix.T)  # (..., H, W) @ (W, out) -> (..., H, out)


def imresize(
    x: torch.Tensor,
    scale: float | None = None,
    out_size: tuple[int, int] | None = None,
    antialias: bool = True,
) -> torch.Tensor:
    """MATLAB ``imresize(x, scale)`` / ``imresize(x, [h w])`` with the bicubic kernel.

    Give exactly one of ``scale`` (output ``ceil(scale * in)`` per axis, kernel built with
    ``scale`` itself, as MATLAB does) or ``out_size`` (per-axis scale ``out / in``).
    The axis with the smaller scale is resized first; with equal scales rows go first
    (MATLAB's order). No rounding or clipping: values may overshoot the input range.

    Args:
        x: ``(..., H, W)`` floating tensor, any device; float64 for MATLAB-exact results.
        scale: resize factor, > 0 (0.25 shrinks x4, 4 enlarges x4).
        out_size: ``(out_h, out_w)``.
        antialias: widen the kernel by ``1/scale`` when shrinking (MATLAB's default).

    Returns:
        ``(..., out_h, out_w)`` tensor, same dtype and device; differentiable in ``x``.

    >>> imresize(torch.full((1, 8, 8), 7.0, dtype=torch.float64), scale=0.5).unique().tolist()
    [7.0]
    """
    if x.ndim < 2 or not x.is_floating_point():
        raise ValueError(f"imresize expects a floating tensor (..., H, W), got {x.dtype} {tuple(x.shape)}")
    in_h, in_w = x.shape[-2:]
    if (scale is None) == (out_size is None):
        raise ValueError("imresize expects exactly one of scale and out_size")
    if scale is not None:
        if not scale > 0:
            raise ValueError(f"imresize expects scale > 0, got {scale}")
        scales = (float(scale), float(scale))
        outs = (math.ceil(scale * in_h), math.ceil(scale * in_w))
    else:
        assert out_size is not None
        outs = (int(out_size[0]), int(out_size[1]))
        if min(outs) < 1:
            raise ValueError(f"imresize expects a positive out_size, got {out_size}")
        scales = (outs[0] / in_h, outs[1] / in_w)
    order = (-2, -1) if scales[0] <= scales[1] else (-1, -2)
    for dim in order:
        axis = 0 if dim == -2 else 1
        x = _resize_dim(x, dim, outs[axis], scales[axis], antialias)
    return x


@functools.lru_cache(maxsize=16)
def _phase_filters(scale: int, dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, int, int]:
    """Per-phase taps of MATLAB's bicubic enlargement by an integer factor.

    Output sample ``r*i + p`` reads inputs ``i + lo .. i + lo + K - 1`` with weights
    ``filters[p]``; they repeat every ``r`` outputs, so the resize is a convolution with
    ``r`` output channels followed by an interleave.

    Returns:
        ``(filters (r, K), lo, K)``.
    """
    with torch.inference_mode(False), torch.no_grad():
        n = 8 * scale  # an interior sample is far enough from both borders
        weights, indices = _contributions(n, n * scale, float(scale), False)
        i0 = n // 2
        rows = [weights[scale * i0 + p] for p in range(scale)]
        offs = [indices[scale * i0 + p] - i0 for p in range(scale)]
        lo = int(min(o.min() for o in offs))
        hi = int(max(o.max() for o in offs))
        filters = torch.zeros(scale, hi - lo + 1, dtype=torch.float64)
        for p in range(scale):
            filters[p].index_add_(0, offs[p] - lo, rows[p])
        return filters.to(device=device, dtype=dtype), lo, hi - lo + 1


def upscale_integer(x: torch.Tensor, scale: int) -> torch.Tensor:
    """MATLAB bicubic enlargement by an integer factor, as two small convolutions.

    Same result as ``imresize(x, scale=scale)`` up to float rounding, at a fraction of the
    cost of its dense matrices (every output sample has 4 non-zero taps): used for the
    chroma of upscaled video. Borders are padded symmetrically, as MATLAB does.

    Args:
        x: ``(..., H, W)`` floating tensor.
        scale: integer factor >= 2.

    Returns:
        ``(..., scale*H, scale*W)``.
    """
    if scale < 2 or x.ndim < 2 or not x.is_floating_point():
        raise ValueError(
            f"upscale_integer expects a floating (..., H, W) tensor and scale >= 2, got {x.dtype} {tuple(x.shape)}, {scale}"
        )
    filters, lo, k = _phase_filters(scale, x.dtype, x.device)
    lead = x.shape[:-2]
    out = x.reshape(-1, 1, *x.shape[-2:])
    for dim in (-2, -1):
        n = out.shape[dim]
        # Symmetric padding (edge sample repeated), enough for the taps' reach on both sides.
        idx = torch.arange(lo, n + lo + k - 1, device=x.device)
        idx = torch.where(idx < 0, -idx - 1, idx)
        idx = torch.where(idx >= n, 2 * n - idx - 1, idx).clamp_(0, n - 1)
        padded = out.index_select(dim, idx)
        weight = filters.view(scale, 1, k, 1) if dim == -2 else filters.view(scale, 1, 1, k)
        res = torch.nn.functional.conv2d(padded, weight)  # (B, r, n, m) or (B, r, m, n)
        b, _, h, w = res.shape
        if dim == -2:
            out = res.permute(0, 2, 1, 3).reshape(b, 1, h * scale, w)
        else:
            out = res.permute(0, 2, 3, 1).reshape(b, 1, h, w * scale)
    return out.reshape(*lead, *out.shape[-2:])


# ---------------------------------------------------------------------------------------
# BI and BD
# ---------------------------------------------------------------------------------------


def mod_crop(x: torch.Tensor, scale: int) -> torch.Tensor:
    """Crops the last two axes to multiples of ``scale``, keeping the top-left corner.

    >>> mod_crop(torch.zeros(3, 577, 721), 4).shape
    torch.Size([3, 576, 720])
    """
    if x.ndim < 2:
        raise ValueError(f"mod_crop expects shape (..., H, W), got {tuple(x.shape)}")
    h, w = x.shape[-2:]
    if h < scale or w < scale:
        raise ValueError(f"mod_crop: frame {h}x{w} is smaller than the scale {scale}")
    return x[..., : h - h % scale, : w - w % scale]


def _check_hr(hr_u8: torch.Tensor, scale: int, name: str) -> None:
    if hr_u8.dtype != torch.uint8 or hr_u8.ndim < 3:
        raise ValueError(f"{name} expects uint8 (..., C, H, W), got {hr_u8.dtype} {tuple(hr_u8.shape)}")
    if not isinstance(scale, int) or scale < 2:
        raise ValueError(f"{name} expects an integer scale >= 2, got {scale!r}")


def bi_degrade(hr_u8: torch.Tensor, scale: int) -> torch.Tensor:
    """BI: mod-crop, MATLAB bicubic ``imresize(hr, 1/scale)`` in float64, round, uint8.

    ``lr = uint8(round_half_away(imresize(double(mod_crop(hr)), 1/scale)))``, saturated to
    [0, 255]. Measured on ``vid4/GT/calendar`` -> ``vid4/BIx4/calendar`` (41 frames,
    3.19 M values): max |diff| 0. Rounding and saturating to uint8 after each 1-D pass,
    as MATLAB does for a uint8 input, would miss 341,986 of those values (max |diff| 5,
    from the saturated overshoot of the first pass); the float64 path misses none.

    Args:
        hr_u8: ``(..., C, H, W)`` uint8 HR frame(s).
        scale: integer downscaling factor (2, 3, 4 in this project).

    Returns:
        ``(..., C, H // scale, W // scale)`` uint8 on the same device.
    """
    _check_hr(hr_u8, scale, "bi_degrade")
    hr = mod_crop(hr_u8, scale).to(torch.float64)
    lr = imresize(hr, scale=1.0 / scale)
    expected = (hr.shape[-2] // scale, hr.shape[-1] // scale)
    # ceil(k*scale * (1/scale)) == k for every k we use; guard so a float surprise
    # cannot silently shift the LR grid.
    if tuple(lr.shape[-2:]) != expected:
        raise AssertionError(f"bi_degrade produced {tuple(lr.shape[-2:])}, expected {expected}")
    return to_uint8(lr)


def bd_degrade(hr_u8: torch.Tensor, scale: int, sigma: float = 1.6, kernel_size: int = 13) -> torch.Tensor:
    """BD: mod-crop, Gaussian blur, keep every ``scale``-th pixel from (0, 0), to uint8.

    ``lr[i, j] = Q( sum_{a,b} k(a, b) hr_pad[scale*i + a, scale*j + b] )`` with ``k`` the
    normalised ``kernel_size``² Gaussian (MATLAB ``fspecial('gaussian')``), ``hr_pad`` the frame in
    float64 [0, 255] padded by ``kernel_size // 2`` replicated border pixels, and ``Q``
    the rounding below. Computed separably as two cached matrices (blur + decimation per
    axis), like ``imresize``. The same sigma and kernel size serve every scale: the support
    (13 taps = +-3.75 sigma at sigma 1.6) depends on sigma, not on the scale.

    Q is floor (truncation; the blurred values are >= 0), chosen by measurement against
    ``vid4/BDx4/calendar`` (DUF's test inputs; 41 frames x 3.19 M values, not bit-exact to
    any plain reimplementation), float64, replicate border, sigma 1.6, 13x13:

    ========================  ======  ============  ========  =============
    Q                         max     mean |diff|   exact     mean(ours-ref)
    ========================  ======  ============  ========  =============
    floor (chosen)            2       0.1249        87.53 %   -0.003
    round half away           3       0.4945        50.75 %   +0.492
    ceil                      3       0.9962         6.46 %   +0.996
    ========================  ======  ============  ========  =============

    (Reflect instead of replicate padding: max 59 at the borders. float32 in [0, 1] gives
    the same figures.) Floor is applied to ``y + 1e-9``: the blur of a constant frame v
    sums to v within ~1e-13 and plain floor would turn v - 1e-13 into v - 1; the nudge
    keeps flat areas flat and leaves the calendar figures above unchanged.

    Args:
        hr_u8: ``(..., C, H, W)`` uint8 HR frame(s).
        scale: integer factor (2, 3, 4 in this project).
        sigma: Gaussian standard deviation in HR pixels.
        kernel_size: odd kernel side.

    Returns:
        ``(..., C, H // scale, W // scale)`` uint8 on the same device.
    """
    _check_hr(hr_u8, scale, "bd_degrade")
    if kernel_size < 1 or kernel_size % 2 == 0 or not sigma > 0:
        raise ValueError(f"bd_degrade expects an odd kernel_size and sigma > 0, got {kernel_size}, {sigma}")
    hr = mod_crop(hr_u8, scale).to(torch.float64)
    h, w = hr.shape[-2:]
    rows = _blur_decimate_matrix(h, scale, float(sigma), kernel_size, hr.device)
    cols = _blur_decimate_matrix(w, scale, float(sigma), kernel_size, hr.device)
    lr = torch.matmul(torch.matmul(rows, hr), cols.T)  # (h/s, h) @ (..., h, w) @ (w, w/s)
    return _bd_quantize(lr)


def gaussian_taps(size: int, sigma: float) -> torch.Tensor:
    """Normalised 1-D Gaussian of odd ``size``, float64; its outer product is MATLAB's normalised 2-D one.

    >>> round(float(gaussian_taps(13, 1.6).sum()), 12), gaussian_taps(3, 1.0).argmax().item()
    (1.0, 1)
    """
    t = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(t**2) / (2 * sigma**2))
    return g / g.sum()


@functools.lru_cache(maxsize=32)
def _blur_decimate_matrix(
    in_len: int, scale: int, sigma: float, kernel_size: int, device: torch.device
) -> torch.Tensor:
    """``(in_len // scale, in_len)`` float64 matrix: 1-D Gaussian blur, replicate border, decimation.

    Row ``i`` holds the normalised 1-D Gaussian centred on input ``scale * i``; taps past
    the border are clamped onto the edge pixel (replicate padding) and accumulate. The
    normalised 2-D Gaussian is the outer product of two normalised 1-D ones, so applying
    this matrix to rows and columns is the 2-D blur sampled at ``(scale*i, scale*j)``,
    equal to the direct 13x13 convolution up to float64 rounding (and ~10x faster on a
    CPU, where float64 convolution has no fast path). Built outside inference mode, as
    ``_resize_matrix``.
    """
    with torch.inference_mode(False), torch.no_grad():
        half = kernel_size // 2
        g = gaussian_taps(kernel_size, sigma)
        out_len = in_len // scale
        centres = torch.arange(out_len)[:, None] * scale
        cols = (centres + torch.arange(-half, half + 1)).clamp(0, in_len - 1)  # (out_len, kernel_size)
        matrix = torch.zeros(out_len, in_len, dtype=torch.float64)
        rows = torch.arange(out_len)[:, None].expand_as(cols)
        matrix.index_put_((rows.reshape(-1), cols.reshape(-1)), g.expand_as(cols).reshape(-1), accumulate=True)
        return matrix.to(device)


# Far above float64 summation error (~1e-13 at 255), far below any fraction that decides
# a value: the calendar figures in bd_degrade are identical with and without it.
_FLOOR_TOLERANCE = 1e-9


def _bd_quantize(x: torch.Tensor) -> torch.Tensor:
    """BD's uint8 quantisation: floor (see ``bd_degrade``), saturated to [0, 255]."""
    return torch.floor(x + _FLOOR_TOLERANCE).clamp_(0, 255).to(torch.uint8)


# ---------------------------------------------------------------------------------------
# Degradation records: sample, then apply
# ---------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Degradation:
    """One fully specified degradation; logging it is enough to replay it.

    ``dataclasses.asdict(d)`` gives a plain dict and ``Degradation(**that_dict)`` rebuilds it.
    """

    kind: DegradationKind  # "BI": bicubic imresize; "BD": Gaussian blur + decimation
    scale: int  # downscaling factor, one of SCALES
    sigma: float = 1.6  # BD Gaussian standard deviation in HR pixels (unused by BI)
    kernel_size: int = 13  # BD Gaussian kernel side, odd (unused by BI)

    def __post_init__(self) -> None:
        if self.kind not in ("BI", "BD"):
            raise ValueError(f"Degradation.kind must be 'BI' or 'BD', got {self.kind!r}")
        if isinstance(self.scale, bool) or not isinstance(self.scale, int) or self.scale not in SCALES:
            raise ValueError(f"Degradation.scale must be one of {SCALES}, got {self.scale!r}")
        if not (isinstance(self.sigma, (int, float)) and math.isfinite(self.sigma) and self.sigma > 0):
            raise ValueError(f"Degradation.sigma must be a finite number > 0, got {self.sigma!r}")
        if not isinstance(self.kernel_size, int) or self.kernel_size < 1 or self.kernel_size % 2 == 0:
            raise ValueError(f"Degradation.kernel_size must be an odd positive int, got {self.kernel_size!r}")


def apply_degradation(hr_u8: torch.Tensor, deg: Degradation) -> torch.Tensor:
    """Applies ``deg`` to uint8 HR frame(s) ``(..., C, H, W)``; deterministic."""
    if deg.kind == "BI":
        return bi_degrade(hr_u8, deg.scale)
    return bd_degrade(hr_u8, deg.scale, sigma=deg.sigma, kernel_size=deg.kernel_size)
