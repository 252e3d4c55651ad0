"""Tiny labelled steel-like data sets for the GAN tests (64x64, two classes), made on the fly."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from inspect_edge.data import Sample, write_mask_folder, write_severstal

CLASSES = ("pits", "streaks")


def tiny_samples(n_train: int = 8, n_val: int = 4, size: int = 64, seed: int = 0, clean: int = 0) -> list[Sample]:
    """Rolled-texture images with a dark round pit and a bright streak along x each;
    the last `clean` training images are defect-free."""
    rng = np.random.default_rng(seed)
    out = []
    for split, n in (("train", n_train), ("val", n_val)):
        for i in range(n):
            img = 120 + 10 * np.sin(np.arange(size) / 3.0)[None, :] + rng.normal(0, 6, (size, size))
            masks = np.zeros((2, size, size), bool)
            if not (split == "train" and i >= n - clean):
                pit = np.zeros((size, size), np.uint8)
                cy, cx = (int(v) for v in rng.integers(12, size - 12, 2))
                cv2.circle(pit, (cx, cy), int(rng.integers(4, 9)), 1, -1)
                masks[0] = pit > 0
                y, x0 = int(rng.integers(4, size - 4)), int(rng.integers(0, size // 2))
                masks[1, y : y + 2, x0 : x0 + size // 3] = True
                masks[1] &= ~masks[0]
                img[masks[0]] -= 60
                img[masks[1]] += 70
            out.append(Sample(f"{split}_{i:03d}", np.clip(img, 0, 255).astype(np.uint8), masks, split))
    return out


def make_mask_folder(root: Path, **kw) -> Path:
    write_mask_folder(root, tiny_samples(**kw), CLASSES)
    return root


def make_severstal(root: Path, **kw) -> Path:
    samples = [s for s in tiny_samples(**kw)]
    write_severstal(root, samples, CLASSES)
    return root
