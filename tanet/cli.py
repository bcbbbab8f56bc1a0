"""The ``tanet`` command.

Every subcommand parses its arguments and calls one library function. Errors about inputs
(a missing file, a bad parameter, a model URI that does not resolve) print one line,
``tanet: error: ...``, and exit with status 2; nothing half-written is left behind.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from pathlib import Path
from typing import Any

from tanet.errors import TanetError, Terminated, raise_on_termination


def _finite(obj: Any) -> Any:
    """JSON-safe: +inf PSNR (identical frames) becomes the string "inf"."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return "inf" if obj > 0 else "-inf" if obj < 0 else "nan"
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    return obj


def cmd_params(args: argparse.Namespace) -> int:
    """Writes a preset's params.yaml (with ``--set key=value`` overrides)."""
    import yaml

    from tanet.config import dump_params, preset_params
    from tanet.io.atomic import atomic_write_text

    overrides = {}
    for item in args.set or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise TanetError(f"--set expects key=value, got {item!r}")
        overrides[key] = yaml.safe_load(value)
    data = preset_params(args.preset, overrides)
    # JSON (also valid YAML) for hosts without PyYAML, e.g. a bare GPU machine running tanet.train.
    text = json.dumps(data, indent=2) + "\n" if args.json else dump_params(data)
    if args.output == "-":
        sys.stdout.write(text)
    else:
        atomic_write_text(args.output, text)
        print(f"wrote {args.output} (preset {args.preset})")
    return 0


def cmd_degrade(args: argparse.Namespace) -> int:
    """``tanet degrade --kind BI|BD --scale R IN_DIR OUT_DIR``."""
    from tanet.stages.degrade import degrade_folder

    n = degrade_folder(args.in_dir, args.out_dir, args.kind, args.scale, sigma=args.sigma, kernel_size=args.kernel_size)
    print(json.dumps({"frames": n, "kind": args.kind, "scale": args.scale, "out": str(args.out_dir)}))
    return 0


def cmd_metrics(args: argparse.Namespace) -> int:
    """``tanet metrics --sr DIR --gt DIR [--crop N]``: per-frame and mean Y-PSNR/SSIM as JSON."""
    from tanet.infer.evaluation import evaluate_folders

    print(json.dumps(_finite(evaluate_folders(args.sr, args.gt, crop=args.crop)), indent=2))
    return 0


def cmd_upscale(args: argparse.Namespace) -> int:
    """``tanet upscale IN OUT [--model URI|PATH] ...``."""
    from tanet.infer.pipeline import upscale_video

    report = upscale_video(
        args.input,
        args.output,
        args.model,
        tile=args.tile,
        device=args.device,
        precision=args.precision,
        weights_video=args.weights_video,
        overwrite=args.overwrite,
        codec=args.codec,
        crf=args.crf,
        preset=args.preset,
        lossless=args.lossless,
        progress=not args.quiet,
        max_frames=args.max_frames,
        compile=args.compile,
    )
    print(json.dumps(report.__dict__))
    return 0


def cmd_export_onnx(args: argparse.Namespace) -> int:
    """``tanet export-onnx OUT.onnx [--model URI|PATH]``."""
    from tanet.infer.onnx import export_onnx
    from tanet.infer.pipeline import resolve_model

    path = export_onnx(resolve_model(args.model), args.output, opset=args.opset, check=not args.no_check)
    print(json.dumps({"onnx": str(path)}))
    return 0


def cmd_register(args: argparse.Namespace) -> int:
    """``tanet register --model-dir DIR --eval eval.json``: register existing weights anywhere."""
    from tanet.stages.register import register_model, write_registration

    if args.model is not None:
        from tanet.infer.shipped import read_card, shipped_dir

        model_dir, evaluation = shipped_dir(args.model), read_card(args.model)["eval"]
    elif args.eval is None:
        raise TanetError("register: --model-dir needs --eval (the model's eval.json)")
    else:
        model_dir, evaluation = args.model_dir, None
    if args.eval is not None:
        evaluation = json.loads(Path(args.eval).read_text())
    record = register_model(
        model_dir,
        evaluation,
        model_name=args.name,
        metric=args.metric,
        min_gain=args.min_gain,
    )
    if args.output:
        write_registration(args.output, record)
    print(json.dumps(record, indent=2))
    return 0


