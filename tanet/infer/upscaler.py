"""Inference on whole frames: colour handling, alignment, tiling and precision in one place.

A trained model maps a window of 2N-1 LR frames to the HR centre frame. For real video:

- colour: Y models see the BT.601 Y plane (uint8, as in training) and Cb/Cr are upscaled
  with the MATLAB bicubic kernel; RGB models see all three channels;
- alignment runs on the full frame: ROF with OpenCV flow and the block grid
  (``model.align_block``), SAN block by block inside the model;
- only the SR network is tiled: tiles of ``tile`` LR pixels are cut with a margin of the
  network's receptive radius, so tiled and untiled outputs agree (to float rounding);
- the SR network runs in its inference form (``tanet.models.fused``): aggregation before the
  pixel shuffle, and on GPUs the N branches and the modulation branch fused into a few
  large convolutions;
- precision: fp32, or bf16/fp16 autocast (CUDA; bf16 also on CPU); ``channels_last`` memory
  format on CPU, which oneDNN runs faster;
- optionally ``torch.compile`` of the SR network (``compile=True``; Inductor with weight
  freezing, so oneDNN gets pre-packed weights and fused conv + ReLU). It costs a compile per
  input shape (about 25 s on 2 CPU cores, a few seconds from Inductor's on-disk cache) and
  then runs ~1.2x faster than the eager inference form on CPU, so it pays on long clips.
  If compiling fails (no C++ compiler, an unsupported op), a warning is logged and the
  eager form runs instead;
- windows at a clip's ends replicate the first/last frame, so every frame is upscaled.

Shapes: frames ``(H, W, 3)`` uint8 RGB in, ``(rH, rW, 3)`` uint8 RGB out; weight maps
``(N, rH, rW)`` float.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass, replace
from typing import Any, Literal, TypedDict, cast

import cv2
import numpy as np
import torch
from torch import nn

from tanet.errors import ConfigError
from tanet.models.branch import BranchConfig
from tanet.models.fused import FusedTANet, can_fuse
from tanet.models.temporal_adaptive import TANetOutput
from tanet.models.vsr import ModelConfig, VSRNet
from tanet.ops.color import rgb_to_y_uint8, rgb_to_ycbcr, ycbcr_to_rgb_affine
from tanet.ops.degrade import upscale_integer
from tanet.ops.optical_flow import DisPreset, FlowMethod
from tanet.ops.rof import align_window

log = logging.getLogger(__name__)
Precision = Literal["fp32", "bf16", "fp16"]
# Colour of each branch in weight-map pictures: branch 1 red, 2 green, 3 blue, then yellow, purple.
BRANCH_COLOURS = np.array([[230, 60, 50], [60, 180, 75], [40, 110, 230], [240, 200, 40], [150, 60, 200]], np.float32)


def receptive_radius(cfg: ModelConfig) -> int:
    """LR pixels of context the SR network reads on each side of an output pixel."""

    def body(b: BranchConfig) -> int:
        if b.kind == "residual":
            return 1 + 2 * b.num_blocks + 1 + 1
        radius = sum(k // 2 for k in b.kernel_sizes)
        return -(-radius // cfg.scale) + 2 if b.kind == "srcnn" else radius

    extra = 2 if cfg.branch.global_residual or cfg.branch.kind == "srcnn" else 0  # bicubic support
    return max(body(cfg.branch) + extra, body(cfg.modulation))


@dataclass(frozen=True)
class FrameResult:
    """One upscaled frame and, when asked, the temporal weight maps that produced it."""

    rgb: np.ndarray  # (rH, rW, 3) uint8
    weights: np.ndarray | None  # (N, rH, rW) float32, sums to 1 over N


class Upscaler:
    """Runs a :class:`VSRNet` over windows of frames.

    Args:
        model: the trained network (eval mode is set here).
        device: where to run it.
        precision: ``fp32``, ``bf16`` or ``fp16`` (fp16 on CUDA only).
        tile: LR tile side for the SR network (0 = whole frames).
        flow_method: optical flow used by ROF alignment (as in training: :func:`flow_settings`).
        flow_preset: DIS preset of that flow.
        fuse: run the SR network in its inference form (``tanet.models.fused``) when it has one.
        compile: ``torch.compile`` the SR network (see the module docstring).
    """

    def __init__(
        self,
        model: nn.Module,  # a VSRNet or StandaloneBranch; anything else raises TypeError
        device: torch.device | str = "cpu",
        precision: Precision = "fp32",
        tile: int = 0,
        flow_method: FlowMethod = "dis",
        flow_preset: DisPreset = "medium",
        fuse: bool = True,
        compile: bool = False,
    ) -> None:
        if not isinstance(model, (VSRNet, StandaloneBranch)):
            raise TypeError(f"Upscaler needs a VSRNet or StandaloneBranch, got {type(model).__name__}")
        self.device = torch.device(device)
        # ConfigError: a ValueError to library callers, one `tanet: error:` line in the CLI.
        if precision not in ("fp32", "bf16", "fp16"):
            raise ConfigError(f"precision must be fp32, bf16 or fp16, got {precision!r}")
        if precision == "fp16" and self.device.type != "cuda":
            raise ConfigError("--precision fp16 needs a CUDA device; use bf16 or fp32 on CPU")
        self.model = model.to(self.device).eval()
        if self.device.type == "cpu":
            # Module.to takes memory_format at run time; torch's stubs leave it out of its overloads.
            self.model = self.model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        self.cfg: ModelConfig = model.cfg
        self.precision = precision
        self.tile = tile
        self.flow_method = flow_method
        self.flow_preset = flow_preset
        self.margin = receptive_radius(self.cfg)
        # Network planes -> RGB x255 with the +0.5 of rounding, as one 3x4 matrix for
        # cv2.transform: ycbcr2rgb for Y models (Y, Cb, Cr planes), a scaling for RGB models.
        if self.cfg.color == "rgb":
            affine, bias = np.eye(3), np.zeros(3)
        else:
            affine, bias = ycbcr_to_rgb_affine()
        self._to_rgb255 = np.concatenate([255 * affine, 255 * bias[:, None] + 0.5], 1).astype(np.float32)
        # The SR network: the fused form (same function, fewer and larger convs) when possible.
        # A module, or a StandaloneBranch's bound tanet method (called alike).
        self.sr_net: Callable[..., Any] = self.model.tanet
        if fuse and isinstance(self.model, VSRNet) and can_fuse(self.model.tanet):
            # Grouped-conv fusion pays on GPUs; a 2-core AVX2 CPU runs separate convs faster.
            fused = FusedTANet(self.model.tanet, fuse_convs=self.device.type == "cuda").to(self.device).eval()
            if self.device.type == "cpu":
                fused = fused.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # as above
            self.sr_net = fused
        if compile:
            self.sr_net = CompiledOrEager(self.sr_net)

    @property
    def scale(self) -> int:
        """Upscaling factor."""
        return self.cfg.scale

    def _autocast(self) -> Any:
        if self.precision == "fp32":
            return nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    # -- per-frame preparation (done once per frame, reused by the 2N-1 windows) -------
    def prepare(self, rgb: np.ndarray) -> dict[str, Any]:
        """Network planes of one LR frame (uint8, as in training) and its chroma."""
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            raise ValueError(f"expected an (H, W, 3) uint8 RGB frame, got {rgb.dtype} {rgb.shape}")
        chw = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)
        if self.cfg.color == "y":
            return {"planes": rgb_to_y_uint8(chw).numpy(), "rgb": chw}
        return {"planes": chw.numpy(), "rgb": chw}

    def _network_input(self, prepared: list[dict[str, Any]]) -> torch.Tensor:
        planes = np.stack([p["planes"] for p in prepared])  # (T, C, h, w) uint8
        if self.cfg.alignment == "rof":
            luma = (
                planes[:, 0]
                if self.cfg.color == "y"
                else np.stack([rgb_to_y_uint8(p["rgb"]).numpy()[0] for p in prepared])
            )
            aligned_luma, shifts = align_window(
                luma,
                self.cfg.align_block,
                self.flow_method,
                self.flow_preset,
            )
            if self.cfg.color == "y":
                planes = aligned_luma[:, None]
            else:
                from tanet.ops.rof import apply_block_shifts

                centre = len(planes) // 2
                planes = np.stack(
                    [
                        planes[k]
                        if k == centre
                        else apply_block_shifts(
                            planes[k].transpose(1, 2, 0), shifts[k], self.cfg.align_block
                        ).transpose(2, 0, 1)
                        for k in range(len(planes))
                    ]
                )
        return torch.from_numpy(np.ascontiguousarray(planes)).to(self.device).float().div_(255)[None]

    # -- the network, tiled ------------------------------------------------------------
    @torch.inference_mode()
    def network(self, x: torch.Tensor, want_all: bool = False) -> dict[str, torch.Tensor]:
        """Runs alignment (SAN) on the full frame, then the SR network, tiled if asked.

        Args:
            x: ``(1, T, C, h, w)`` window in [0, 1].
            want_all: also return the branch outputs and the weight maps.

        Returns:
            ``{"sr": (C, rH, rW)}`` (float, unclamped), plus ``"branches": (N, C, rH, rW)``
            and ``"weights": (N, rH, rW)`` when ``want_all``.
        """
        with self._autocast():
            aligned, _ = self.model.align(x, full_frame=True)
            h, w = aligned.shape[-2:]
            t = self.tile if self.tile and (h > self.tile or w > self.tile) else max(h, w)
            r, m = self.scale, self.margin
            out: dict[str, torch.Tensor] = {}
            for y0 in range(0, h, t):
                for x0 in range(0, w, t):
                    y1, x1 = min(y0 + t, h), min(x0 + t, w)
                    py0, px0, py1, px1 = max(0, y0 - m), max(0, x0 - m), min(h, y1 + m), min(w, x1 + m)
                    part = self._tanet(aligned[..., py0:py1, px0:px1], want_all)
                    oy, ox = r * (y0 - py0), r * (x0 - px0)
                    for key, val in part.items():
                        if key not in out:
                            out[key] = torch.empty(
                                *val.shape[:-2], r * h, r * w, device=val.device, dtype=torch.float32
                            )
                        out[key][..., r * y0 : r * y1, r * x0 : r * x1] = val[
                            ..., oy : oy + r * (y1 - y0), ox : ox + r * (x1 - x0)
                        ]
            return out

    def _tanet(self, x: torch.Tensor, want_all: bool) -> dict[str, torch.Tensor]:
        if self.device.type == "cpu":
            b, t, c, h, w = x.shape
            x = x.reshape(b, t * c, h, w).contiguous(memory_format=torch.channels_last).reshape(b, t, c, h, w)
        if not want_all:
            return {"sr": self.sr_net(x)[0]}
        out = self.sr_net(x, return_all=True)
        return {"sr": out.sr[0], "branches": out.branches[0], "weights": out.weights[0, :, 0]}

    # -- frames in, frames out ---------------------------------------------------------
    def upscale_prepared(self, window: list[dict[str, Any]], want_weights: bool = False) -> FrameResult:
        """Upscales the centre frame of a window of prepared frames."""
        out = self.network(self._network_input(window), want_weights)
        rgb_hr = self.to_rgb(out["sr"], window[len(window) // 2])
        return FrameResult(rgb_hr, out["weights"].cpu().numpy() if want_weights else None)

    def to_rgb(self, sr: torch.Tensor, lr_frame: dict[str, Any]) -> np.ndarray:
        """HR network output ``(C, rH, rW)`` + the LR frame's chroma -> ``(rH, rW, 3)`` uint8 RGB.

        In float32: at 720p the float64 version cost as much as half the network's time on
        2 cores, and float32 changes a rounded output value only at exact .5 ties.
        """
        sr = sr.to("cpu", torch.float32)
        if self.cfg.color == "rgb":
            planes = [p.numpy() for p in sr]
        else:
            ycc = rgb_to_ycbcr(lr_frame["rgb"].float() / 255)  # (3, h, w)
            chroma = upscale_integer(ycc[1:], self.scale)  # MATLAB bicubic for Cb/Cr
            planes = [sr[0].clamp(0, 1).numpy(), chroma[0].numpy(), chroma[1].numpy()]
        # OpenCV's SIMD merge and per-pixel 3x4 transform, straight into HWC: at 720p about
        # 3x cheaper than torch's addmm + permute, and this runs beside the network.
        rgb255 = cv2.transform(cv2.merge(planes), self._to_rgb255)
        np.clip(rgb255, 0, 255, out=rgb255)
        return rgb255.astype(np.uint8)  # truncation == floor on [0, 255]

    def upscale_frames(self, frames: Iterable[np.ndarray], want_weights: bool = False) -> Iterator[FrameResult]:
        """Streams an iterable of LR frames to HR frames (same count; edges replicated).

        Memory holds one window (2N-1 prepared frames), whatever the clip length.
        """
        for window in self.windows(frames):
            yield self.upscale_prepared(window, want_weights)

    def network_frames(
        self, frames: Iterable[np.ndarray], want_weights: bool = False
    ) -> Iterator[tuple[dict[str, torch.Tensor], dict[str, Any]]]:
        """Like :meth:`upscale_frames` but stops before colour conversion.

        Yields ``(network outputs, prepared centre frame)``; :meth:`to_rgb` finishes the
        frame, so a pipeline can run that part on another thread.
        """
        for window in self.windows(frames):
            out = self.network(self._network_input(window), want_weights)
            yield out, window[len(window) // 2]

    def windows(self, frames: Iterable[np.ndarray]) -> Iterator[list[dict[str, Any]]]:
        """Prepared windows of 2N-1 frames around each frame in turn (edges replicated)."""
        half = self.cfg.num_frames // 2
        it = iter(frames)
        ahead: deque[dict[str, Any]] = deque()  # the centre frame and the frames after it
        behind: deque[dict[str, Any]] = deque(maxlen=half)  # frames before the centre
        for frame in it:
            ahead.append(self.prepare(frame))
            if len(ahead) > half:
                break
        while ahead:
            yield edge_window(list(behind), list(ahead), half)
            behind.append(ahead.popleft())
            nxt = next(it, None)
            if nxt is not None:
                ahead.append(self.prepare(nxt))


class CompiledOrEager(nn.Module):
    """``torch.compile`` of a module for inference, falling back to the module itself.

    Inductor runs with ``freezing`` (parameters become constants: pre-packed oneDNN weights,
    conv + ReLU fused) and static shapes (one compile per distinct input shape, e.g. the
    whole frame and the edge tiles). A compile that fails, typically for want of a C++
    compiler on CPU, logs one warning and the eager module serves every later call.
    """

    def __init__(self, module: Callable[..., Any]) -> None:
        super().__init__()
        self.eager = module
        self.compiled: Any = torch.compile(module, dynamic=False)
        self.failed = False

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if not self.failed:
            import torch._dynamo.exc
            import torch._inductor.config

            try:
                with torch._inductor.config.patch(freezing=True):
                    return self.compiled(*args, **kwargs)
            except torch._dynamo.exc.TorchDynamoException as err:
                self.failed = True
                first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
                log.warning("torch.compile failed (%s); running the network uncompiled", first[:300])
        return self.eager(*args, **kwargs)


def edge_window(behind: list[Any], ahead: list[Any], half: int) -> list[Any]:
    """The 2*half+1 window around ``ahead[0]``, replicating the clip's first/last frame.

    Args:
        behind: up to ``half`` frames before the centre (oldest first).
        ahead: the centre frame followed by up to ``half`` later frames.
        half: N-1.
    """
    before = [behind[0] if behind else ahead[0]] * (half - len(behind)) + behind[-half:] if half else []
    after = ahead[1 : half + 1]
    after = after + [after[-1] if after else ahead[0]] * (half - len(after))
    return before + [ahead[0]] + after


class StandaloneBranch(nn.Module):
    """A pretrained branch (``train.BranchModel``) behind the interface the Upscaler drives.

    It reads ROF-aligned windows when the pipeline's alignment is ``rof`` or ``san`` (it was
    pretrained on those) and raw windows otherwise.
    """

    def __init__(self, branch_model: nn.Module) -> None:
        super().__init__()
        cfg = cast(ModelConfig, branch_model.cfg)  # a BranchModel's config
        self.cfg = replace(cfg, alignment="rof" if cfg.alignment in ("rof", "san") else "none")
        self.inner = branch_model

    def align(self, frames: torch.Tensor, full_frame: bool = False) -> tuple[torch.Tensor, None]:
        return frames, None

    def tanet(self, frames: torch.Tensor, return_all: bool = False) -> Any:
        sr = self.inner(frames)
        if not return_all:
            return sr
        ones = torch.ones_like(sr[:, :1])[:, None]  # (B, 1, 1, rH, rW)
        return TANetOutput(sr, sr[:, None], ones)


class FlowSettings(TypedDict):
    """The :class:`Upscaler` keyword arguments :func:`flow_settings` returns."""

    flow_method: FlowMethod
    flow_preset: DisPreset


def flow_settings(meta: dict[str, Any]) -> FlowSettings:
    """``{"flow_method", "flow_preset"}`` of the optical flow a model's ROF inputs were made
    with (its ``model.json`` params), so inference aligns as training did."""
    flow = ((meta or {}).get("params") or {}).get("flow") or {}
    # Validated params when training wrote them; estimate_flow refuses any other value.
    return {
        "flow_method": cast(FlowMethod, str(flow.get("method", "dis"))),
        "flow_preset": cast(DisPreset, str(flow.get("dis_preset", "medium"))),
    }


def load_upscaler(model: nn.Module, **kwargs: Any) -> Upscaler:
    """An :class:`Upscaler` for a loaded joint model."""
    if not isinstance(model, VSRNet):
        raise TypeError(
            "only joint models (VSRNet) upscale video; branches are evaluated through tanet.infer.evaluation"
        )
    return Upscaler(model, **kwargs)


def weight_map_image(weights: np.ndarray) -> np.ndarray:
    """Colours ``(N, H, W)`` weights by branch: each pixel mixes branch colours by its weights."""
    colours = BRANCH_COLOURS[np.arange(weights.shape[0]) % len(BRANCH_COLOURS)]
    return np.clip(np.einsum("nhw,nc->hwc", weights.astype(np.float32), colours), 0, 255).astype(np.uint8)
