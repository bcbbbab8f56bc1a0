"""Upscaling speed and memory: model-only and end-to-end fps, peak RSS for a short and a long clip.

    python benchmarks/bench_upscale.py [--device cpu|cuda] [--frames 48] [--skip-memory]

CPU (default): TANet-S (N = 3, ESPCN, Y, x4), 320x180 -> 1280x720.
- model-only fps: the plain eager NCHW forward (``VSRNet(x)``) against the upscaler's network
  path (fused branches, ``channels_last``), interleaved in one run, and their ratio
  (target >= 1.3x);
- end-to-end fps: ``tanet.infer.pipeline.upscale_video`` on a synthetic clip with audio (decode,
  colour, SR, encode on three threads), alignment ``none`` and ``rof`` (target: >= 0.8x the
  model-only fps for ``none``);
- peak RSS of ``tanet upscale`` on a clip and on one 10x longer (must be flat).
CUDA (``--device cuda``): 960x540 -> 3840x2160, eager bf16 vs the fused network in bf16,
``channels_last``, optionally ``torch.compile`` and CUDA graphs through ``--compile``
(target >= 800 fps on an H100). Without CUDA the script says the GPU figure was not measured.
"""

from __future__ import annotations

import argparse
import copy
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tanet.config import OptimParams  # noqa: E402
from tanet.infer.upscaler import Upscaler  # noqa: E402
from tanet.io.model_files import write_model_dir  # noqa: E402
from tanet.io.probe import ffmpeg_exe  # noqa: E402
from tanet.models import VSRNet, tanet_s  # noqa: E402
from tanet.train.job import Job  # noqa: E402


def make_model(path: Path, alignment: str) -> Path:
    torch.manual_seed(0)
    cfg = tanet_s(alignment=alignment)
    write_model_dir(
        path, VSRNet(cfg), Job("joint", 0, cfg, OptimParams(steps=1)), {"scale": 4, "degradation": "BI"}, []
    )
    return path


def make_clip(path: Path, frames: int, size: tuple[int, int] = (320, 180)) -> Path:
    secs = frames / 25
    subprocess.run(
        [ffmpeg_exe(), "-y", "-v", "error", "-f", "lavfi", "-i", f"testsrc2=size={size[0]}x{size[1]}:rate=25",
         "-f", "lavfi", "-i", f"sine=frequency=440:duration={secs}", "-frames:v", str(frames),
         "-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p", "-c:a", "aac", str(path)],
        check=True,
    )  # fmt: skip
    return path


def timed_fps(fn, seconds: float, sync=lambda: None) -> float:  # type: ignore[no-untyped-def]
    fn()
    sync()
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        fn()
        n += 1
    sync()
    return n / (time.perf_counter() - t0)