def cmd_import_run(args: argparse.Namespace) -> int:
    """``tanet import-run DIR``: log a model folder trained without MLflow (e.g. on a GPU box)."""
    from tanet.track.import_run import import_run

    print(json.dumps(import_run(args.model_dirs, experiment=args.experiment), indent=2))
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    """``tanet serve``: Prefect server, MLflow server, work pool, deployments, worker."""
    import time

    from tanet.track.services import serve
    from tanet.track.tracking import repo_root

    start = time.perf_counter()
    svc = serve(
        repo_root(),
        prefect_port=args.prefect_port,
        mlflow_port=args.mlflow_port,
        deploy=not args.no_deploy,
        worker=not args.no_worker,
        timeout=args.timeout,
    )
    print(f"# services up in {time.perf_counter() - start:.1f} s; use them with: eval $(tanet env)", file=sys.stderr)
    for k, v in svc.env().items():
        print(f"export {k}={v}")
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    """``tanet stop``: stops what ``tanet serve`` started (worker first)."""
    from tanet.track.services import stop
    from tanet.track.tracking import repo_root

    stopped = stop(repo_root())
    print("stopped: " + (", ".join(stopped) if stopped else "nothing was running"))
    return 0


def cmd_env(args: argparse.Namespace) -> int:
    """``tanet env``: ``export`` lines for the running services."""
    from tanet.track.services import read_state
    from tanet.track.tracking import repo_root

    svc = read_state(repo_root() / ".tanet" / "services")
    if svc is None:
        raise TanetError("no services running here (start them with `tanet serve`)")
    for k, v in svc.env().items():
        print(f"export {k}={v}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    """``tanet status``: health of the services."""
    from tanet.track.services import status
    from tanet.track.tracking import repo_root

    st = status(repo_root())
    print(json.dumps(st, indent=2))
    return 0 if not st["running"] or (st["prefect_healthy"] and st["mlflow_healthy"]) else 1


MODEL_HELP = (
    "a model folder (an existing path of that name wins), a shipped name (tanet-s, tanet-l, tanet-s-bd), "
    "models:/NAME@ALIAS or runs:/ID/model (default: the registry's models:/tanet@champion where there is a "
    "tracking store: MLFLOW_TRACKING_URI, or a repo's mlflow.db; else the shipped tanet-s)"
)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    # Long on purpose: one flat table of every sub-command and flag, the CLI's single reference.
    ap = argparse.ArgumentParser(prog="tanet", description="Video super-resolution that learns temporal dynamics.")
    ap.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("params", help="write a preset's params.yaml")
    p.add_argument("--preset", default="quick", choices=["tiny", "quick", "full"])
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override, e.g. train.steps=100")
    p.add_argument("-o", "--output", default="params.yaml", help="file to write, or - for stdout")
    p.add_argument("--json", action="store_true", help="write JSON (readable where PyYAML is not installed)")
    p.set_defaults(func=cmd_params)

    p = sub.add_parser("degrade", help="BI/BD-degrade a folder of frames")
    p.add_argument("--kind", required=True, choices=["BI", "BD"])
    p.add_argument("--scale", required=True, type=int, choices=[2, 3, 4])
    p.add_argument("--sigma", type=float, default=1.6, help="BD Gaussian sigma")
    p.add_argument("--kernel-size", type=int, default=13, help="BD kernel side")
    p.add_argument("in_dir", type=Path)
    p.add_argument("out_dir", type=Path)
    p.set_defaults(func=cmd_degrade)

    p = sub.add_parser("metrics", help="Y-PSNR/SSIM of SR frames against ground truth (JSON)")
    p.add_argument("--sr", required=True, type=Path)
    p.add_argument("--gt", required=True, type=Path)
    p.add_argument("--crop", type=int, default=0, help="border crop in pixels")
    p.set_defaults(func=cmd_metrics)

    p = sub.add_parser("upscale", help="upscale a video or frame folder with a trained model")
    p.add_argument("input", type=Path, help="video file or frame folder")
    p.add_argument("output", type=Path, help="video file (suffix picks the container) or frame folder")
    p.add_argument("--model", default=None, help=MODEL_HELP)
    p.add_argument("--tile", type=int, default=0, help="LR tile side for the SR network (0: whole frames)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    p.add_argument("--weights-video", type=Path, default=None, help="also write the temporal weight maps as a video")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    p.add_argument("--codec", default="libx264")
    p.add_argument("--crf", type=int, default=18)
    p.add_argument(
        "--preset", default="auto", help="encoder speed preset (auto: superfast on CPU, veryfast with a GPU)"
    )
    p.add_argument("--lossless", action="store_true", help="lossless output (ffv1 in .mkv, else x264 RGB)")
    p.add_argument("--max-frames", type=int, default=None, help="only the first N frames")
    p.add_argument(
        "--compile",
        default="auto",
        choices=["auto", "on", "off"],
        help="torch.compile the network (auto: for clips of 1000+ frames, where the compile pays back)",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no progress line")
    p.set_defaults(func=cmd_upscale)

    p = sub.add_parser("export-onnx", help="export the model's network to ONNX (checked against PyTorch)")
    p.add_argument("output", type=Path)
    p.add_argument("--model", default=None, help=MODEL_HELP)
    p.add_argument("--opset", type=int, default=18)
    p.add_argument("--no-check", action="store_true", help="skip the onnxruntime parity check")
    p.set_defaults(func=cmd_export_onnx)

    p = sub.add_parser("register", help="register trained weights in an MLflow registry")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--model-dir", type=Path, help="a trained model folder (with --eval)")
    which.add_argument("--model", help="a shipped name (tanet-s, ...): its card's figures are the evaluation")
    p.add_argument("--eval", type=Path, default=None, help="eval.json of the model (default: the shipped card's)")
    p.add_argument("--name", default="tanet")
    p.add_argument("--metric", default="psnr", choices=["psnr", "ssim"])
    p.add_argument("--min-gain", type=float, default=0.0)
    p.add_argument("-o", "--output", type=Path, default=None, help="write the registration record here")
    p.set_defaults(func=cmd_register)

    p = sub.add_parser("import-run", help="log model folders trained without MLflow into MLflow")
    p.add_argument("model_dirs", nargs="+", type=Path)
    p.add_argument("--experiment", default="tanet")
    p.set_defaults(func=cmd_import_run)

    p = sub.add_parser("serve", help="start Prefect + MLflow servers, the work pool, deployments and a worker")
    p.add_argument("--prefect-port", type=int, default=4200, help="0 = any free port")
    p.add_argument("--mlflow-port", type=int, default=5000, help="0 = any free port")
    p.add_argument("--no-deploy", action="store_true", help="do not apply prefect.yaml")
    p.add_argument("--no-worker", action="store_true", help="do not start a worker")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for each server")
    p.set_defaults(func=cmd_serve)
    p = sub.add_parser("stop", help="stop the services started by `tanet serve`")
    p.set_defaults(func=cmd_stop)
    p = sub.add_parser("env", help="print export lines for the running services")
    p.set_defaults(func=cmd_env)
    p = sub.add_parser("status", help="health of the services")
    p.set_defaults(func=cmd_status)
    return ap


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``tanet`` console script."""
    args = build_parser().parse_args(argv)
    raise_on_termination()
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return args.func(args)
    except (TanetError, FileExistsError) as err:
        print(f"tanet: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # e.g. a full disk or a read-only file system, named by the OS
        print(f"tanet: error: {err}", file=sys.stderr)
        return 1
    except Terminated as err:
        print(f"tanet: {err}; temporary outputs removed", file=sys.stderr)
        return 128 + err.signum
    except KeyboardInterrupt:
        print("tanet: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
