"""Training loop: schedule, augmentation, losses, init from pretraining, checkpoints, DDP, MLflow.

Resumption is checked end to end: ``python -m tanet.train`` is SIGKILLed after (or while)
writing a checkpoint, restarted with the same command, and its final weights must equal,
bit for bit, those of an uninterrupted run. Exact equality holds on CPU because the data
order, the augmentation and the initialisation are pure functions of seeds and the
loader position, and the CPU kernels (oneDNN convolutions, grid_sample, AdamW) are
deterministic for a fixed thread count; both runs are subprocesses with the same
environment, so they use the same number of threads.

The data (tiny preset, 64 patches in 4 row groups) is made once per session (~2 s).
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from bare_host import bare_host_python
from model_factory import weight_only_branch
from safetensors.torch import load_file

from tanet.config import OptimParams, Params, TrainParams, dump_params, params_from_dict, preset_params
from tanet.errors import ConfigError, TanetError
from tanet.io.model_files import CKPT_WEIGHTS, HISTORY, BranchModel, write_model_dir
from tanet.models import VSRNet, tanet_s
from tanet.models.san import SANConfig
from tanet.ops.rof import shift_crop
from tanet.stages import stage_params
from tanet.stages.pretrain import inflate_branch1
from tanet.stages.train import SETUP_PARAMS, TrainingSetup, pretrained_init, train_metrics
from tanet.train.augment import apply_dihedral, augment
from tanet.train.checkpoint import (
    CKPT_META,
    CKPT_STATE,
    checkpoint_dirs,
    job_fingerprint,
    load_checkpoint,
    save_checkpoint,
)
from tanet.train.job import Job, build_model
from tanet.train.loop import (
    compute_loss,
    learning_rate_at,
    load_init,
    make_optimizer,
    run_job,
    set_mixing,
    train_step,
)

PY = sys.executable
TORCHRUN = str(Path(sys.executable).with_name("torchrun"))
DATA_OVERRIDES = {"patches.patches_per_frame": 16}  # 64 patches, 4 row groups: 2 per DDP rank
CPU = torch.device("cpu")
# Subprocesses run single-threaded: the machine is shared, and two OpenMP threads spinning on
# two busy cores slow a step by 10-100x. Reference and resumed runs share this setting.
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


# -- fixtures and helpers -----------------------------------------------------------------
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="session")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The data stages of the tiny preset: clips, LR, flow, patches."""
    from tanet.stages import run_stage

    d = tmp_path_factory.mktemp("train_data")
    p = params_from_dict(preset_params("tiny", DATA_OVERRIDES))
    run_stage("ingest", p, root=Path(__file__).resolve().parents[1], out_dir=d / "clips")
    run_stage("degrade", p, clips_dir=d / "clips", out_dir=d / "lr")
    run_stage("flow", p, clips_dir=d / "clips", lr_dir=d / "lr", out_dir=d / "flow")
    run_stage("patches", p, clips_dir=d / "clips", lr_dir=d / "lr", flow_dir=d / "flow", out_dir=d / "patches")
    return d


def params_file(path: Path, **overrides: Any) -> Path:
    """A tiny-preset params.yaml (data sections as the ``data`` fixture) with dotted overrides."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(dump_params(preset_params("tiny", {**DATA_OVERRIDES, **overrides})))
    return path


def setup_of(params: Params) -> TrainingSetup:
    """The training stages' shared setup, bound from params as the stages bind it."""
    return TrainingSetup(**stage_params(params, SETUP_PARAMS))


def load(path: Path) -> Params:
    from tanet.config import load_params

    return load_params(path)


def cli(data: Path, params: Path, out: Path, *args: str, tracking: str = "none") -> list[str]:
    """Arguments of ``python -m tanet.train`` (without the interpreter) on the fixture data."""
    return [
        *args,
        "--params",
        str(params),
        "--clips",
        str(data / "clips"),
        "--lr-dir",
        str(data / "lr"),
        "--flow",
        str(data / "flow"),
        "--patches",
        str(data / "patches"),
        "--pretrain-out",
        str(out / "pre"),
        "--train-out",
        str(out / "joint"),
        "--checkpoints",
        str(out / "ckpt"),
        "--tracking",
        tracking,
    ]


def run_cli(
    args: list[str], log: Path, env: dict[str, str] | None = None, **kw: Any
) -> subprocess.CompletedProcess[str]:
    with log.open("w") as f:
        proc = subprocess.run(
            [PY, "-m", "tanet.train", *args],
            check=False,
            stdout=f,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=240,
            env=env or ENV,
            **kw,
        )
    assert proc.returncode == 0, log.read_text()[-3000:]
    return proc


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = load_file(str(a / CKPT_WEIGHTS)), load_file(str(b / CKPT_WEIGHTS))
    assert wa.keys() == wb.keys()
    different = [k for k in wa if not torch.equal(wa[k], wb[k])]
    assert not different, f"weights differ from the uninterrupted run: {different}"


def losses(model_dir: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in json.loads((model_dir / HISTORY).read_text()) if "loss" in r}


def ckpt_steps(folder: Path) -> list[int]:
    return [int(p.name.removeprefix("step_")) for p in checkpoint_dirs(folder)]


# -- learning-rate schedule ---------------------------------------------------------------
def test_lr_at_known_values() -> None:
    warm = OptimParams(steps=110, lr=1e-3, lr_min=1e-5, warmup_steps=10)
    assert learning_rate_at(0, warm) == pytest.approx(1e-4)
    assert learning_rate_at(4, warm) == pytest.approx(5e-4)
    assert learning_rate_at(9, warm) == pytest.approx(1e-3)  # warm-up ends at the peak
    assert learning_rate_at(10, warm) == pytest.approx(1e-3)  # cosine starts at the peak
    assert learning_rate_at(60, warm) == pytest.approx((1e-3 + 1e-5) / 2)  # half way
    assert learning_rate_at(110, warm) == pytest.approx(1e-5)  # the floor at `steps`
    assert learning_rate_at(500, warm) == pytest.approx(1e-5)  # and after
    values = [learning_rate_at(s, warm) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(values, values[1:]))  # monotone decay
    const = OptimParams(steps=100, lr=2e-4, schedule="constant", warmup_steps=4)
    assert [learning_rate_at(s, const) for s in (0, 3, 4, 50, 99)] == pytest.approx([5e-5, 2e-4, 2e-4, 2e-4, 2e-4])
    assert learning_rate_at(0, OptimParams(steps=10, lr=1e-3)) == pytest.approx(1e-3)  # no warm-up


