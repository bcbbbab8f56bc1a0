"""Parameter counts and per-frame GMACs of the model presets (conv/linear multiply-accumulates).

    python benchmarks/model_cost.py

Counts are exact for these conv nets (forward hooks, see tanet.models.cost); SAN adds its
localisation net on every neighbour block.
"""

from __future__ import annotations

import torch

from tanet.models import VSRNet, tanet_l, tanet_s
from tanet.models.cost import count_macs, count_parameters

SIZES = {"320x180 -> 1280x720 (x4)": (180, 320), "960x540 -> 3840x2160 (x4)": (540, 960)}


def main() -> None:
    print(f"{'model':<22} {'params':>10} " + " ".join(f"{k:>28}" for k in SIZES))
    for name, make in (("TANet-S", tanet_s), ("TANet-L", tanet_l)):
        for alignment in ("none", "rof", "san"):
            net = VSRNet(make(alignment=alignment)).eval()
            gmacs = []
            for h, w in SIZES.values():
                x = torch.zeros(1, net.cfg.num_frames, net.cfg.channels, h, w)
                gmacs.append(count_macs(net, x, full_frame=True) / 1e9)
            label = f"{name} ({alignment})"
            print(f"{label:<22} {count_parameters(net):>10,} " + " ".join(f"{g:>23.2f} GMAC" for g in gmacs))


if __name__ == "__main__":
    main()
