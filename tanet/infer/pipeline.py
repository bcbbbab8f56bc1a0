"""``tanet upscale``: a video (or frame folder) in, the model's xr video (or folder) out.

Design, against the failure modes of today's VSR video scripts:

- streaming in constant memory: frames are decoded, upscaled and encoded one at a time on
  three threads joined by small bounded queues, so the slowest of decode / model / encode
  sets the pace and nothing holds the whole video;
- every input frame gives one output frame (edge windows replicate the first/last frame);
  the frame count is checked at the end, and a decode failure raises instead of
  shortening the output;
- audio and subtitles are stream-copied from the input; fps (exact fraction), colour tags
  and sample aspect ratio are carried over; rotation is applied to the pixels (ffmpeg
  autorotates on decode) so the output is upright and untagged; variable frame rate input
  is refused with a clear message rather than silently retimed;
- odd sizes need no padding: the network is fully convolutional and the writer picks 4:4:4
  chroma when an output side is odd;
- the output is written under a temporary name and renamed at the very end, and an existing
  output is refused unless ``overwrite``.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import queue
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from tanet.errors import ConfigError, InputError, TanetError
from tanet.infer.upscaler import Upscaler, flow_settings, load_upscaler, weight_map_image
from tanet.io.model_files import MODEL_META, load_model_dir
from tanet.io.probe import count_frames
from tanet.io.video import open_video
from tanet.io.writer import FrameFolderWriter, VideoWriter, check_replaceable_frame_folder

log = logging.getLogger(__name__)

CHAMPION_URI = "models:/tanet@champion"
DEFAULT_SHIPPED = "tanet-s"  # the default model outside a repo with no tracking store
# compile="auto" compiles the network for clips at least this long: the compile (about 25 s
# on 2 CPU cores, less from Inductor's cache) saves ~20-30 ms a 720p frame there.
COMPILE_AUTO_FRAMES = 1000
_END = object()


@dataclass(frozen=True)
class UpscaleReport:
    """What an upscale run did."""

    input: str
    output: str
    frames: int
    seconds: float
    fps: float  # frames per second, end to end
    scale: int
    audio: bool  # audio was carried over
    # Frames per second from the first frame written to the last: the pipeline's pace without
    # the start-up (model load, the first window, a torch.compile).
    steady_fps: float = 0.0
    interlaced: str | None = None  # the input's field order when interlaced (upscaled as stored)


def default_model(root: Path | None = None) -> str:
    """What ``--model`` means when it is not given.

    The active registry's champion where there is a store (``MLFLOW_TRACKING_URI`` set, or a
    repo whose embedded ``mlflow.db`` exists); otherwise the shipped ``tanet-s``, so a plain
    ``tanet upscale IN OUT`` outside a repo reads nothing but the package and writes nothing
    but its output. An unreachable server stays an error, never a silent fallback.
    """
    from tanet.track.tracking import embedded_store

    if os.environ.get("MLFLOW_TRACKING_URI") or embedded_store(root) is not None:
        return CHAMPION_URI
    return DEFAULT_SHIPPED


def resolve_model(spec: str | None, root: Path | None = None) -> Path:
    """A local model folder for ``--model``.

    Args:
        spec: None (:func:`default_model`), an existing path (a model folder or an MLflow
            model folder; a path wins over a shipped name), a shipped name (``tanet-s``,
            ``tanet-l``, ``tanet-s-bd``) or a ``models:/``/``runs:/`` URI.
        root: repo root (for the embedded tracking store).

    Raises:
        TanetError: the URI does not resolve, the name is not shipped here, or the path is
            not a model.
    """
    from tanet.infer.shipped import is_shipped_name, shipped_dir

    spec = spec or default_model(root)
    if Path(spec).exists():
        return _model_dir_of(Path(spec), spec)
    if is_shipped_name(spec):
        return shipped_dir(spec)
    if spec.startswith(("models:/", "runs:/", "mlflow-artifacts:/")):
        from tanet.track.tracking import configure_mlflow, tracking_uri

        mlflow = configure_mlflow(root)
        try:
            local = Path(mlflow.artifacts.download_artifacts(artifact_uri=spec))
        except Exception as err:  # noqa: BLE001 - MLflow raises many types; one clear line instead
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise TanetError(
                f"model {spec} does not resolve in the tracking store {tracking_uri(root)}: {first}"
            ) from None
        return _model_dir_of(local, spec)
    raise TanetError(f"model {spec}: no such file or folder (and not a shipped name or a models:/ or runs:/ URI)")


def _model_dir_of(path: Path, spec: str) -> Path:
    if (path / MODEL_META).is_file():
        return path
    mlmodel = path / "MLmodel"
    if mlmodel.is_file():
        conf = yaml.safe_load(mlmodel.read_text())
        artifacts = conf.get("flavors", {}).get("python_function", {}).get("artifacts", {})
        rel = artifacts.get("model_dir", {}).get("path")
        if rel and (path / rel / MODEL_META).is_file():
            return path / rel
    raise TanetError(f"model {spec}: {path} holds neither a tanet model ({MODEL_META}) nor a tanet MLflow model")


def _check_distinct(input_path: Path, output_path: Path, weights_video: str | Path | None) -> None:
    """Refuses outputs that would replace the input, each other or the working folder.

    Paths are compared after resolving links, before anything is read or written, so no
    ``--overwrite`` can turn a typo into the loss of the source video.

    Raises:
        InputError: naming the path and the clash.
    """
    source = input_path.resolve()
    cwd = Path.cwd().resolve()
    outputs = {"output": output_path.resolve()}
    if weights_video is not None:
        outputs["--weights-video"] = Path(weights_video).resolve()
    for what, path in outputs.items():
        if path == source:
            raise InputError(
                path, f"the {what} is the input; write it elsewhere (--overwrite never replaces the input)"
            )
        if source.is_dir() and source in path.parents:
            raise InputError(path, f"the {what} lies inside the input frame folder {source}")
        if path == cwd or path in cwd.parents or path.parent == path:
            raise InputError(path, f"the {what} is the working folder or one above it; name a file or a new folder")
    if len(set(outputs.values())) < len(outputs):
        raise InputError(outputs["output"], "--weights-video and the output are the same path; give each its own")


def _check_output(path: Path, overwrite: bool) -> None:
    if path.exists() and not overwrite:
        raise InputError(path, "output exists (pass --overwrite to replace it)")
    if path.exists() and _is_folder_target(path):
        check_replaceable_frame_folder(path)
    probe = path.parent
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise InputError(path, f"cannot write here ({probe} is not a directory)")
    if not os.access(probe, os.W_OK):
        raise InputError(path, f"cannot write here ({probe} is not writable)")
    # os.access answers yes to root everywhere (even on /proc): try creating a file for real.
    try:
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as err:
        raise InputError(path, f"cannot write here ({probe} is not writable: {err.strerror})") from None


class Progress:
    """A one-line progress report on stderr: frames, fps and ETA."""

    def __init__(self, total: int | None, enabled: bool = True) -> None:
        self.total = total
        self.enabled = enabled
        self.start = time.perf_counter()
        self.last = 0.0
        self.tty = sys.stderr.isatty()

    def update(self, done: int, final: bool = False) -> None:
        """Redraws (at most a few times per second; every 5 s when not a terminal)."""
        if not self.enabled:
            return
        now = time.perf_counter()
        if not final and now - self.last < (0.25 if self.tty else 5.0):
            return
        self.last = now
        elapsed = max(1e-9, now - self.start)
        fps = done / elapsed
        if self.total:
            eta = (self.total - done) / fps if fps > 0 else math.inf
            eta_s = time.strftime("%H:%M:%S", time.gmtime(eta)) if math.isfinite(eta) else "--:--:--"
            line = f"{done}/{self.total} frames  {fps:.1f} fps  ETA {eta_s}"
        else:
            line = f"{done} frames  {fps:.1f} fps"
        sys.stderr.write(("\r" if self.tty else "") + line + ("\n" if final or not self.tty else ""))
        sys.stderr.flush()


def _pump(source: Iterator[Any], q: queue.Queue[Any], stop: threading.Event) -> None:
    """Feeds ``q`` from an iterator on a thread; ends with a sentinel or the exception."""
    try:
        for item in source:
            while not stop.is_set():
                try:
                    q.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if stop.is_set():
                return
        q.put(_END)
    except BaseException as err:  # noqa: BLE001 - handed to the consumer
        q.put(err)


def _drain(q: queue.Queue[Any]) -> Iterator[Any]:
    while True:
        item = q.get()
        if item is _END:
            return
        if isinstance(item, BaseException):
            raise item
        yield item


def upscale_video(
    input_path: str | Path,
    output_path: str | Path,
    model: str | Path | None = None,
    *,
    tile: int = 0,
    device: str = "auto",
    precision: str = "fp32",
    weights_video: str | Path | None = None,
    overwrite: bool = False,
    codec: str = "libx264",
    crf: int = 18,
    preset: str = "auto",
    lossless: bool = False,
    progress: bool = True,
    root: Path | None = None,
    max_frames: int | None = None,
    compile: str = "auto",
) -> UpscaleReport:
    """Upscales a video file or frame folder with a trained model.

    Args:
        input_path: video file or frame folder.
        output_path: video file (suffix picks the container) or frame folder (no suffix).
        model: ``models:/...``, ``runs:/...``, a shipped name, an MLflow model folder or a
            model folder (None: see :func:`default_model`).
        tile: LR tile side for the SR network (0: whole frames).
        device: ``auto``, ``cpu`` or ``cuda``.
        precision: ``fp32``, ``bf16`` or ``fp16``.
        weights_video: also write the temporal weight maps, coloured by branch, here.
        overwrite: replace existing outputs.
        codec: video codec of the output.
        crf: x264/x265 quality.
        preset: encoder speed preset; ``auto`` is ``superfast`` on CPU (the encoder shares the
            cores with the network) and ``veryfast`` with a GPU.
        lossless: lossless output (ffv1 in .mkv, else x264 RGB qp 0).
        progress: show a progress line on stderr.
        root: repo root (embedded tracking store).
        max_frames: only the first frames (for previews).
        compile: ``on``/``off``: ``torch.compile`` the SR network or not; ``auto``: on for
            clips of at least ``COMPILE_AUTO_FRAMES`` frames, where the compile (about 25 s
            on 2 CPU cores) is paid back.

    Returns:
        An :class:`UpscaleReport`.
    """
    input_path, output_path = Path(input_path), Path(output_path)
    device, preset = _check_settings(compile, tile, max_frames, device, preset)
    _check_distinct(input_path, output_path, weights_video)
    _check_output(output_path, overwrite)
    if weights_video is not None:
        _check_output(Path(weights_video), overwrite)
    net, meta = load_model_dir(resolve_model(str(model) if model is not None else None, root), "cpu")
    with contextlib.ExitStack() as stack:  # whatever is open when anything fails is closed (outputs dropped)
        reader = open_video(input_path, max_frames=max_frames)
        stack.enter_context(reader)
        info = reader.info
        interlaced = _check_input(input_path, info)
        total = _frame_total(input_path, info, max_frames)
        use_compile = compile == "on" or (compile == "auto" and total is not None and total >= COMPILE_AUTO_FRAMES)
        upscaler: Upscaler = load_upscaler(
            net, device=device, precision=precision, tile=tile, compile=use_compile, **flow_settings(meta)
        )
        r = upscaler.scale
        out_w, out_h = r * info.width, r * info.height
        has_audio = bool(getattr(info, "has_audio", False)) and not _is_folder_target(output_path)
        writer = stack.enter_context(
            _open_writer(
                output_path,
                info,
                out_w,
                out_h,
                audio_from=input_path if has_audio else None,
                audio_duration=(total / float(info.fps)) if (max_frames is not None and total) else None,
                codec=codec,
                crf=crf,
                preset=preset,
                lossless=lossless,
                overwrite=overwrite,
            )
        )
        wwriter = None
        if weights_video:
            wwriter = stack.enter_context(VideoWriter(weights_video, out_w, out_h, info.fps, overwrite=overwrite))
        bar = Progress(total, progress)
        start = time.perf_counter()  # the timed part: decode, network, encode (as reported)
        written, first_at, last_at = _stream(reader, writer, wwriter, upscaler, bar)
        if written != reader.frames_read:
            raise TanetError(f"{input_path}: {reader.frames_read} frames decoded but {written} written")
    bar.update(written, final=True)
    secs = time.perf_counter() - start
    log.info(
        "upscaled %s -> %s: %d frames x%d in %.1f s (%.2f fps)",
        input_path,
        output_path,
        written,
        r,
        secs,
        written / secs,
    )
    steady = (written - 1) / (last_at - first_at) if written > 1 and last_at > first_at else 0.0
    return UpscaleReport(
        str(input_path), str(output_path), written, secs, written / max(secs, 1e-9), r, has_audio, steady, interlaced
    )


def _check_input(path: Path, info: Any) -> str | None:
    """Refuses variable frame rate; warns about interlacing (returned: the field order, or None)."""
    if getattr(info, "variable_frame_rate", None):
        raise InputError(
            path,
            "variable frame rate input is not supported: convert it to a constant rate first "
            "(ffmpeg -i IN -fps_mode cfr OUT) so every frame keeps its time",
        )
    interlaced = getattr(info, "field_order", None)
    if interlaced:
        # Each stored frame weaves two fields captured 1/(2 fps) apart; the network, trained
        # on progressive video, upscales the combing with the picture. Kept as stored (no
        # silent change of frame count or rate), said in the log and the report.
        log.warning(
            "%s: interlaced input (%s): frames are upscaled as stored, combing included; "
            "deinterlace first for a clean result (ffmpeg -i IN -vf bwdif OUT)",
            path,
            interlaced,
        )
    return interlaced


def _frame_total(path: Path, info: Any, max_frames: int | None) -> int | None:
    """Frames that will be upscaled, when known (the progress bar's ETA and ``compile=auto``)."""
    total = info.num_frames
    if total is None and path.is_file():
        try:
            total = count_frames(path)
        except Exception:  # noqa: BLE001 - only the progress bar's ETA and compile=auto need it
            total = None
    if max_frames is not None and total is not None:
        total = min(total, max_frames)
    return total


def _stream(reader: Any, writer: Any, wwriter: Any, upscaler: Upscaler, bar: Progress) -> tuple[int, float, float]:
    """Decoder thread -> network thread -> this thread's encoder; returns (frames written, first
    and last write times). Both threads are stopped and joined whatever happens here."""
    stop = threading.Event()
    q_in: queue.Queue[Any] = queue.Queue(maxsize=8)
    q_out: queue.Queue[Any] = queue.Queue(maxsize=8)
    written = 0
    first_at = last_at = time.perf_counter()
    decoder = threading.Thread(target=_pump, args=(iter(reader), q_in, stop), daemon=True, name="decode")
    # Colour conversion happens on this (the writing) thread, beside the network's.
    results = upscaler.network_frames(_drain(q_in), want_weights=wwriter is not None)
    model_thread = threading.Thread(target=_pump, args=(results, q_out, stop), daemon=True, name="model")
    decoder.start()
    model_thread.start()
    try:
        for out, centre in _drain(q_out):
            writer.write(upscaler.to_rgb(out["sr"], centre))
            if wwriter is not None:
                wwriter.write(weight_map_image(out["weights"].cpu().numpy()))
            written += 1
            last_at = time.perf_counter()
            if written == 1:
                first_at = last_at
            bar.update(written)
    finally:
        stop.set()
        decoder.join()
        model_thread.join()
    return written, first_at, last_at


def _check_settings(compile: str, tile: int, max_frames: int | None, device: str, preset: str) -> tuple[str, str]:
    """Refuses bad settings before anything is opened; returns the resolved device and preset."""
    if compile not in ("auto", "on", "off"):
        raise ValueError(f"compile must be auto, on or off, got {compile!r}")
    if tile < 0:
        raise ConfigError(f"--tile {tile}: the LR tile side must be >= 0 (0: whole frames)")
    if max_frames is not None and max_frames < 1:
        raise ConfigError(f"--max-frames {max_frames}: must be >= 1 (omit it for every frame)")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise TanetError("--device cuda: CUDA is not available on this machine")
    if preset == "auto":
        preset = "veryfast" if device == "cuda" else "superfast"
    return device, preset


def _open_writer(
    output_path: Path,
    info: Any,
    width: int,
    height: int,
    *,
    audio_from: Path | None,
    audio_duration: float | None,
    codec: str,
    crf: int,
    preset: str,
    lossless: bool,
    overwrite: bool,
) -> Any:
    """The output: a video file keeping the input's colour, aspect and audio, or a frame folder."""
    if _is_folder_target(output_path):
        return FrameFolderWriter(output_path, width, height, overwrite=overwrite)
    return VideoWriter(
        output_path,
        width,
        height,
        info.fps,
        audio_from=audio_from,
        codec=codec,
        crf=crf,
        preset=preset,
        lossless=lossless,
        color=info.color if hasattr(info, "color") else None,
        sample_aspect_ratio=getattr(info, "sample_aspect_ratio", None),
        overwrite=overwrite,
        audio_duration=audio_duration,
    )


def _is_folder_target(path: Path) -> bool:
    return path.is_dir() or not path.suffix
