"""`tanet upscale` end to end on real video: frame count, audio, sizes, and clear errors."""

from __future__ import annotations

import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import media_factory as mf
import pytest
from model_factory import make_model_dir

from tanet.io.frames import list_frames
from tanet.io.probe import count_frames, probe


def _tanet(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tanet.cli", *map(str, args)], capture_output=True, text=True, cwd=cwd)


def test_video_with_audio_keeps_frames_fps_and_audio(tmp_path: Path, model_dir: Path) -> None:
    src = mf.h264_mp4(tmp_path / "in.mp4", size=(40, 24), frames=12, fps=Fraction(30000, 1001))
    out = tmp_path / "out.mp4"
    weights = tmp_path / "weights.mp4"
    res = _tanet("upscale", src, out, "--model", model_dir, "--weights-video", weights, "-q")
    assert res.returncode == 0, res.stderr
    info_in, info_out = probe(src), probe(out)
    assert (info_out.width, info_out.height) == (160, 96)
    assert count_frames(out) == count_frames(src) == 12
    assert info_out.fps == Fraction(30000, 1001)
    assert info_out.has_audio and info_out.audio_codecs == info_in.audio_codecs
    assert abs(info_out.duration - info_in.duration) < 0.1
    assert count_frames(weights) == 12 and not probe(weights).has_audio
    assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name]


def test_odd_sizes_and_frame_folders(tmp_path: Path, model_dir: Path) -> None:
    src = mf.odd_size_mp4(tmp_path / "odd.mp4", size=(33, 17))
    res = _tanet("upscale", src, tmp_path / "odd_x4.mp4", "--model", model_dir, "--tile", "8", "-q")
    assert res.returncode == 0, res.stderr
    assert (probe(tmp_path / "odd_x4.mp4").width, probe(tmp_path / "odd_x4.mp4").height) == (132, 68)
    folder = mf.frame_folder(tmp_path / "frames", frames=4, size=(15, 11))
    res = _tanet("upscale", folder, tmp_path / "frames_x4", "--model", model_dir, "-q")
    assert res.returncode == 0, res.stderr
    assert len(list_frames(tmp_path / "frames_x4")) == 4


def test_refuses_to_overwrite_unless_asked(tmp_path: Path, model_dir: Path) -> None:
    src = mf.h264_mp4(tmp_path / "in.mp4", size=(16, 16), frames=3, audio=False)
    out = tmp_path / "out.mp4"
    out.write_bytes(b"precious")
    res = _tanet("upscale", src, out, "--model", model_dir, "-q")
    assert res.returncode == 2 and "output exists" in res.stderr
    assert out.read_bytes() == b"precious"
    assert _tanet("upscale", src, out, "--model", model_dir, "--overwrite", "-q").returncode == 0
    assert count_frames(out) == 3


def test_overwrite_replaces_only_a_folder_of_tanets_own_frames(tmp_path: Path, model_dir: Path) -> None:
    src = mf.frame_folder(tmp_path / "frames", frames=3, size=(12, 12))
    out = tmp_path / "out"
    assert _tanet("upscale", src, out, "--model", model_dir, "-q").returncode == 0
    assert _tanet("upscale", src, out, "--model", model_dir, "--overwrite", "-q").returncode == 0  # its own frames
    (out / "notes.txt").write_text("mine")
    (out / "sub").mkdir()
    res = _tanet("upscale", src, out, "--model", model_dir, "--overwrite", "-q")
    assert res.returncode == 2 and "'notes.txt', which tanet did not write" in res.stderr, res.stderr
    assert (out / "notes.txt").read_text() == "mine" and (out / "sub").is_dir() and len(list_frames(out)) == 3
    (out / "notes.txt").unlink()
    res = _tanet("upscale", src, out, "--model", model_dir, "--overwrite", "-q")
    assert res.returncode == 2 and "'sub'" in res.stderr  # a sub-folder is foreign too
    video = mf.h264_mp4(tmp_path / "in.mp4", size=(16, 16), frames=3, audio=False)
    plain = tmp_path / "plainfile"
    plain.write_bytes(b"precious")
    res = _tanet("upscale", video, plain, "--model", model_dir, "--overwrite", "-q")
    assert res.returncode == 2 and "not a frame folder" in res.stderr and plain.read_bytes() == b"precious"