@torch.inference_mode()
def model_only(device: str, size: tuple[int, int], seconds: float, precision: str, compile_: bool) -> dict[str, float]:
    """Median fps of the plain eager forward and of the upscaler's network paths, interleaved.

    Paths: ``eager_nchw`` (``VSRNet.tanet`` as trained), ``fused`` (the upscaler's default
    inference form) and, with ``compile_``, ``compiled`` (the same under ``torch.compile``,
    as ``tanet upscale --compile on`` runs it; its one-off compile time is returned as
    ``compile_s``).
    """
    net = VSRNet(tanet_s(alignment="none")).to(device).eval()
    h, w = size
    x = torch.rand(1, 5, 1, h, w, device=device)
    # The Upscaler converts the module it is given (channels_last on CPU): keep the baseline apart.
    prec = "bf16" if precision == "bf16" else "fp32"
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    amp = torch.autocast(device, dtype=torch.bfloat16) if precision == "bf16" else torch.autocast(device, enabled=False)
    xin = (
        x.reshape(1, 5, h, w).contiguous(memory_format=torch.channels_last).reshape(1, 5, 1, h, w)
        if device == "cpu"
        else x
    )
    fused = Upscaler(copy.deepcopy(net), device=device, precision=prec).sr_net
    paths = {"eager_nchw": lambda: net(x), "fused": lambda: fused(xin)}
    compile_s = 0.0
    if compile_:
        compiled = Upscaler(copy.deepcopy(net), device=device, precision=prec, compile=True).sr_net
        t0 = time.perf_counter()
        with amp:
            compiled(xin)
        sync()
        compile_s = time.perf_counter() - t0
        if getattr(compiled, "failed", False):
            print("torch.compile failed here; 'compiled' below is the eager inference form")
        paths["compiled"] = lambda: compiled(xin)

    def under_amp(fn):  # type: ignore[no-untyped-def]
        def run() -> None:
            with amp:
                fn()

        return run

    res: dict[str, list[float]] = {k: [] for k in paths}
    for _ in range(5):  # interleaved rounds, median: the machines are noisy
        for name, fn in paths.items():
            res[name].append(timed_fps(under_amp(fn), seconds, sync))
    out = {k: sorted(v)[len(v) // 2] for k, v in res.items()}
    if compile_:
        out["compile_s"] = compile_s
    return out


@torch.inference_mode()
def only(path: str, n: int) -> None:
    """``n`` forwards of one path at 320x180 (TANet-S), printing its fps."""
    net = VSRNet(tanet_s(alignment="none")).eval()
    x = torch.rand(1, 5, 1, 180, 320)
    if path == "fused":
        sr_net = Upscaler(net).sr_net
        x = x.reshape(1, 5, 180, 320).contiguous(memory_format=torch.channels_last).reshape(1, 5, 1, 180, 320)
    else:
        sr_net = net
    sr_net(x)
    t0 = time.perf_counter()
    for _ in range(n):
        sr_net(x)
    print(f"{path}: {n / (time.perf_counter() - t0):.2f} fps")


def end_to_end(
    model_dir: Path, clip: Path, out: Path, preset: str = "auto", compile_: str = "off"
) -> tuple[float, float]:
    """``(fps over the whole run, steady fps from the first frame written to the last)``."""
    from tanet.infer.pipeline import upscale_video

    report = upscale_video(
        clip, out, model_dir, overwrite=True, progress=False, device="cpu", preset=preset, compile=compile_
    )
    return report.fps, report.steady_fps


def peak_rss(model_dir: Path, clip: Path, out: Path) -> float:
    code = (
        "import resource, sys\n"
        "from tanet.infer.pipeline import upscale_video\n"
        f"upscale_video({str(clip)!r}, {str(out)!r}, {str(model_dir)!r}, overwrite=True, progress=False, device='cpu')\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    return float(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--frames", type=int, default=120, help="frames of the end-to-end clip")
    ap.add_argument("--preset", default="auto", help="x264 preset of the end-to-end runs (auto: the CPU default)")
    ap.add_argument("--seconds", type=float, default=3.0, help="per model-only measurement")
    ap.add_argument("--compile", action="store_true", help="CUDA: also time the torch.compile'd network")
    ap.add_argument("--no-compile", action="store_true", help="CPU: skip the torch.compile'd path")
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument(
        "--only",
        choices=["eager", "fused"],
        help="run N model-only forwards of one path and exit (for pairing whole processes with an external timer)",
    )
    ap.add_argument("-n", type=int, default=40, help="forwards for --only")
    args = ap.parse_args()
    if args.only:
        only(args.only, args.n)
        return
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, device {args.device}")
    if args.device == "cuda":
        if not torch.cuda.is_available():
            print("CUDA not available: the GPU figure (960x540 -> 3840x2160) was not measured on this machine.")
            return
        print(f"GPU: {torch.cuda.get_device_name()}")
        res = model_only("cuda", (540, 960), args.seconds, "bf16", args.compile)
        best = max(v for k, v in res.items() if k not in ("eager_nchw", "compile_s"))
        print(json.dumps({"960x540->3840x2160 model-only fps (bf16)": res, "ratio": best / res["eager_nchw"]}))
        return
    res = model_only("cpu", (180, 320), args.seconds, "fp32", not args.no_compile)
    print(
        f"model-only 320x180 -> 1280x720: eager NCHW {res['eager_nchw']:.1f} fps, fused channels_last "
        f"{res['fused']:.1f} fps (ratio {res['fused'] / res['eager_nchw']:.2f})"
        + (
            f", compiled {res['compiled']:.1f} fps (ratio {res['compiled'] / res['eager_nchw']:.2f}; "
            f"compile {res['compile_s']:.0f} s)"
            if "compiled" in res
            else ""
        )
        + " (target >= 1.3)"
    )
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        clip = make_clip(tmp / "clip.mp4", args.frames)
        runs = [("none", "off", "fused"), ("rof", "off", None)]
        if "compiled" in res:
            runs.append(("none", "on", "compiled"))
        for alignment, comp, ref in runs:
            model = tmp / f"m_{alignment}"
            if not model.exists():
                make_model(model, alignment)
            fps, steady = end_to_end(model, clip, tmp / f"out_{alignment}.mp4", args.preset, comp)
            extra = f"; steady {steady / res[ref]:.2f}x model-only {ref} (target >= 0.8)" if ref else ""
            print(
                f"end-to-end (decode -> SR -> encode, audio copied), alignment {alignment}, compile {comp}: "
                f"{fps:.1f} fps whole run, {steady:.1f} fps steady{extra}"
            )
        if not args.skip_memory:
            model = tmp / "m_none"
            short, long_ = make_clip(tmp / "short.mp4", 30), make_clip(tmp / "long.mp4", 300)
            a, b = peak_rss(model, short, tmp / "s.mp4"), peak_rss(model, long_, tmp / "l.mp4")
            print(
                f"peak RSS: 30 frames {a:.0f} MiB, 300 frames {b:.0f} MiB (ratio {b / a:.2f}; flat = constant memory)"
            )
    print("GPU figure: run with --device cuda on a machine with an NVIDIA GPU (not measured here).")


if __name__ == "__main__":
    main()
