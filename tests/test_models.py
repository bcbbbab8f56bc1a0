"""Model components: shapes, the N = 1 identity, weight normalisation, gradients, costs."""

from __future__ import annotations

import pytest
import torch

from tanet.config import model_config_from_dict
from tanet.models import (
    BranchConfig,
    ModelConfig,
    SANConfig,
    SpatialAlignmentNetwork,
    TANetConfig,
    TemporalAdaptiveNetwork,
    VSRNet,
    tanet_l,
    tanet_s,
    warp,
)
from tanet.models.cost import count_macs, count_parameters


@pytest.mark.parametrize("scale", [2, 3, 4])
@pytest.mark.parametrize("kind", ["espcn", "srcnn", "residual"])
def test_shapes_per_scale_and_kind_on_odd_sizes(scale: int, kind: str) -> None:
    branch = BranchConfig(
        kind=kind,
        widths=(8,) if kind == "residual" else (8, 4),
        kernel_sizes=(3,) if kind == "residual" else (5, 3, 3),
        num_blocks=1 if kind == "residual" else 0,
    )
    net = TemporalAdaptiveNetwork(TANetConfig(scale=scale, channels=1, num_branches=2, branch=branch))
    x = torch.rand(2, 3, 1, 13, 7)
    out = net(x, return_all=True)
    assert out.sr.shape == (2, 1, 13 * scale, 7 * scale)
    assert out.branches.shape == (2, 2, 1, 13 * scale, 7 * scale)
    assert out.weights.shape == (2, 2, 1, 13 * scale, 7 * scale)


def test_rgb_model_shapes() -> None:
    net = VSRNet(tanet_s(scale=4, color="rgb", alignment="none"))
    out = net(torch.rand(1, 5, 3, 9, 11))
    assert out.shape == (1, 3, 36, 44)


def test_single_branch_network_equals_its_branch() -> None:
    torch.manual_seed(0)
    net = TemporalAdaptiveNetwork(TANetConfig(scale=4, channels=1, num_branches=1))
    x = torch.rand(3, 1, 1, 10, 12)
    out = net(x, return_all=True)
    assert torch.equal(out.weights, torch.ones_like(out.weights))
    torch.testing.assert_close(out.sr, net.branches[0](x), rtol=0, atol=0)


def test_weights_sum_to_one_per_pixel() -> None:
    net = TemporalAdaptiveNetwork(TANetConfig(num_branches=3))
    out = net(torch.rand(2, 5, 1, 8, 8), return_all=True)
    torch.testing.assert_close(out.weights.sum(dim=1), torch.ones(2, 1, 32, 32))
    assert (out.weights >= 0).all()


def test_fixed_uniform_mixing_is_exactly_one_over_n_and_does_not_train() -> None:
    torch.manual_seed(0)
    net = TemporalAdaptiveNetwork(TANetConfig(num_branches=3))
    net.modulation.fix_uniform()
    out = net(torch.rand(2, 5, 1, 8, 8), return_all=True)
    assert torch.equal(out.weights, torch.full_like(out.weights, 1 / 3))
    torch.testing.assert_close(out.sr, out.branches.mean(1))
    out.sr.square().mean().backward()
    assert all(p.grad is None for p in net.modulation.parameters())
    assert all(p.grad is not None for p in net.branches.parameters())


def test_uniform_start_mixes_one_over_n_and_then_learns_per_pixel_weights() -> None:
    torch.manual_seed(0)
    net = TemporalAdaptiveNetwork(TANetConfig(num_branches=3))
    net.modulation.start_uniform()
    x, target = torch.rand(2, 5, 1, 8, 8), torch.rand(2, 1, 32, 32)
    out = net(x, return_all=True)
    assert torch.equal(out.weights, torch.full_like(out.weights, 1 / 3))
    torch.testing.assert_close(out.sr, out.branches.mean(1))
    (out.sr - target).square().mean().backward()
    tail = net.modulation.net.tail
    assert tail.weight.grad is not None and tail.weight.grad.abs().sum() > 0  # it still trains
    opt = torch.optim.Adam(net.modulation.parameters(), lr=1e-2)
    opt.step()
    weights = net(x, return_all=True).weights
    assert weights.std(dim=(2, 3, 4)).min() > 0  # no longer 1/N everywhere: per-pixel weights


def test_sr_is_weighted_sum_of_branch_outputs() -> None:
    net = TemporalAdaptiveNetwork(TANetConfig(num_branches=3))
    out = net(torch.rand(1, 5, 1, 6, 6), return_all=True)
    torch.testing.assert_close(out.sr, (out.weights * out.branches).sum(1))