@pytest.mark.parametrize("case", ["same", "link", "weights_is_output", "weights_is_input", "inside_input", "cwd"])
def test_outputs_that_clash_with_the_input_or_each_other_are_refused(
    tmp_path: Path, model_dir: Path, case: str
) -> None:
    src = mf.h264_mp4(tmp_path / "clip.mp4", size=(16, 16), frames=3, audio=False)
    before = src.read_bytes()
    out, extra = tmp_path / "out.mp4", []
    if case == "same":
        out = src
    elif case == "link":
        out = tmp_path / "alias.mp4"
        out.symlink_to(src)
    elif case == "weights_is_output":
        extra = ["--weights-video", str(out)]
    elif case == "weights_is_input":
        extra = ["--weights-video", str(src)]
    elif case == "inside_input":
        src = mf.frame_folder(tmp_path / "frames", frames=3, size=(12, 12))
        out = src / "x4"
    elif case == "cwd":
        out = Path(".")
    res = _tanet("upscale", src, out, "--model", model_dir, "--overwrite", "-q", *extra, cwd=tmp_path)
    assert res.returncode == 2, res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("tanet: error:"), res.stderr
    assert (tmp_path / "clip.mp4").read_bytes() == before
    assert not (tmp_path / "out.mp4").exists() and not (tmp_path / "frames" / "x4").exists()


@pytest.mark.parametrize(
    ("case", "needle"),
    [
        ("missing", "does not exist"),
        ("not_video", "not a readable video"),
        ("unwritable", "not writable"),
        ("not_a_dir", "is not a directory"),
        ("bad_uri", "does not resolve"),
        ("bad_path", "no such file"),
        ("misfit_weights", "do not fit the model config"),
        ("vfr", "variable frame rate"),
        ("fp16_cpu", "fp16 needs a CUDA device"),
        ("nan_weights", "non-finite weights"),
        ("damaged_weights", "not a readable safetensors file"),
        ("pickled_weights", "not a readable safetensors file"),
        ("invalid_json", "model.json: not valid JSON"),
        ("no_model_key", "no 'model' section"),
        ("bad_number", "model.json: invalid model config"),
        ("negative_tile", "--tile -5"),
        ("negative_max_frames", "--max-frames -3"),
    ],
)
def test_bad_inputs_give_one_clear_line(tmp_path: Path, model_dir: Path, case: str, needle: str) -> None:
    good = mf.h264_mp4(tmp_path / "good.mp4", size=(16, 16), frames=3, audio=False)
    src, out, model = good, tmp_path / "out.mp4", str(model_dir)
    env_cwd = tmp_path
    if case == "missing":
        src = tmp_path / "nope.mp4"
    elif case == "not_video":
        src = mf.text_as_mp4(tmp_path / "text.mp4")
    elif case == "unwritable":
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        out = ro / "out.mp4"
        if __import__("os").geteuid() == 0:
            out = Path("/proc/tanet-out.mp4")  # root may write anywhere but procfs
    elif case == "not_a_dir":
        (tmp_path / "file").write_text("x")
        out = tmp_path / "file" / "out.mp4"
    elif case == "bad_uri":
        model = "models:/no-such-model@champion"
    elif case == "bad_path":
        model = str(tmp_path / "no-model")
    elif case == "misfit_weights":
        other = make_model_dir(tmp_path / "other", alignment="none")
        meta = (other / "model.json").read_text().replace('"num_branches": 3', '"num_branches": 2')
        (other / "model.json").write_text(meta)
        model = str(other)
    elif case == "vfr":
        src = mf.vfr_mp4(tmp_path / "vfr.mp4")
    elif case in ("nan_weights", "damaged_weights", "pickled_weights", "invalid_json", "no_model_key", "bad_number"):
        import json
        import pickle

        import torch
        from safetensors.torch import load_file, save_file

        broken = make_model_dir(tmp_path / "broken")
        weights, meta_file = broken / "model.safetensors", broken / "model.json"
        if case == "nan_weights":
            w = load_file(str(weights))
            w["tanet.branches.0.net.tail.bias"] = torch.full_like(w["tanet.branches.0.net.tail.bias"], float("nan"))
            save_file(w, str(weights))
        elif case == "damaged_weights":
            weights.write_bytes(weights.read_bytes()[:1000])
        elif case == "pickled_weights":
            weights.write_bytes(pickle.dumps({"x": 1}))
        elif case == "invalid_json":
            meta_file.write_text("{not json")
        elif case == "no_model_key":
            meta = json.loads(meta_file.read_text())
            del meta["model"]
            meta_file.write_text(json.dumps(meta))
        else:
            meta = json.loads(meta_file.read_text())
            meta["model"]["scale"] = "four"
            meta_file.write_text(json.dumps(meta))
        model = str(broken)
    extra = {
        "fp16_cpu": ["--precision", "fp16", "--device", "cpu"],
        "negative_tile": ["--tile", "-5"],
        "negative_max_frames": ["--max-frames", "-3"],
    }.get(case, [])
    res = subprocess.run(
        [sys.executable, "-m", "tanet.cli", "upscale", str(src), str(out), "--model", model, "-q", *extra],
        capture_output=True,
        text=True,
        cwd=env_cwd,
        env={**__import__("os").environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'empty.db'}"},
    )
    assert res.returncode != 0
    lines = [ln for ln in res.stderr.strip().splitlines() if ln.strip()]
    assert lines and lines[-1].startswith("tanet: error:"), res.stderr
    assert needle in lines[-1], lines[-1]
    assert len([ln for ln in lines if "Traceback" in ln]) == 0
    assert not out.exists()


