"""The field's PSNR and SSIM on the Y channel, plus a flow-based temporal flicker measure.

Conventions, stated once (they match the published VSR tables):

* **Y** is computed from uint8 RGB with MATLAB's ``rgb2ycbcr`` (BT.601) and rounded to
  integers as MATLAB's uint8 cast does (``tanet.ops.color.rgb_to_y_uint8``), then taken as
  float64 in [16, 235]. Frames are compared in uint8, i.e. after the SR output has been
  rounded and clipped like any saved frame.
* **Every frame is counted** -- the first and last of a clip too.
* **Border crop is 0 unless asked** (``crop`` pixels removed on each side of both images;
  some tables crop ``scale`` pixels -- say which one you report).
* **Averaging**: per-frame values, mean over the frames of a clip, then mean over clips
  (``evaluate_folders`` does the first step for one clip).

PSNR is ``10 log10(255² / MSE)`` per image (+inf for identical images, so a clip mean
containing one is +inf too). SSIM is Wang et al.'s MATLAB ``ssim_index``: 11x11 Gaussian
window, sigma 1.5, normalised; ``valid`` filtering (no padding); ``C1 = (0.01*255)²``,
``C2 = (0.03*255)²``; the mean of the SSIM map. It equals scikit-image's
``structural_similarity(gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
data_range=255)``: skimage filters with a reflected border but then drops the 5-pixel
margin of its SSIM map, which is exactly the valid region.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Sequence

import cv2
import numpy as np
import torch

from tanet.ops.color import rgb_to_y_uint8, to_numpy
from tanet.ops.degrade import gaussian_taps

__all__ = [
    "SSIM_SIGMA",
    "SSIM_WINDOW",
    "psnr",
    "ssim",
    "clip_motion",
    "temporal_flicker",
    "y_channel",
    "y_psnr_ssim",
]

SSIM_WINDOW = 11  # Gaussian window side of MATLAB ssim_index
SSIM_SIGMA = 1.5  # its standard deviation
_K1, _K2 = 0.01, 0.03  # ssim_index constants: C1 = (K1 L)², C2 = (K2 L)², L = 255


def _check_pair(a: torch.Tensor, b: torch.Tensor, name: str) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{name} expects two images of the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    if a.ndim < 2 or not (a.is_floating_point() and b.is_floating_point()):
        raise ValueError(f"{name} expects floating tensors (..., H, W), got {a.dtype} {tuple(a.shape)}")


def _crop(x: torch.Tensor, crop: int, min_size: int, name: str) -> torch.Tensor:
    """Removes ``crop`` pixels from each side of the last two axes."""
    if not isinstance(crop, int) or crop < 0:
        raise ValueError(f"{name} expects an integer crop >= 0, got {crop!r}")
    h, w = x.shape[-2:]
    if h - 2 * crop < min_size or w - 2 * crop < min_size:
        raise ValueError(f"{name}: a {h}x{w} image cropped by {crop} is smaller than {min_size}x{min_size}")
    return x[..., crop : h - crop, crop : w - crop]


def psnr(a: torch.Tensor, b: torch.Tensor, crop: int = 0, data_range: float = 255.0) -> torch.Tensor:
    """Peak signal-to-noise ratio per image: ``10 log10(data_range² / mean((a - b)²))``.

    Args:
        a: ``(..., H, W)`` floating image(s), e.g. Y in [0, 255].
        b: same shape.
        crop: pixels removed on each side before comparing.
        data_range: peak value (255 for 8-bit data).

    Returns:
        ``(...)`` float64 tensor in dB; +inf where the images are identical.

    >>> round(psnr(torch.zeros(4, 4), torch.ones(4, 4)).item(), 4)
    48.1308
    """
    _check_pair(a, b, "psnr")
    a = _crop(a, crop, 1, "psnr").to(torch.float64)
    b = _crop(b, crop, 1, "psnr").to(torch.float64)
    mse = (a - b).square().mean(dim=(-2, -1))
    return 10 * torch.log10(data_range**2 / mse)  # mse == 0 -> +inf


@functools.lru_cache(maxsize=8)
def _filter_valid(x: torch.Tensor, taps: tuple[float, ...], dim: int) -> torch.Tensor:
    """Valid 1-D correlation of axis ``dim`` (-2 or -1) with ``taps``, in x's dtype.

    ``out[i] = sum_k taps[k] x[i + k]``, accumulated in place over shifted views. On a CPU
    this is ~7x faster than a float64 ``conv2d`` (which has no vectorised kernel there) and
    equal to it within 1e-13 at 255; it runs on any device and is differentiable.
    """
    n = x.shape[dim] - len(taps) + 1
    out = x.narrow(dim, 0, n) * taps[0]
    for k in range(1, len(taps)):
        out.add_(x.narrow(dim, k, n), alpha=taps[k])
    return out


def ssim(a: torch.Tensor, b: torch.Tensor, crop: int = 0, data_range: float = 255.0) -> torch.Tensor:
    """Structural similarity per image, as MATLAB ``ssim_index`` (Wang et al. 2004).

    With ``w`` the normalised 11x11 Gaussian (sigma 1.5) and ``*`` valid filtering:
    ``mu_a = w * a``, ``s_a² = w * a² - mu_a²``, ``s_ab = w * ab - mu_a mu_b``, and

        SSIM = mean( (2 mu_a mu_b + C1)(2 s_ab + C2) / ((mu_a² + mu_b² + C1)(s_a² + s_b² + C2)) )

    with ``C1 = (0.01 data_range)²``, ``C2 = (0.03 data_range)²``. Computed in float64
    with a separable filter (``_filter_valid``).

    Args:
        a: ``(..., H, W)`` floating image(s), Y in [0, 255]; at least 11x11 after cropping.
        b: same shape.
        crop: pixels removed on each side before comparing.
        data_range: peak value.

    Returns:
        ``(...)`` float64 tensor; 1 where the images are identical.

    >>> ssim(torch.rand(16, 16) * 255, torch.zeros(16, 16) + 7).item() < 0.1
    True
    """
    _check_pair(a, b, "ssim")
    lead = a.shape[:-2]
    a = _crop(a, crop, SSIM_WINDOW, "ssim").to(torch.float64)
    b = _crop(b, crop, SSIM_WINDOW, "ssim").to(torch.float64)
    h, w = a.shape[-2:]
    a = a.reshape(-1, 1, h, w)
    b = b.reshape(-1, 1, h, w)
    maps = torch.cat([a, b, a * a, b * b, a * b], dim=1)  # (N, 5, H, W), filtered alike
    taps = tuple(gaussian_taps(SSIM_WINDOW, SSIM_SIGMA).tolist())
    maps = _filter_valid(_filter_valid(maps, taps, -2), taps, -1)  # (N, 5, H - 10, W - 10)
    mu_a, mu_b, e_aa, e_bb, e_ab = maps.unbind(dim=1)
    c1 = (_K1 * data_range) ** 2
    c2 = (_K2 * data_range) ** 2
    mu_ab = mu_a * mu_b
    mu_aa = mu_a * mu_a
    mu_bb = mu_b * mu_b
    num = (2 * mu_ab + c1) * (2 * (e_ab - mu_ab) + c2)
    den = (mu_aa + mu_bb + c1) * ((e_aa - mu_aa) + (e_bb - mu_bb) + c2)
    return (num / den).mean(dim=(-2, -1)).reshape(lead)


def y_channel(rgb_u8: torch.Tensor) -> torch.Tensor:
    """Metric Y of uint8 RGB ``(..., 3, H, W)``: MATLAB BT.601, rounded, as float64 ``(..., H, W)``."""
    return rgb_to_y_uint8(rgb_u8).squeeze(-3).to(torch.float64)


def y_psnr_ssim(sr_rgb_u8: torch.Tensor, gt_rgb_u8: torch.Tensor, crop: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """PSNR and SSIM on Y of uint8 RGB frames, per frame.

    Args:
        sr_rgb_u8: ``(..., 3, H, W)`` uint8 estimate.
        gt_rgb_u8: ``(..., 3, H, W)`` uint8 ground truth.
        crop: border crop in pixels.

    Returns:
        ``(psnr, ssim)``, each a ``(...)`` float64 tensor.
    """
    if sr_rgb_u8.shape != gt_rgb_u8.shape:
        raise ValueError(f"y_psnr_ssim: SR shape {tuple(sr_rgb_u8.shape)} != GT shape {tuple(gt_rgb_u8.shape)}")
    sr, gt = y_channel(sr_rgb_u8), y_channel(gt_rgb_u8)
    return psnr(sr, gt, crop=crop), ssim(sr, gt, crop=crop)


def _dis_flows(y_frames: Sequence[np.ndarray]) -> list[np.ndarray]:
    """DIS optical flow (OpenCV, medium preset) from each frame to the next: ``(H, W, 2)``."""
    dis = cv2.DISOpticalFlow.create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)  # the typed spelling of DISOpticalFlow_create
    # flow=None: OpenCV allocates the output; its stubs type that argument as not optional.
    return [dis.calc(prev, nxt, None) for prev, nxt in itertools.pairwise(y_frames)]  # type: ignore[call-overload]


def clip_motion(frames: torch.Tensor) -> list[np.ndarray]:
    """DIS flow between consecutive frames of a ``(T, 3, H, W)`` uint8 clip, on the metric Y channel."""
    if frames.ndim != 4 or frames.shape[0] < 2 or frames.dtype != torch.uint8:
        raise ValueError(f"clip_motion expects a (T>=2, 3, H, W) uint8 clip, got {frames.dtype} {tuple(frames.shape)}")
    return _dis_flows([np.ascontiguousarray(f[..., 0]) for f in to_numpy(rgb_to_y_uint8(frames))])


def temporal_flicker(
    sr_frames: torch.Tensor, gt_frames: torch.Tensor, gt_motion: list[np.ndarray] | None = None
) -> float:
    """tOF-like temporal consistency of an SR clip against its ground truth; lower is better.

    ``tOF = mean_t mean_pixels,xy | flow(SR_t -> SR_t+1) - flow(GT_t -> GT_t+1) |``

    with flow the OpenCV DIS optical flow (medium preset) on the metric Y channel (uint8),
    in pixels. It is 0 when the SR clip moves exactly like the ground truth, and grows with
    flicker or wrong motion. It complements PSNR/SSIM, which score frames one at a time.
    Computed on the CPU with OpenCV.

    Args:
        sr_frames: ``(T, 3, H, W)`` uint8 SR clip, T >= 2.
        gt_frames: ``(T, 3, H, W)`` uint8 ground truth.
        gt_motion: :func:`clip_motion` of ``gt_frames``, when already computed (several
            methods scored against one ground truth).

    Returns:
        Mean absolute flow difference in pixels.
    """
    if sr_frames.shape != gt_frames.shape or sr_frames.ndim != 4 or sr_frames.shape[0] < 2:
        raise ValueError(
            f"temporal_flicker expects two (T>=2, 3, H, W) clips of one shape, "
            f"got {tuple(sr_frames.shape)} and {tuple(gt_frames.shape)}"
        )
    if sr_frames.dtype != torch.uint8 or gt_frames.dtype != torch.uint8:
        raise ValueError(f"temporal_flicker expects uint8 clips, got {sr_frames.dtype} and {gt_frames.dtype}")
    gt_motion = gt_motion if gt_motion is not None else clip_motion(gt_frames)
    diffs = [float(np.abs(fs - fg).mean()) for fs, fg in zip(clip_motion(sr_frames), gt_motion)]
    return math.fsum(diffs) / len(diffs)