# -- augmentation -------------------------------------------------------------------------
def _shifted_window(p: int, shifts: list[tuple[int, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """A 3-frame window whose neighbours are integer shifts of the centre: ``aligned[y, x] = nbr[y+dy, x+dx]``."""
    rng = np.random.default_rng(0)
    big = rng.integers(0, 256, (p + 16, p + 16), dtype=np.uint8)
    o = 8

    def crop(dx: int, dy: int) -> np.ndarray:  # nbr[y, x] = frame[y - dy, x - dx]
        return big[o - dy : o - dy + p, o - dx : o - dx + p]

    frames = [crop(*shifts[0]), crop(0, 0), crop(*shifts[1])]
    lr = torch.from_numpy(np.stack(frames)[:, None].copy())  # (T, C, p, p)
    theta = torch.tensor(shifts, dtype=torch.float32)  # (T-1, 2)
    return lr, theta


def _aligned_interior(nbr: np.ndarray, centre: np.ndarray, dx: int, dy: int) -> bool:
    p = nbr.shape[0]
    aligned = shift_crop(nbr, 0, 0, p, p, dx, dy)
    ys = slice(max(0, -dy), min(p, p - dy))  # rows whose source row is inside the patch
    xs = slice(max(0, -dx), min(p, p - dx))
    return bool(np.array_equal(aligned[ys, xs], centre[ys, xs]))


def test_augment_keeps_theta_consistent_for_all_8_symmetries() -> None:
    p, scale = 16, 4
    lr, theta = _shifted_window(p, [(2, -3), (-1, 4)])
    codes = torch.arange(8)
    hr = lr[1].repeat_interleave(scale, -1).repeat_interleave(scale, -2)  # nearest upsampling of the centre
    batch = {
        "lr": lr.expand(8, -1, -1, -1, -1).contiguous(),
        "rof": lr.expand(8, -1, -1, -1, -1).contiguous(),
        "hr": hr.expand(8, -1, -1, -1).contiguous(),
        "theta": theta.expand(8, -1, -1).contiguous(),
    }
    out = apply_dihedral(batch, codes)
    assert {tuple(out["lr"][i, 1, 0].flatten().tolist()) for i in range(8)}.__len__() == 8  # 8 distinct transforms
    for i in range(8):
        centre = out["lr"][i, 1, 0].numpy()
        for k, t in ((0, 0), (1, 2)):
            dx, dy = (int(v) for v in out["theta"][i, k])
            assert _aligned_interior(out["lr"][i, t, 0].numpy(), centre, dx, dy), (i, k, dx, dy)
            if i:  # the untransformed theta no longer aligns (the check is sensitive)
                assert not _aligned_interior(out["lr"][i, t, 0].numpy(), centre, *(int(v) for v in theta[k]))
        # HR and LR transformed alike: nearest upsampling commutes with the dihedral group.
        assert torch.equal(out["hr"][i], out["lr"][i, 1].repeat_interleave(scale, -1).repeat_interleave(scale, -2))
        assert torch.equal(out["rof"][i], out["lr"][i])
    # The random form: deterministic per generator seed, batch values unchanged in the input.
    a = augment(batch, torch.Generator().manual_seed(3))
    b = augment(batch, torch.Generator().manual_seed(3))
    assert all(torch.equal(a[k], b[k]) for k in batch)
    assert torch.equal(batch["lr"][0], lr)


# -- losses -------------------------------------------------------------------------------
def _batch(cfg: Any, n: int = 4, p: int = 16, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    lr = torch.randint(0, 256, (n, cfg.num_frames, cfg.channels, p, p), dtype=torch.uint8, generator=g)
    hr = torch.nn.functional.interpolate(lr[:, cfg.num_frames // 2].float(), scale_factor=cfg.scale, mode="bilinear")
    theta = torch.randint(-2, 3, (n, cfg.num_frames - 1, 2), generator=g).float()
    return {"lr": lr, "rof": lr, "hr": hr.round().clamp(0, 255).to(torch.uint8), "theta": theta}


@pytest.mark.parametrize("kind, alignment", [("branch", "rof"), ("joint", "rof"), ("joint", "san")])
def test_compute_loss_decreases_on_a_fixed_batch(kind: str, alignment: str) -> None:
    cfg = tanet_s(4, alignment=alignment, align_block=16)
    job = Job(kind, 2 if kind == "branch" else 0, cfg, OptimParams(steps=10, lr=2e-3), san_lambda=0.1)
    model = build_model(job)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    batch = _batch(cfg)
    first = None
    for _ in range(8):
        loss, parts = compute_loss(job, model, batch, CPU)
        first = float(loss.detach()) if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert ("theta" in parts) == (alignment == "san")
    assert float(compute_loss(job, model, batch, CPU)[0].detach()) < 0.9 * first


@pytest.mark.parametrize("mode", ["translation", "affine"])
def test_theta_term_is_zero_when_theta_equals_theta_hat(mode: str) -> None:
    cfg = tanet_s(4, alignment="san", align_block=16)
    cfg = dataclasses.replace(cfg, san=SANConfig(mode=mode))
    job = Job("joint", 0, cfg, OptimParams(steps=1), san_lambda=0.5)
    model = build_model(job)  # the SAN starts at the identity transform: theta = 0 shift
    batch = _batch(cfg)
    batch["theta"] = torch.zeros_like(batch["theta"])
    loss, parts = compute_loss(job, model, batch, CPU)
    assert float(parts["theta"]) == 0.0
    assert float(loss) == pytest.approx(float(parts["mse"]), rel=0, abs=0)
    batch["theta"][..., 0], batch["theta"][..., 1] = 1.0, -2.0  # ||(1, -2)||^2 = 5 per neighbour
    loss, parts = compute_loss(job, model, batch, CPU)
    expected = 5.0 if mode == "translation" else (2 / 16) ** 2 + (4 / 16) ** 2  # normalised affine offsets
    assert float(parts["theta"]) == pytest.approx(expected, rel=1e-6)
    assert float(loss) == pytest.approx(float(parts["mse"]) + 0.5 * expected, rel=1e-6)


# -- initialisation from pretraining ------------------------------------------------------
@pytest.mark.parametrize("kind", ["espcn", "residual", "srcnn"])
def test_branch_grown_from_branch1_starts_with_its_output_and_learns_its_neighbours(kind: str) -> None:
    overrides = {"model.branch.kind": kind}
    if kind == "residual":
        overrides |= {"model.branch.widths": [8], "model.branch.kernel_sizes": [3], "model.branch.num_blocks": 1}
    if kind == "srcnn":
        overrides |= {"model.branch.kernel_sizes": [9, 1, 5]}
    cfg = params_from_dict(preset_params("tiny", overrides)).model
    torch.manual_seed(3)
    b1 = BranchModel(cfg, 1)
    b3 = BranchModel(cfg, 3)
    load_init(b3, inflate_branch1(b1.state_dict(), 5, cfg.channels))
    x = torch.rand(2, cfg.num_frames, cfg.channels, 10, 10, generator=torch.Generator().manual_seed(1))
    noisy = x.clone()
    noisy[:, [0, 1, 3, 4]] = torch.rand(2, 4, cfg.channels, 10, 10)  # other neighbours, same centre
    with torch.no_grad():
        torch.testing.assert_close(b3(x), b1(x), rtol=0, atol=1e-6)
        torch.testing.assert_close(b3(noisy), b1(x), rtol=0, atol=1e-6)
    first = "branch.net.head.weight" if kind == "residual" else "branch.net.body.0.weight"
    F.mse_loss(b3(x), torch.rand_like(b3(x))).backward()
    grad = dict(b3.named_parameters())[first].grad
    assert grad is not None and grad[:, [0, 1, 3, 4]].abs().sum() > 0  # the neighbours' kernels learn


def test_pretrain_grows_branches_from_branch1_and_needs_it_first(tmp_path: Path) -> None:
    from tanet.stages.pretrain import branch1_init

    params = params_from_dict(preset_params("tiny"))
    assert params.pretrain.init_from_branch1
    assert branch1_init(params.pretrain, params.model, 1, tmp_path) is None
    with pytest.raises(TanetError, match="pretrain branch 1 first"):
        branch1_init(params.pretrain, params.model, 2, tmp_path)
    torch.manual_seed(0)
    b1 = BranchModel(params.model, 1)
    write_model_dir(tmp_path / "branch_1", b1, Job("branch", 1, params.model, params.pretrain), {}, [])
    init = branch1_init(params.pretrain, params.model, 2, tmp_path)
    assert init is not None and init["branch.net.body.0.weight"].shape[1] == 3 * params.model.channels
    off = params_from_dict(preset_params("tiny", {"pretrain.init_from_branch1": False}))
    assert branch1_init(off.pretrain, off.model, 2, tmp_path) is None


def test_pretrained_branches_load_into_the_joint_network(tmp_path: Path) -> None:
    params = params_from_dict(preset_params("tiny"))
    cfg, n = params.model, params.model.num_branches
    branches = []
    for i in range(1, n + 1):
        torch.manual_seed(100 + i)
        b = BranchModel(cfg, i)
        write_model_dir(tmp_path / f"branch_{i}", b, Job("branch", i, cfg, params.pretrain), {}, [])
        branches.append(b.eval())
    net = VSRNet(cfg).eval()
    load_init(net, pretrained_init(n, tmp_path))
    x = torch.rand(2, cfg.num_frames, cfg.channels, 12, 12, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for i in range(1, n + 1):  # the modulation branch weights branch i only
            weight_only_branch(net, i)
            assert torch.equal(net(x), branches[i - 1](x)), f"joint output != branch {i} alone"
    with pytest.raises(TanetError, match="unexpected keys"):
        load_init(net, {"tanet.branch.0.net.tail.weight": torch.zeros(1)})
    (tmp_path / "branch_2" / CKPT_WEIGHTS).unlink()
    with pytest.raises(TanetError, match="pretrained branch missing"):
        pretrained_init(n, tmp_path)


def test_uniform_mixing_trains_the_branches_under_fixed_one_over_n_weights(data: Path, tmp_path: Path) -> None:
    params = load(params_file(tmp_path / "params.yaml", **{"train.steps": 3, "train.mixing": "uniform"}))
    job = Job("joint", 0, params.model, params.train, params.train.san_lambda, params.seed)
    torch.manual_seed(3)
    init = {k: v.clone() for k, v in VSRNet(params.model).state_dict().items() if "modulation" not in k}
    run_job(job, data / "patches", [], tmp_path / "out", tmp_path / "ckpt", device=CPU, init_weights=init)
    trained = load_file(str(tmp_path / "out" / CKPT_WEIGHTS))
    tail = {k: v for k, v in trained.items() if k.startswith("tanet.modulation.net.tail.")}
    assert tail and all(torch.count_nonzero(v) == 0 for v in tail.values())  # logits 0: W_i = 1/N
    assert any(not torch.equal(trained[k], v) for k, v in init.items())  # the branches trained
    with pytest.raises(ConfigError, match="mixing"):
        load(params_file(tmp_path / "bad.yaml", **{"train.mixing": "fixed"}))


def test_modulation_start_uniform_zeroes_the_output_layer_unless_the_init_brings_one(tmp_path: Path) -> None:
    params = load(params_file(tmp_path / "params.yaml", **{"train.modulation_start": "uniform"}))
    torch.manual_seed(0)
    full = VSRNet(params.model).state_dict()
    branches_only = {k: v for k, v in full.items() if ".modulation." not in k}
    tail = "tanet.modulation.net.tail.weight"

    model = VSRNet(params.model)
    set_mixing(model, "adaptive", "uniform", branches_only)
    assert torch.count_nonzero(model.state_dict()[tail]) == 0
    assert all(p.requires_grad for p in model.tanet.modulation.parameters())  # starts uniform, trains
    shipped = VSRNet(params.model)
    shipped.load_state_dict(full)
    set_mixing(shipped, "adaptive", "uniform", full)  # a shipped model's modulation is kept
    assert torch.equal(shipped.state_dict()[tail], full[tail])
    default = VSRNet(params.model)
    before = default.state_dict()[tail].clone()
    set_mixing(default, "adaptive", "random", branches_only)
    assert torch.equal(default.state_dict()[tail], before) and torch.count_nonzero(before) > 0
    with pytest.raises(ConfigError, match="modulation_start"):
        load(params_file(tmp_path / "bad.yaml", **{"train.modulation_start": "zeros"}))


def test_joint_training_starts_uniform_when_asked(data: Path, tmp_path: Path) -> None:
    tails = {}
    for start in ("uniform", "random"):
        over = {"train.steps": 1, "train.lr": 1e-7, "train.lr_min": 0.0, "train.modulation_start": start}
        params = load(params_file(tmp_path / start / "params.yaml", **over))
        job = Job("joint", 0, params.model, params.train, params.train.san_lambda, params.seed)
        torch.manual_seed(3)
        init = {k: v.clone() for k, v in VSRNet(params.model).state_dict().items() if ".modulation." not in k}
        run_job(
            job,
            data / "patches",
            [],
            tmp_path / start / "out",
            tmp_path / start / "ckpt",
            device=CPU,
            init_weights=init,
        )
        tails[start] = load_file(str(tmp_path / start / "out" / CKPT_WEIGHTS))["tanet.modulation.net.tail.weight"]
    assert float(tails["uniform"].abs().max()) < 1e-5  # zero, then one step of at most ~lr
    assert float(tails["random"].abs().max()) > 1e-2


def test_modulation_lr_scale_gives_the_modulation_branch_its_own_rate(tmp_path: Path) -> None:
    params = load(params_file(tmp_path / "params.yaml", **{"train.modulation_lr_scale": 10.0}))
    job = Job("joint", 0, params.model, params.train, params.train.san_lambda, params.seed)
    torch.manual_seed(0)
    model = VSRNet(params.model)
    opt = make_optimizer(model, params.train, CPU, params.train.modulation_lr_scale)
    rest, mod = opt.param_groups
    assert {id(p) for p in mod["params"]} == {id(p) for p in model.tanet.modulation.parameters()}
    assert len(rest["params"]) + len(mod["params"]) == len(list(model.parameters()))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    train_step(job, model, opt, _batch(params.model), 5, CPU)
    lr = learning_rate_at(5, params.train)
    assert rest["lr"] == pytest.approx(lr) and mod["lr"] == pytest.approx(10 * lr)
    # Adam's first step moves each weight by about its group's rate (the gradient's sign).
    moved = {n: float((p.detach() - before[n]).abs().max()) for n, p in model.named_parameters()}
    assert max(v for n, v in moved.items() if ".modulation." in n) == pytest.approx(10 * lr, rel=0.05)
    assert max(v for n, v in moved.items() if ".modulation." not in n) == pytest.approx(lr, rel=0.05)
    # The default keeps one group, so checkpoints written before the setting still load.
    assert len(make_optimizer(VSRNet(params.model), TrainParams(), CPU).param_groups) == 1
    with pytest.raises(TanetError, match="joint network"):
        make_optimizer(torch.nn.Linear(2, 2), params.train, CPU, 10.0)
    with pytest.raises(ConfigError, match="modulation_lr_scale"):
        load(params_file(tmp_path / "bad.yaml", **{"train.modulation_lr_scale": 0.0}))


def test_mixing_figures_measure_what_the_modulation_adds(data: Path, tmp_path: Path) -> None:
    from tanet.io.clips import DataDirs
    from tanet.train.validate import mixing_figures, validate

    params = load(params_file(tmp_path / "params.yaml"))
    clips = setup_of(params).val_clips(DataDirs(data / "clips", data / "lr", data / "flow", data / "patches"), 2)
    job = Job("joint", 0, params.model, params.train, params.train.san_lambda, params.seed)
    torch.manual_seed(0)
    net = VSRNet(params.model)
    fig = mixing_figures(job, net, clips, CPU)
    n = params.model.num_branches
    assert set(fig) == {
        "mixed",
        "uniform",
        "oracle",
        "weight_std",
        "weight_max",
        *(f"branch_{i}" for i in range(1, n + 1)),
    }
    assert fig["mixed"] == pytest.approx(validate(job, net, clips, CPU)["val_psnr"], abs=1e-9)  # the same frames
    assert fig["weight_std"] > 0 and 1 / n < fig["weight_max"] < 1
    branches = [fig[f"branch_{i}"] for i in range(1, n + 1)]
    assert fig["oracle"] > max(branches)  # per pixel, the best of N beats each one
    net.tanet.modulation.start_uniform()
    fig = mixing_figures(job, net, clips, CPU)
    assert fig["weight_std"] == 0 and fig["weight_max"] == pytest.approx(1 / n)
    assert fig["mixed"] == pytest.approx(fig["uniform"], abs=1e-9)


def test_train_metrics_shape(tmp_path: Path) -> None:
    cfg = params_from_dict(preset_params("tiny")).model
    for i in (1, 2):
        write_model_dir(
            tmp_path / "pre" / f"branch_{i}",
            BranchModel(cfg, i),
            Job("branch", i, cfg, OptimParams()),
            {"val_psnr": 20.0 + i / 3},
            [],
        )
    write_model_dir(
        tmp_path / "joint",
        VSRNet(cfg),
        Job("joint", 0, cfg, OptimParams()),
        {"val_psnr": 25.123456, "val_psnr_bicubic": 23.98771},
        [],
    )
    assert train_metrics(tmp_path / "pre", tmp_path / "joint", 2) == {
        "pretrain": {"branch_1": {"val_psnr": 20.3333}, "branch_2": {"val_psnr": 20.6667}},
        "joint": {"val_psnr": 25.1235, "val_psnr_bicubic": 23.9877},
    }


# -- checkpoints (in process) -------------------------------------------------------------
def test_checkpoint_of_other_params_or_data_is_not_resumed(data: Path, tmp_path: Path) -> None:
    from tanet.io.shards import read_patch_manifest
    from tanet.stages.pretrain import branch_job

    params = load(params_file(tmp_path / "params.yaml", **{"pretrain.steps": 6, "pretrain.checkpoint_every": 2}))
    job = branch_job(params.pretrain, setup_of(params), 1)
    ckpt, out = tmp_path / "ckpt", tmp_path / "out"

    def first_step(j: Job, stop_after: int) -> int:
        seen: list[int] = []
        run_job(j, data / "patches", [], out, ckpt, device=CPU, stop_after=stop_after, on_step=seen.append)
        return seen[0]

    assert first_step(job, 2) == 1
    assert ckpt_steps(ckpt) == [2]
    assert first_step(job, 4) == 3  # same job: resumed after step 2
    assert ckpt_steps(ckpt) == [4]  # older checkpoints removed
    other = dataclasses.replace(job, optim=dataclasses.replace(job.optim, lr=5e-4))
    assert first_step(other, 2) == 1  # other params: trained afresh ...
    assert ckpt_steps(ckpt) == [2]  # ... and its checkpoint replaced the stale one
    assert first_step(job, 2) == 1  # and the first job's is gone

    manifest = read_patch_manifest(data / "patches")
    fp = job_fingerprint(job, manifest, None)
    changed = {**manifest, "shards": [{**s, "sha256": "0" * 64} for s in manifest["shards"]]}
    assert job_fingerprint(job, changed, None) != fp  # other data
    assert job_fingerprint(job, manifest, {"w": torch.zeros(2)}) != fp  # other initial weights
    assert job_fingerprint(job, manifest, None) == fp
    # train.init only names the initial weights, which are hashed themselves.
    weights = {"w": torch.ones(2)}
    joint = Job("joint", 0, job.model, TrainParams(), 0.01, job.seed)
    named = dataclasses.replace(joint, optim=dataclasses.replace(joint.optim, init="tanet-s"))
    assert job_fingerprint(named, manifest, weights) == job_fingerprint(joint, manifest, weights)
    assert job_fingerprint(joint, manifest, {"w": torch.zeros(2)}) != job_fingerprint(joint, manifest, weights)
    uniform = dataclasses.replace(joint, optim=dataclasses.replace(joint.optim, mixing="uniform"))
    assert job_fingerprint(uniform, manifest, weights) != job_fingerprint(joint, manifest, weights)
    started = dataclasses.replace(joint, optim=dataclasses.replace(joint.optim, modulation_start="uniform"))
    assert job_fingerprint(started, manifest, weights) != job_fingerprint(joint, manifest, weights)
    faster = dataclasses.replace(joint, optim=dataclasses.replace(joint.optim, modulation_lr_scale=10.0))
    assert job_fingerprint(faster, manifest, weights) != job_fingerprint(joint, manifest, weights)

    # Another number of DDP ranks is an error, not a silent restart.
    fp_now = json.loads((checkpoint_dirs(ckpt)[0] / CKPT_META).read_text())["fingerprint"]
    with pytest.raises(TanetError, match="DDP ranks"):
        load_checkpoint(ckpt, fp_now, world=2)
    # A damaged newest checkpoint falls back to the older complete one.
    state = load_checkpoint(ckpt, fp_now)
    assert state is not None and state["step"] == 2
    bad = ckpt / "step_00000009"
    bad.mkdir()
    (bad / CKPT_META).write_text(json.dumps({"step": 9, "world": 1, "fingerprint": fp_now}))
    (bad / CKPT_STATE).write_bytes(b"torn")
    state = load_checkpoint(ckpt, fp_now)
    assert state is not None and state["step"] == 2


def test_failed_checkpoint_write_keeps_the_previous_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = params_from_dict(preset_params("tiny")).model
    model = BranchModel(cfg, 1)
    opt = torch.optim.AdamW(model.parameters())
    from tanet.data.loader import LoaderState

    save_checkpoint(tmp_path, model, opt, 2, [LoaderState(0, 2)], [], {"fingerprint": "f"})

    def torn(obj: Any, f: Any, *a: Any, **k: Any) -> None:
        Path(f).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", torn)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(tmp_path, model, opt, 4, [LoaderState(0, 4)], [], {"fingerprint": "f"})
    assert ckpt_steps(tmp_path) == [2]
    assert [p.name for p in tmp_path.iterdir()] == ["step_00000002"]  # no temporary left
    monkeypatch.undo()
    state = load_checkpoint(tmp_path, "f")
    assert state is not None and state["loader"] == [{"epoch": 0, "batch": 2}]


# -- crash and resume (subprocesses) ------------------------------------------------------
CRASH_CASES = {
    # pretraining of branch 2 on ROF-aligned windows, from scratch (alone: not grown from branch 1)
    "branch": (
        ["pretrain", "--branch", "2"],
        "pre/branch_2",
        "ckpt/pretrain/branch_2",
        {
            "pretrain.steps": 24,
            "pretrain.checkpoint_every": 4,
            "pretrain.log_every": 4,
            "pretrain.val_frames": 1,
            "pretrain.init_from_branch1": False,
        },
    ),
    # the joint network with SAN alignment and the theta loss, from scratch
    "joint_san": (
        ["train"],
        "joint",
        "ckpt/train/joint",
        {
            "model.alignment": "san",
            "train.init_from_pretrain": False,
            "train.steps": 24,
            "train.san_lambda": 0.05,
            "train.checkpoint_every": 4,
            "train.log_every": 4,
            "train.val_frames": 1,
        },
    ),
}


@pytest.fixture(scope="module")
def reference(data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Uninterrupted runs of each crash case (started together, so they overlap in time)."""
    root = tmp_path_factory.mktemp("reference")
    procs, outs = [], {}
    for name, (stage, out_rel, _, over) in CRASH_CASES.items():
        params = params_file(root / name / "params.yaml", **over)
        log = (root / f"{name}.log").open("w")
        procs.append(
            (
                subprocess.Popen(
                    [PY, "-m", "tanet.train", *cli(data, params, root / name, *stage)],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=ENV,
                ),
                root / f"{name}.log",
            )
        )
        outs[name] = root / name / out_rel
    for proc, log in procs:
        assert proc.wait(timeout=240) == 0, log.read_text()[-3000:]
    return outs


def test_sigkill_then_resume_gives_bit_identical_weights(
    data: Path, reference: dict[str, Path], tmp_path: Path
) -> None:
    """Branch pretraining killed at whatever step follows the first checkpoint >= 8."""
    case = "branch"
    stage, out_rel, ckpt_rel, over = CRASH_CASES[case]
    steps = next(v for k, v in over.items() if k.endswith(".steps"))
    args = cli(data, params_file(tmp_path / "params.yaml", **over), tmp_path, *stage)
    ckpt = tmp_path / ckpt_rel
    with (tmp_path / "killed.log").open("w") as log:
        proc = subprocess.Popen([PY, "-m", "tanet.train", *args], stdout=log, stderr=subprocess.STDOUT, env=ENV)
        deadline = time.monotonic() + 180
        while proc.poll() is None and time.monotonic() < deadline:
            if any(s >= 8 for s in ckpt_steps(ckpt)):
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.002)
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "training ended before the kill; raise the steps"
    killed_at = ckpt_steps(ckpt)[0]
    assert 8 <= killed_at < steps and not (tmp_path / out_rel).exists()

    run_cli(args, tmp_path / "resumed.log")
    assert f"(step {killed_at})" in (tmp_path / "resumed.log").read_text()
    assert_same_weights(tmp_path / out_rel, reference[case])
    ref_losses = losses(reference[case])
    assert losses(tmp_path / out_rel) == ref_losses and len(ref_losses) == steps // 4
    assert ckpt_steps(ckpt) == [steps] and len(list(ckpt.iterdir())) == 1


KILL_DURING_WRITE = """
import os, signal, sys, torch
import tanet.train.cli
calls, real_save = 0, torch.save
def save(obj, f, *a, **k):  # the 3rd checkpoint (step 12): a torn file, then SIGKILL
    global calls
    calls += 1
    if calls == 3:
        with open(f, "wb") as fh:
            fh.write(b"partial")
        os.kill(os.getpid(), signal.SIGKILL)
    return real_save(obj, f, *a, **k)
torch.save = save
sys.exit(tanet.train.cli.main(sys.argv[1:]))
"""


def test_sigkill_during_checkpoint_write_resumes_from_the_previous_one(
    data: Path, reference: dict[str, Path], tmp_path: Path
) -> None:
    """The joint network with SAN alignment (theta loss), killed while writing its step-12 checkpoint."""
    stage, out_rel, ckpt_rel, over = CRASH_CASES["joint_san"]
    args = cli(data, params_file(tmp_path / "params.yaml", **over), tmp_path, *stage)
    script = tmp_path / "kill_during_write.py"
    script.write_text(textwrap.dedent(KILL_DURING_WRITE))
    proc = subprocess.run([PY, str(script), *args], check=False, capture_output=True, text=True, timeout=240, env=ENV)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    ckpt = tmp_path / ckpt_rel
    assert ckpt_steps(ckpt) == [8]  # the previous complete checkpoint ...
    assert any(p.name.startswith(".step_00000012") for p in ckpt.iterdir())  # ... beside the torn one
    run_cli(args, tmp_path / "resumed.log")
    assert "(step 8)" in (tmp_path / "resumed.log").read_text()
    assert_same_weights(tmp_path / out_rel, reference["joint_san"])
    assert losses(tmp_path / out_rel) == losses(reference["joint_san"])
    assert [p.name for p in ckpt.iterdir()] == ["step_00000024"]  # the torn temporary was cleaned up


def test_time_limit_checkpoints_the_step_it_stops_at_and_the_same_command_resumes(
    data: Path, reference: dict[str, Path], tmp_path: Path
) -> None:
    """``--time-limit 0``: one step, checkpointed though off the cadence, no outputs; then bit-identical."""
    stage, out_rel, ckpt_rel, over = CRASH_CASES["branch"]
    args = cli(data, params_file(tmp_path / "params.yaml", **over), tmp_path, *stage)
    run_cli([*args, "--time-limit", "0"], tmp_path / "limited.log")
    assert "time limit reached at step 1 of 24" in (tmp_path / "limited.log").read_text()
    assert ckpt_steps(tmp_path / ckpt_rel) == [1] and not (tmp_path / out_rel).exists()
    run_cli(args, tmp_path / "resumed.log")
    assert "(step 1)" in (tmp_path / "resumed.log").read_text()
    assert_same_weights(tmp_path / out_rel, reference["branch"])

    # `all`: branch 1 stops, so neither the grown branches nor the joint stage start.
    all_args = cli(data, params_file(tmp_path / "all" / "params.yaml"), tmp_path / "all", "all")
    run_cli([*all_args, "--time-limit", "0"], tmp_path / "all.log")
    log = (tmp_path / "all.log").read_text()
    assert json.loads(log[log.index("{") :]) == {"branch_1": {"stopped_at": 1}}
    assert sorted(p.name for p in (tmp_path / "all" / "ckpt").rglob("step_*")) == ["step_00000001"]
    bad = subprocess.run(
        [PY, "-m", "tanet.train", *all_args, "--time-limit", "-1"], capture_output=True, text=True, env=ENV
    )
    assert bad.returncode == 2 and "--time-limit must be >= 0" in bad.stderr


# -- DDP ----------------------------------------------------------------------------------
DDP_PROBE = """
import hashlib, os, sys
import tanet.train.cli
import tanet.train.loop
real_step = tanet.train.loop.train_step
def step(job, net, opt, batch, step, device, rank=0):  # records which samples each rank trains on
    with open(os.path.join(os.environ["PROBE_DIR"], f"{job.name}.rank{rank}"), "a") as f:
        for hr in batch["hr"]:
            f.write(hashlib.sha1(hr.numpy().tobytes()).hexdigest() + "\\n")
    return real_step(job, net, opt, batch, step, device, rank)
tanet.train.loop.train_step = step
sys.exit(tanet.train.cli.main(sys.argv[1:]))
"""


def test_ddp_two_cpu_ranks_under_torchrun(data: Path, tmp_path: Path) -> None:
    """``all`` under torchrun: 3 branches then the joint network (which reads what rank 0 wrote)."""
    over = {
        f"{s}.{k}": v
        for s in ("pretrain", "train")
        for k, v in {"steps": 4, "batch_size": 8, "checkpoint_every": 2, "val_frames": 1}.items()
    }
    args = cli(data, params_file(tmp_path / "params.yaml", **over), tmp_path, "all")
    probe = tmp_path / "probe.py"
    probe.write_text(textwrap.dedent(DDP_PROBE))
    (tmp_path / "seen").mkdir()
    env = {**ENV, "PROBE_DIR": str(tmp_path / "seen")}
    proc = subprocess.run(
        [TORCHRUN, "--standalone", "--nproc_per_node", "2", str(probe), *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert '"joint"' in proc.stdout and proc.stdout.count('"branch_1"') == 1  # rank 0 alone prints the results
    for name, ckpt, out in [
        *((f"branch_{i}", f"ckpt/pretrain/branch_{i}", f"pre/branch_{i}") for i in (1, 2, 3)),
        ("joint", "ckpt/train/joint", "joint"),
    ]:
        folders = list((tmp_path / ckpt).iterdir())
        assert [p.name for p in folders] == ["step_00000004"], name  # one checkpoint, no temporaries
        meta = json.loads((folders[0] / CKPT_META).read_text())
        assert meta["world"] == 2 and meta["optim"]["steps"] == 4 and meta["params"]["pretrain"]["steps"] == 4
        # The checkpoint alone rebuilds its network: config + safetensors weights.
        from tanet.config import model_config_from_dict
        from tanet.io.model_files import BranchModel

        cfg = model_config_from_dict(meta["model_config"])
        net = VSRNet(cfg) if name == "joint" else BranchModel(cfg, int(name[-1]))
        net.load_state_dict(load_file(str(folders[0] / CKPT_WEIGHTS)))
        assert len(torch.load(folders[0] / CKPT_STATE, weights_only=True)["loader"]) == 2
        assert sorted(p.name for p in (tmp_path / out).iterdir()) == ["history.json", "model.json", "model.safetensors"]
        seen = [(tmp_path / "seen" / f"{name}.rank{r}").read_text().split() for r in (0, 1)]
        assert [len(s) for s in seen] == [16, 16]  # 4 steps x 4 patches per rank
        assert not set(seen[0]) & set(seen[1]), f"{name}: ranks saw the same patches"
    assert not [p for p in tmp_path.rglob(".*.tmp")]


def test_trains_on_a_bare_gpu_host_without_yaml_ffmpeg_mlflow_prefect_dvc(data: Path, tmp_path: Path) -> None:
    """The GPU machine has torch, numpy, pyarrow, opencv and safetensors only: training runs
    there as a plain module from JSON params (``tanet params --json``)."""
    over = {
        f"{s}.{k}": v
        for s in ("pretrain", "train")
        for k, v in {"steps": 2, "batch_size": 4, "checkpoint_every": 2, "val_frames": 1}.items()
    }
    params = tmp_path / "params.json"
    params.write_text(json.dumps(preset_params("tiny", {**DATA_OVERRIDES, **over}), indent=2))
    py, env = bare_host_python(tmp_path, ENV)
    cmd = [*py, "-m", "tanet.train"]
    probe = subprocess.run([*py, "-c", "import yaml"], capture_output=True, text=True, env=env, check=False)
    assert "No module named 'yaml'" in probe.stderr  # the packages are really gone
    args = cli(data, params, tmp_path, "all", tracking="auto")
    proc = subprocess.run(
        [*cmd, *args], capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path, check=False
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert '"joint"' in proc.stdout
    assert (tmp_path / "joint" / "model.safetensors").is_file()
    bad = tmp_path / "params.yml"
    bad.write_text("train: {steps: 2}\n")  # YAML, not JSON: a clear error without PyYAML
    proc = subprocess.run(
        [*cmd, *cli(data, bad, tmp_path / "b", "all")], capture_output=True, text=True, env=env, check=False
    )
    assert proc.returncode != 0 and "PyYAML is not installed here" in proc.stderr and "Traceback" not in proc.stderr


# -- MLflow -------------------------------------------------------------------------------
def test_mlflow_tracking_and_import_run(
    data: Path, reference: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    params = params_file(tmp_path / "params.yaml", **{"pretrain.val_frames": 1, "train.val_frames": 1})
    env = {**ENV, "MLFLOW_TRACKING_URI": uri, "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}
    env.pop("TANET_PARENT_RUN_ID", None)
    run_cli(cli(data, params, tmp_path / "live", "all", tracking="mlflow"), tmp_path / "all.log", env=env, cwd=tmp_path)

    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("TANET_PARENT_RUN_ID", raising=False)
    monkeypatch.chdir(tmp_path)
    import mlflow

    client = mlflow.MlflowClient(uri)
    exp = client.get_experiment_by_name("tanet")
    runs = client.search_runs([exp.experiment_id])
    by_name: dict[str, list[Any]] = {}
    for r in runs:
        by_name.setdefault(r.data.tags.get("mlflow.runName"), []).append(r)
    assert sorted(by_name) == ["branch_1", "branch_2", "branch_3", "pipeline", "pretrain", "train"]
    assert all(len(v) == 1 for v in by_name.values())
    parent = by_name["pipeline"][0].info.run_id
    pretrain, train = by_name["pretrain"][0], by_name["train"][0]
    assert pretrain.data.tags["mlflow.parentRunId"] == parent and train.data.tags["mlflow.parentRunId"] == parent
    assert pretrain.data.params["pretrain.steps"] == "4" and train.data.params["train.steps"] == "4"
    for run in [by_name[f"branch_{i}"][0] for i in (1, 2, 3)] + [train]:
        if run is not train:
            assert run.data.tags["mlflow.parentRunId"] == pretrain.info.run_id
        assert run.info.status == "FINISHED"
        assert run.data.params["job.fingerprint"]
        for key in ("loss", "lr", "patches_per_s"):
            assert [m.step for m in client.get_metric_history(run.info.run_id, key)] == [1, 2, 3, 4], key
        assert "val_psnr" in run.data.metrics
        assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {"model", "checkpoint", "curves"}
    assert "val_psnr_bicubic" in train.data.metrics

    # tanet import-run: a folder trained with --tracking none, logged afterwards.
    from tanet.cli import main as tanet_main

    model_dir = reference["branch"]  # pretrained branch 2, --tracking none
    assert tanet_main(["import-run", str(model_dir)]) == 0
    imported = [
        r
        for r in client.search_runs([exp.experiment_id])
        if r.data.tags.get("tanet.imported") == "true" and r.data.tags.get("mlflow.runName") == "branch_2"
    ]
    assert len(imported) == 1
    history = json.loads((model_dir / HISTORY).read_text())
    logged = {m.step: m.value for m in client.get_metric_history(imported[0].info.run_id, "loss")}
    assert logged == {r["step"]: pytest.approx(r["loss"]) for r in history if "loss" in r}
    assert imported[0].data.metrics["val_psnr"] == pytest.approx(history[-1]["val_psnr"])


def test_data_fixture_is_what_the_tests_assume(data: Path) -> None:
    manifest = json.loads((data / "patches" / "manifest.json").read_text())
    assert manifest["rows"] == 64 and sum(s["row_groups"] for s in manifest["shards"]) == 4


def test_plot_curves_writes_a_png(tmp_path: Path) -> None:
    from tanet.train.curves import plot_curves

    history = [{"step": s, "loss": 1 / s, "lr": 1e-3} for s in range(1, 30)] + [{"step": 29, "val_psnr": 28.5}]
    assert plot_curves(history, tmp_path / "c.png", title="joint")
    assert (tmp_path / "c.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not plot_curves([], tmp_path / "empty.png")


# -- fine-tuning a shipped model (train.init) ---------------------------------------------
def test_tiny_fine_tunes_from_the_shipped_tanet_s(data: Path, tmp_path: Path) -> None:
    """``train.init: tanet-s``: pretraining trains nothing and hands on tanet-s's branches; the
    joint network starts from tanet-s's weights; another network is refused, key by key."""
    from safetensors.torch import load_file

    from tanet.infer.shipped import shipped_dir
    from tanet.io.clips import DataDirs
    from tanet.stages import run_stage
    from tanet.stages.train import shipped_init
    from tanet.track.tracking import Tracker

    with pytest.raises(TanetError, match=r"model\.branch\.global_residual \(False vs True\)"):
        shipped_init(setup_of(load(params_file(tmp_path / "plain.yaml", **{"train.init": "tanet-s"}))))
    over = {"train.init": "tanet-s", "model.branch.global_residual": True, "train.steps": 1}
    params = load(params_file(tmp_path / "params.yaml", **over, **{"train.lr": 1e-12, "train.lr_min": 0.0}))
    shipped = load_file(str(shipped_dir("tanet-s") / "model.safetensors"))
    dirs = DataDirs(data / "clips", data / "lr", data / "flow", data / "patches")
    plots = tmp_path / "plots"
    result = run_stage(
        "pretrain",
        params,
        dirs=dirs,
        out=tmp_path / "pretrain",
        metrics=tmp_path / "pretrain.json",
        checkpoints=tmp_path / "ckpt",
        plots=plots,
        tracker=Tracker(),
    )
    assert sorted(result) == ["branch_1", "branch_2", "branch_3"]
    # Each branch's figure as a DVC data plot (step, val_psnr): here the one measured at step 0.
    rows = (plots / "branch_2_val_psnr.csv").read_text().splitlines()
    assert rows[0] == "step,val_psnr" and float(rows[1].split(",")[1]) == pytest.approx(result["branch_2"], abs=1e-4)
    assert not (tmp_path / "ckpt").exists()  # nothing trained
    for i in (1, 2, 3):
        meta = json.loads((tmp_path / "pretrain" / f"branch_{i}" / "model.json").read_text())
        assert (
            meta["init"] == "tanet-s"
            and meta["steps"] == 0
            and meta["val_psnr"] == pytest.approx(result[f"branch_{i}"], abs=1e-4)
        )
        weights = load_file(str(tmp_path / "pretrain" / f"branch_{i}" / "model.safetensors"))
        prefix = f"tanet.branches.{i - 1}."
        assert weights and all(torch.equal(v, shipped[prefix + k.removeprefix("branch.")]) for k, v in weights.items())
    run_stage(
        "train",
        params,
        dirs=dirs,
        pretrain=tmp_path / "pretrain",
        out=tmp_path / "joint",
        metrics=None,
        checkpoints=tmp_path / "ckpt",
        plots=None,
        tracker=Tracker(),
        device=CPU,
    )
    tuned = load_file(str(tmp_path / "joint" / "model.safetensors"))
    assert tuned.keys() == shipped.keys()
    for k, v in shipped.items():  # one step at lr 1e-12: still tanet-s, to float precision
        torch.testing.assert_close(tuned[k], v, rtol=0, atol=1e-6)
    assert json.loads((tmp_path / "joint" / "model.json").read_text())["init"] == "tanet-s"
    # A joint model folder as the init (a second cycle from the run above): its weights start
    # the pretrain hand-over and the joint stage; a folder that is not a joint model is refused.
    again = load(params_file(tmp_path / "again.yaml", **{**over, "train.init": str(tmp_path / "joint")}))
    name, weights = shipped_init(setup_of(again))
    assert name == str(tmp_path / "joint") and weights.keys() == tuned.keys()
    assert all(torch.equal(weights[k], v) for k, v in tuned.items())
    with pytest.raises(TanetError, match=r"branch_1: not a joint model folder"):
        shipped_init(
            setup_of(
                load(
                    params_file(tmp_path / "b.yaml", **{**over, "train.init": str(tmp_path / "pretrain" / "branch_1")})
                )
            )
        )
    with pytest.raises(TanetError, match=r"nowhere: not a shipped model .*\(or a joint model folder"):
        shipped_init(
            setup_of(load(params_file(tmp_path / "c.yaml", **{**over, "train.init": str(tmp_path / "nowhere")})))
        )
