"""Pictures of a run: training curves, validation samples, worst cases (matplotlib, Agg)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

# One colour per class (RGB 0..1), cycled when there are more classes.
COLOURS = np.array([[1.0, 0.2, 0.2], [0.2, 0.9, 0.2], [0.25, 0.45, 1.0], [1.0, 0.85, 0.1], [0.9, 0.3, 0.9], [0.1, 0.9, 0.9]])


def overlay(image: np.ndarray, masks: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """Grey uint8 (H, W) + bool (K, H, W) -> RGB float image with coloured classes."""
    rgb = np.repeat(image[..., None].astype(np.float32) / 255.0, 3, axis=2)
    for k in range(masks.shape[0]):
        m = masks[k].astype(bool)
        if m.any():
            rgb[m] = (1 - alpha) * rgb[m] + alpha * COLOURS[k % len(COLOURS)]
    return rgb


def plot_curves(history: list[dict], path: Path) -> None:
    epochs = [h["epoch"] for h in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    ax1.plot(epochs, [h["train_loss"] for h in history], "o-", label="train")
    val = [(h["epoch"], h["val_loss"]) for h in history if h.get("val_loss") is not None]
    if val:
        ax1.plot(*zip(*val), "o-", label="validation")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("BCE + Dice loss")
    ax1.legend()
    ax1.grid(alpha=0.3)
    dice = [(h["epoch"], h["val_dice"]) for h in history if h.get("val_dice") is not None]
    if dice:
        ax2.plot(*zip(*dice), "o-", color="tab:green")
    ax2.set_xlabel("epoch")
    ax2.set_ylabel("validation competition Dice (0.5, min area 0.1%)")
    ax2.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_mask_grid(rows: list[tuple[str, np.ndarray, np.ndarray, np.ndarray]], classes, path: Path, title: str) -> None:
    """rows: (label, image u8 (H, W), true (K, H, W), pred (K, H, W)); truth left, prediction right."""
    n = max(1, len(rows))
    h, w = rows[0][1].shape if rows else (1, 1)
    panel_w = 6.0 if w <= 2 * h else 9.0
    fig, axes = plt.subplots(n, 2, figsize=(2 * panel_w, n * panel_w * h / w + 0.6), squeeze=False)
    for r, (label, image, true, pred) in enumerate(rows):
        for c, (masks, what) in enumerate(((true, "truth"), (pred, "prediction"))):
            ax = axes[r, c]
            ax.imshow(overlay(image, masks))
            ax.set_title(f"{label}: {what}", fontsize=8)
            ax.axis("off")
    handles = [plt.Rectangle((0, 0), 1, 1, color=COLOURS[k % len(COLOURS)]) for k in range(len(classes))]
    fig.legend(handles, list(classes), loc="lower center", ncol=len(classes), fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.04, 1, 0.97))
    fig.savefig(path, dpi=80)
    plt.close(fig)