def test_branch_i_sees_only_its_2i_minus_1_centre_frames() -> None:
    torch.manual_seed(0)
    net = TemporalAdaptiveNetwork(TANetConfig(num_branches=3)).eval()
    x = torch.rand(1, 5, 1, 8, 8)
    base = net(x, return_all=True).branches
    y = x.clone()
    y[:, 0] = torch.rand(1, 1, 8, 8)  # outermost frame: only branch 3 sees it
    changed = net(y, return_all=True).branches
    assert torch.equal(base[:, 0], changed[:, 0]) and torch.equal(base[:, 1], changed[:, 1])
    assert not torch.equal(base[:, 2], changed[:, 2])


@pytest.mark.parametrize("alignment", ["none", "rof", "san"])
def test_gradients_reach_every_parameter(alignment: str) -> None:
    torch.manual_seed(0)
    net = VSRNet(tanet_s(alignment=alignment, align_block=8))
    x = torch.rand(2, 5, 1, 8, 8)
    out = net(x, return_all=True)
    loss = out.sr.square().mean()
    if out.theta is not None:
        loss = loss + out.theta.square().mean()
    loss.backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing
    # The SAN head starts at zero: its weight gradient must still be non-zero to learn.
    if alignment == "san":
        assert net.san.head.weight.grad.abs().sum() > 0


def test_wrong_shapes_are_rejected_with_the_expected_shape() -> None:
    net = VSRNet(tanet_s())
    with pytest.raises(ValueError, match=r"T=5"):
        net(torch.rand(1, 3, 1, 8, 8))
    with pytest.raises(ValueError, match=r"\(B, T, C, H, W\)"):
        net(torch.rand(5, 1, 8, 8))


def test_san_starts_at_identity_and_warp_shifts_by_integer_pixels() -> None:
    san = SpatialAlignmentNetwork(SANConfig(), channels=1)
    x = torch.rand(2, 1, 20, 24)
    aligned, theta = san(x, x.flip(-1))
    torch.testing.assert_close(theta, torch.zeros(2, 2))
    torch.testing.assert_close(aligned, x.flip(-1))
    shifted = warp(x, torch.tensor([[3.0, -2.0], [0.0, 1.0]]))
    torch.testing.assert_close(shifted[0, :, 4:16, 2:18], x[0, :, 2:14, 5:21], atol=1e-5, rtol=0)
    torch.testing.assert_close(shifted[1, :, 2:18, 2:20], x[1, :, 3:19, 2:20], atol=1e-5, rtol=0)


def test_san_block_alignment_matches_whole_frame_translation() -> None:
    torch.manual_seed(0)
    san = SpatialAlignmentNetwork(SANConfig(), channels=1)
    with torch.no_grad():
        san.head.bias.copy_(torch.tensor([2.0, -1.0]))  # every block predicts (2, -1)
    x = torch.rand(1, 1, 40, 56)
    aligned, theta = san.align_blocks(x, x, block=16)
    assert theta.shape == (1, 3, 4, 2)
    torch.testing.assert_close(aligned, warp(x, torch.tensor([[2.0, -1.0]])), atol=1e-5, rtol=0)


def test_san_learns_a_known_translation() -> None:
    """A short CPU run: SAN trained with the theta regression recovers a (-2, 1) px shift."""
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    base = torch.nn.functional.avg_pool2d(torch.rand(64, 1, 40, 40, generator=gen), 3, 1, 1)
    ref = base[:, :, 4:36, 4:36]
    src = base[:, :, 3:35, 6:38]  # src(x - 2, y + 1) == ref(x, y)
    target = torch.tensor([-2.0, 1.0]).expand(64, 2)
    san = SpatialAlignmentNetwork(SANConfig(widths=(16, 32, 32), hidden=32), channels=1)
    opt = torch.optim.Adam(san.parameters(), lr=3e-3)
    for _ in range(150):
        aligned, theta = san(ref, src)
        loss = (aligned - ref).square().mean() + 0.01 * (theta - target).square().sum(1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        aligned, theta = san(ref, src)
    assert (theta - target).abs().max() < 0.25
    assert (aligned - ref)[:, :, 2:-2, 2:-2].abs().mean() < 0.02


def test_presets_costs() -> None:
    s = VSRNet(tanet_s()).eval()
    x = torch.rand(1, 5, 1, 180, 320)  # 320x180 -> 1280x720 at x4 on Y
    assert count_macs(s, x) == 7_129_497_600  # the pinned TANet-S convention: 7.1 GMAC per 720p frame
    assert count_parameters(s) == 124_256
    assert count_parameters(VSRNet(tanet_l())) <= 2_000_000


def test_model_config_round_trips_through_dict() -> None:
    cfg = tanet_l(scale=3, alignment="san")
    data = cfg.to_dict()
    assert data["branch"]["kind"] == "residual" and data["scale"] == 3
    assert model_config_from_dict(data) == cfg and model_config_from_dict(data) != tanet_l(scale=3)
    assert isinstance(ModelConfig().to_dict()["branch"]["widths"], list)
