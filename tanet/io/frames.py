"""Frame folders: listing, reading and atomic writing of 8-bit RGB image frames.

A frame folder is a directory of PNG or JPEG files whose names sort in temporal order
(``00000000.png``, ``00000001.png``, ...). Numbered names must be contiguous: a gap is
reported as a missing frame instead of silently shortening the clip.
"""

from __future__ import annotations

import re
from pathlib import Path

import cv2
import numpy as np

from tanet.errors import InputError
from tanet.io.atomic import atomic_write_bytes

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
_NUMBER = re.compile(r"(\d+)(?=\.[A-Za-z]+$)")


def list_frames(folder: str | Path) -> list[Path]:
    """Lists the image frames of a folder in temporal order, checking for gaps.

    Args:
        folder: directory holding PNG/JPEG frames.

    Returns:
        The frame paths sorted by name.

    Raises:
        InputError: the folder is missing, holds no image, or its numbered names skip
            a number (a missing frame).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(folder, "not a directory of frames")
    frames = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not frames:
        raise InputError(folder, f"no image frames ({', '.join(IMAGE_SUFFIXES)}) in folder")
    numbers = [_NUMBER.search(p.name) for p in frames]
    if all(numbers):
        values = [int(m.group(1)) for m in numbers if m]
        # Names sort as strings; compare with the numeric order to catch both gaps and
        # unpadded numbering (frame_10 sorting before frame_2).
        order = sorted(range(len(frames)), key=lambda i: values[i])
        frames = [frames[i] for i in order]
        values = [values[i] for i in order]
        for prev, cur, path in zip(values, values[1:], frames[1:]):
            if cur == prev:
                raise InputError(path, f"duplicate frame number {cur}")
            if cur != prev + 1:
                missing = ", ".join(str(n) for n in range(prev + 1, min(cur, prev + 4)))
                raise InputError(folder, f"missing frame(s) numbered {missing} (before {path.name})")
    return frames


def read_rgb(path: str | Path) -> np.ndarray:
    """Reads one image as RGB uint8.

    Grey images are replicated to three channels, alpha is dropped and 16-bit images are
    reduced to 8 bits (rounded), so every frame has shape ``(H, W, 3)``.

    Args:
        path: PNG or JPEG file.

    Returns:
        ``(H, W, 3)`` uint8 array in RGB order.

    Raises:
        InputError: the file is missing or cannot be decoded.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "frame file does not exist")
    data = np.fromfile(path, dtype=np.uint8)
    img = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if img is None:
        raise InputError(path, "cannot decode image (corrupt or not a PNG/JPEG)")
    if img.dtype == np.uint16:
        img = np.floor(img.astype(np.float64) / 257.0 + 0.5).astype(np.uint8)
    elif img.dtype != np.uint8:
        raise InputError(path, f"unsupported sample type {img.dtype}")
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    elif img.shape[2] == 4:
        img = cv2.cvtColor(img, cv2.COLOR_BGRA2RGB)
    elif img.shape[2] == 3:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    else:
        raise InputError(path, f"unsupported channel count {img.shape[2]}")
    return np.ascontiguousarray(img)


def write_rgb(path: str | Path, rgb: np.ndarray, png_compression: int = 1) -> None:
    """Writes an RGB uint8 image atomically (temporary name in the same folder, then rename).

    Args:
        path: destination; the suffix picks the format (``.png`` is lossless).
        rgb: ``(H, W, 3)`` uint8 array (or ``(H, W)`` grey).
        png_compression: zlib level for PNG (1 is fast and still lossless).
    """
    path = Path(path)
    if rgb.dtype != np.uint8 or rgb.ndim not in (2, 3):
        raise ValueError(f"write_rgb expects (H, W[, 3]) uint8, got {rgb.dtype} {rgb.shape}")
    img = rgb if rgb.ndim == 2 else cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    params = [cv2.IMWRITE_PNG_COMPRESSION, png_compression] if path.suffix.lower() == ".png" else []
    ok, buf = cv2.imencode(path.suffix, img, params)
    if not ok:
        raise InputError(path, "cannot encode image")
    atomic_write_bytes(path, buf.tobytes())