def test_compile_on_gives_the_same_frames(tmp_path: Path, model_dir: Path) -> None:
    """``--compile on`` (torch.compile) writes the frames ``--compile off`` writes, to rounding."""
    import numpy as np

    from tanet.io.frames import read_rgb

    folder = mf.frame_folder(tmp_path / "frames", frames=5, size=(21, 13))
    for mode in ("off", "on"):
        res = _tanet("upscale", folder, tmp_path / f"x4_{mode}", "--model", model_dir, "--compile", mode, "-q")
        assert res.returncode == 0, res.stderr
        assert "torch.compile failed" not in res.stderr
    off, on = list_frames(tmp_path / "x4_off"), list_frames(tmp_path / "x4_on")
    assert len(off) == len(on) == 5
    for a, b in zip(off, on):
        diff = np.abs(read_rgb(a).astype(int) - read_rgb(b).astype(int))
        assert diff.max() <= 1 and (diff == 0).mean() > 0.999
    res = _tanet("upscale", folder, tmp_path / "x4_bad", "--model", model_dir, "--compile", "yes")
    assert res.returncode == 2 and "--compile" in res.stderr


def test_jpg_folder_in_lossless_video_out_keeps_colour_tags(tmp_path: Path, model_dir: Path) -> None:
    """JPG frame folders are inputs; --lossless writes FFV1 in .mkv; colour tags and the sample
    aspect ratio of a tagged source come through `tanet upscale`."""
    import cv2
    import numpy as np

    jpgs = tmp_path / "jpg"
    jpgs.mkdir()
    rng = np.random.default_rng(0)
    for k in range(4):
        cv2.imwrite(str(jpgs / f"f{k:03d}.jpg"), rng.integers(0, 256, (10, 14, 3), dtype=np.uint8))
    res = _tanet("upscale", jpgs, tmp_path / "x4.mkv", "--model", model_dir, "--lossless", "-q")
    assert res.returncode == 0, res.stderr
    info = probe(tmp_path / "x4.mkv")
    assert (info.width, info.height) == (56, 40) and count_frames(tmp_path / "x4.mkv") == 4
    assert info.codec == "ffv1"
    tagged = tmp_path / "tagged.mp4"
    mf.ffmpeg(
        *mf._testsrc((24, 16)), "-frames:v", "3", "-c:v", "libx264", "-pix_fmt", "yuv420p",
        "-colorspace", "bt709", "-color_primaries", "bt709", "-color_trc", "bt709", "-color_range", "tv",
        "-vf", "setsar=4/3", str(tagged),
    )  # fmt: skip
    res = _tanet("upscale", tagged, tmp_path / "tagged_x4.mp4", "--model", model_dir, "-q")
    assert res.returncode == 0, res.stderr
    src, out = probe(tagged), probe(tmp_path / "tagged_x4.mp4")
    assert out.color == src.color and src.color_space == "bt709" and src.color_range == "tv"
    assert out.sample_aspect_ratio == src.sample_aspect_ratio == Fraction(4, 3)


