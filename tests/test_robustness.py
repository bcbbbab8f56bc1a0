"""Neighbours that carry nothing: the shipped models fall back to about their single-frame
quality and never below bicubic (the robustness claim of Liu et al. 2017)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from media_factory import SHARED
from model_factory import weight_only_branch

from tanet.infer.evaluation import EvalClip, neighbour_robustness, vid4_clips
from tanet.infer.shipped import available, shipped_dir
from tanet.io.model_files import load_model_dir
from tanet.models import VSRNet, tanet_s
from tanet.ops.degrade import Degradation

CPU = torch.device("cpu")
LR_BOX = 64  # LR side of the crops (speed; the top-left corner of each clip)
FRAMES = 7


def _cropped(clip: EvalClip, r: int) -> EvalClip:
    lr = [np.ascontiguousarray(f[:LR_BOX, :LR_BOX]) for f in clip.lr]
    gt = [np.ascontiguousarray(g[: r * LR_BOX, : r * LR_BOX]) for g in clip.gt]
    return EvalClip(clip.dataset, clip.clip_id, lr, gt)


def _vid4(r: int, names: tuple[str, str]) -> list[EvalClip]:
    root = SHARED / "data/vid4"
    if not (root / "GT").is_dir():
        pytest.skip("../shared/data/vid4 is not beside the repo")
    clips = {c.clip_id: c for c in vid4_clips(root, Degradation("BI", r), FRAMES)}
    return [_cropped(clips[n], r) for n in names]


@pytest.mark.parametrize("name", available())
def test_a_shipped_model_with_useless_neighbours_keeps_its_single_frame_quality(name: str) -> None:
    net, _ = load_model_dir(shipped_dir(name), CPU)
    assert isinstance(net, VSRNet)
    walk, calendar = _vid4(net.cfg.scale, ("walk", "calendar"))  # walk moves; calendar lends its frames
    res = neighbour_robustness(walk, calendar, net, device=CPU, flow_method="dis")
    single, bicubic = res["adjacent"]["branch_1"], res["bicubic"]["psnr"]
    assert res["adjacent"]["tanet"] >= single - 0.01  # real neighbours never cost
    for case in ("other_clip", "shuffled"):
        assert res[case]["branch_1"] == single  # branch 1 sees the centre frame only
        assert res[case]["tanet"] > bicubic, (case, res)
        assert res[case]["tanet"] >= single - 0.1, (case, res)  # about single-frame quality


def test_the_neighbour_slots_really_change() -> None:
    """A network forced onto branch 3 (5 frames, random weights) moves with what its neighbours hold."""
    torch.manual_seed(0)
    net = VSRNet(tanet_s(align_block=16)).eval()
    weight_only_branch(net, 3)
    clip, other = _vid4(net.cfg.scale, ("walk", "calendar"))
    res = neighbour_robustness(clip, other, net, device=CPU, flow_method="dis")
    psnr = {case: res[case]["tanet"] for case in ("adjacent", "other_clip", "shuffled")}
    # Three different inputs, three figures: another clip's frames move it clearly; walk's own
    # frames shuffled within a few frames are close to its adjacent ones, but not the same.
    assert abs(psnr["other_clip"] - psnr["adjacent"]) > 0.05, psnr
    assert psnr["shuffled"] != psnr["adjacent"], psnr
    assert res["adjacent"]["branch_1"] == res["other_clip"]["branch_1"] == res["shuffled"]["branch_1"]
    assert all(v != res["adjacent"]["branch_1"] for v in psnr.values())  # branch 3, not branch 1


def test_clips_of_different_sizes_are_cropped_to_their_common_lr_size() -> None:
    walk, calendar = _vid4(4, ("walk", "calendar"))
    small = EvalClip(calendar.dataset, "small", [f[:40, :48] for f in calendar.lr], [])
    net = VSRNet(tanet_s(align_block=16)).eval()
    res = neighbour_robustness(walk, small, net, device=CPU, flow_method="dis")
    assert set(res) == {"adjacent", "other_clip", "shuffled", "bicubic"}
    assert all(np.isfinite(v) for d in res.values() for v in d.values())
