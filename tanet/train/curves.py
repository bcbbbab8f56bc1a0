"""Training curves as a PNG picture (loss, learning rate, validation Y-PSNR)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def plot_curves(history: list[dict[str, Any]], path: Path, title: str = "") -> bool:
    """Training curves as a PNG: loss (log scale) and learning rate over steps, validation
    Y-PSNR (and its bicubic reference) where measured.

    Returns:
        False when matplotlib is not installed (a bare GPU host) or there is nothing to plot.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    train = [r for r in history if "loss" in r]
    val = [r for r in history if "val_psnr" in r]
    if not train and not val:
        return False
    fig, (ax_loss, ax_val) = plt.subplots(1, 2, figsize=(10, 3.6))
    if train:
        steps = [r["step"] for r in train]
        ax_loss.semilogy(steps, [r["loss"] for r in train], color="tab:blue", label="loss")
        ax_loss.set_xlabel("step")
        ax_loss.set_ylabel("MSE loss")
        ax_lr = ax_loss.twinx()
        ax_lr.plot(steps, [r["lr"] for r in train], color="tab:grey", lw=0.8, label="learning rate")
        ax_lr.set_ylabel("learning rate")
    if val:
        ax_val.plot([r["step"] for r in val], [r["val_psnr"] for r in val], "o-", label="model")
        if "val_psnr_bicubic" in val[-1]:
            ax_val.axhline(val[-1]["val_psnr_bicubic"], color="tab:grey", ls="--", label="bicubic")
        ax_val.set_xlabel("step")
        ax_val.set_ylabel("validation Y-PSNR (dB)")
        ax_val.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def write_curve_data(histories: dict[str, list[dict[str, Any]]], folder: Path) -> None:
    """Training curves as DVC data plots: ``<name>_loss.csv`` and ``<name>_val_psnr.csv`` (``step``, value).

    ``dvc plots show`` draws each file over ``step`` (its last column is the y axis) and
    ``dvc plots diff`` overlays experiments. The folder is replaced whole.

    Args:
        histories: ``{name: history}`` (``joint``, ``branch_1`` ...), records with ``step``.
        folder: the plots folder (e.g. ``plots/train``).
    """
    from tanet.io.atomic import atomic_dir, atomic_write_csv

    with atomic_dir(folder) as tmp:
        for name, history in histories.items():
            for key in ("loss", "val_psnr"):
                rows = [(int(r["step"]), float(r[key])) for r in history if key in r]
                if rows:
                    atomic_write_csv(tmp / f"{name}_{key}.csv", ["step", key], rows)