@pytest.mark.parametrize("server", ["closed", "silent"])
@pytest.mark.parametrize("model", ["models:/x@champion", "runs:/0123456789abcdef/model", None])
def test_unreachable_tracking_server_is_one_line_within_seconds(tmp_path: Path, server: str, model: str | None) -> None:
    import os
    import socket

    src = mf.h264_mp4(tmp_path / "in.mp4", size=(16, 16), frames=3, audio=False)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        if server == "silent":
            sock.listen(8)  # accepts connections (the kernel's backlog) but never answers
        port = sock.getsockname()[1]
        if server == "closed":
            sock.close()
        args = [sys.executable, "-m", "tanet.cli", "upscale", str(src), str(tmp_path / "out.mp4"), "-q"]
        args += ["--model", model] if model else []
        env = {**os.environ, "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{port}"}
        # A hang would be minutes of client retries; the timeout turns it into a failure.
        res = subprocess.run(args, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=90)
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert res.returncode == 2 and len(lines) == 1, res.stderr
    assert lines[0].startswith("tanet: error: MLflow tracking server") and str(port) in lines[0]
    assert not (tmp_path / "out.mp4").exists() and not (tmp_path / "mlflow.db").exists()


@pytest.mark.parametrize("size", [(3, 2), (11, 11), (12, 2), (64, 8), (8, 64)])
def test_tiny_and_thin_frames_upscale_with_rof_alignment(tmp_path: Path, size: tuple[int, int]) -> None:
    model = make_model_dir(tmp_path / "rof_model", alignment="rof")
    import numpy as np

    from tanet.io.frames import write_rgb

    src = tmp_path / "frames"  # written directly: ffmpeg's test source rounds odd sizes to even
    src.mkdir()
    rng = np.random.default_rng(0)
    for t in range(3):
        write_rgb(src / f"{t:08d}.png", rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    res = _tanet("upscale", src, tmp_path / "out", "--model", model, "-q")
    assert res.returncode == 0, (res.returncode, res.stderr[-2000:])
    frames = list_frames(tmp_path / "out")
    assert len(frames) == 3
    from tanet.io.frames import read_rgb

    assert read_rgb(frames[0]).shape == (4 * size[1], 4 * size[0], 3)


@pytest.mark.slow
@pytest.mark.parametrize("how", ["TERM", "HUP", "KILL"])
def test_a_signal_mid_run_leaves_no_temporary_output_and_no_ffmpeg(tmp_path: Path, model_dir: Path, how: str) -> None:
    """TERM/HUP clean up on the way out; after KILL the next run to the same output removes the leftover."""
    import os
    import signal
    import time

    src = mf.h264_mp4(tmp_path / "in.mp4", size=(96, 64), frames=600, audio=False)
    out = tmp_path / "out.mp4"
    proc = subprocess.Popen(
        [sys.executable, "-m", "tanet.cli", "upscale", str(src), str(out), "--model", str(model_dir), "-q"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not [p for p in tmp_path.iterdir() if p.name.startswith(".out.mp4.")]:
            assert proc.poll() is None, proc.communicate()[1][-2000:]
            assert time.monotonic() < deadline, "the writer never started"
            time.sleep(0.05)
        time.sleep(1.0)  # frames flowing through the encoder
        proc.send_signal(getattr(signal, f"SIG{how}"))
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    # After TERM/HUP tanet ends its ffmpeg children itself; after KILL they end on their own
    # when their pipes close (EOF on the encoder's stdin, SIGPIPE on the decoder's stdout).
    deadline = time.monotonic() + (20 if how == "KILL" else 0)
    while True:
        children = subprocess.run(["pgrep", "-s", str(proc.pid)], capture_output=True, text=True).stdout.split()
        if not children or time.monotonic() >= deadline:
            break
        time.sleep(0.2)
    assert not children, f"processes left in the session: {children}"
    hidden = [p.name for p in tmp_path.iterdir() if p.name.startswith(".out")]
    assert not out.exists()
    if how == "KILL":
        assert proc.returncode == -signal.SIGKILL and len(hidden) == 1  # nothing could clean up...
        res = _tanet("upscale", src, out, "--model", model_dir, "-q", "--max-frames", "2")
        assert res.returncode == 0, res.stderr
        hidden = [p.name for p in tmp_path.iterdir() if p.name.startswith(".out")]  # ...the next run did
    else:
        assert proc.returncode == 128 + getattr(signal, f"SIG{how}"), err
        assert "terminated by signal" in err and "Traceback" not in err, err
    assert not hidden, hidden


@pytest.mark.parametrize("kind", ["video", "folder"])
def test_a_legal_250_byte_output_name_works(tmp_path: Path, model_dir: Path, kind: str) -> None:
    src = mf.h264_mp4(tmp_path / "in.mp4", size=(16, 16), frames=2, audio=False)
    out = tmp_path / ("é" * 60 + ("x" * 126 + ".mp4" if kind == "video" else "x" * 130))  # 250 bytes in UTF-8
    assert len(out.name.encode()) == 250
    res = _tanet("upscale", src, out, "--model", model_dir, "-q")
    assert res.returncode == 0, res.stderr
    assert (count_frames(out) if kind == "video" else len(list_frames(out))) == 2
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_a_full_disk_on_a_frame_folder_output_names_the_file_and_leaves_nothing(
    tmp_path: Path, model_dir: Path
) -> None:
    """RLIMIT_FSIZE stands in for a full disk: writes past it fail (EFBIG, SIGXFSZ ignored)."""
    import resource
    import signal

    src = mf.h264_mp4(tmp_path / "in.mp4", size=(64, 48), frames=3, audio=False)
    out = tmp_path / "frames_out"

    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))  # a 256x192 PNG is larger

    res = subprocess.run(
        [sys.executable, "-m", "tanet.cli", "upscale", str(src), str(out), "--model", str(model_dir), "-q"],
        capture_output=True,
        text=True,
        preexec_fn=limit,
    )
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert res.returncode == 1 and len(lines) == 1, res.stderr
    assert lines[0].startswith("tanet: error:") and "File too large" in lines[0] and "00000000.png" in lines[0]
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_interlaced_input_is_upscaled_as_stored_with_a_warning_and_a_report_field(
    tmp_path: Path, model_dir: Path
) -> None:
    import json

    src = mf.interlaced_mp4(tmp_path / "tff.mp4", size=(32, 24), frames=4)
    assert probe(src).field_order == "top first"
    assert probe(mf.h264_mp4(tmp_path / "p.mp4", size=(16, 16), frames=2, audio=False)).field_order is None
    res = _tanet("upscale", src, tmp_path / "out.mp4", "--model", model_dir, "-q")
    assert res.returncode == 0, res.stderr
    assert "interlaced input (top first)" in res.stderr and "bwdif" in res.stderr
    assert json.loads(res.stdout)["interlaced"] == "top first"
    assert count_frames(tmp_path / "out.mp4") == 4
