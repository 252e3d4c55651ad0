"""Torch views of `inspect_edge.data.SteelDataset`: random crops along the strip for
training, full frames for validation, and the seeded splits both come from.

Augmentation randomness is drawn from a generator seeded by (seed, epoch, index),
so a sample's crop and jitter do not depend on worker count, rank or order:
the same seed gives the same numbers.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from inspect_edge.data import DataError, SteelDataset
from inspect_edge.preprocess import normalise_unit, pad_bottom_right


def seeded_subset_indices(n: int, fraction: float, seed: int) -> np.ndarray:
    """A fixed, sorted selection of round(fraction*n) indices (at least one)."""
    keep = max(1, int(round(n * fraction)))
    return np.sort(np.random.default_rng(seed).permutation(n)[:keep])


def split_train_val(
    ds: SteelDataset, *, train_split: str | None, val_split: str, val_fraction: float, seed: int
) -> tuple[SteelDataset, SteelDataset, str]:
    """(train, val, how): the data set's own validation split when it has one, else a seeded fraction."""
    if val_split in ds.split_names:
        if train_split is None:
            train_split = "train" if "train" in ds.split_names else None
        if train_split is None:
            others = [s for s in ds.split_names if s != val_split]
            raise DataError(f"{ds.root}: no 'train' split; pass --split with one of {others}")
        return ds.split(train_split), ds.split(val_split), f"splits {train_split!r}/{val_split!r}"
    base = ds.split(train_split) if train_split else ds
    n = len(base)
    if n < 2:
        raise DataError(f"{ds.root}: need at least 2 usable images to hold some out for validation, found {n}"
                        " (`train inspect-data` lists what was skipped and why)")
    perm = np.random.default_rng(seed).permutation(n)
    n_val = min(n - 1, max(1, int(round(n * val_fraction))))
    val_idx, train_idx = np.sort(perm[:n_val]), np.sort(perm[n_val:])
    return base.subset(train_idx.tolist()), base.subset(val_idx.tolist()), f"seeded {val_fraction:.0%} hold-out (seed {seed})"


class CropDataset(Dataset):
    """Training samples: random (crop_h, crop_w) windows, flips, brightness/contrast jitter.

    Frames smaller than the crop are padded as the edge pads them (replicated edge
    pixels; masks with background), so every item in a batch has the same shape.
    """

    def __init__(
        self,
        ds: SteelDataset,
        crop: tuple[int, int],
        mean: float,
        std: float,
        *,
        seed: int = 0,
        flip: bool = True,
        jitter: float = 0.2,
        in_channels: int = 1,
        defect_crop_prob: float = 0.0,
    ) -> None:
        self.ds, self.crop, self.mean, self.std = ds, crop, mean, std
        self.defect_crop_prob = defect_crop_prob
        self.seed, self.flip, self.jitter, self.in_channels = seed, flip, jitter, in_channels
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int):
        rng = np.random.default_rng([self.seed, self.epoch, i])
        s = self.ds[i]
        masks = s.masks
        ch, cw = self.crop
        h, w = s.image.shape
        img = pad_bottom_right(s.image, ch, cw).astype(np.float32) / 255.0
        if h < ch or w < cw:
            masks = np.pad(masks, ((0, 0), (0, max(0, ch - h)), (0, max(0, cw - w))))
            h, w = img.shape
        y0 = int(rng.integers(0, h - ch + 1))
        x0 = int(rng.integers(0, w - cw + 1))
        if self.defect_crop_prob > 0 and rng.random() < self.defect_crop_prob and masks.any():
            # Centre the window near a pixel of a random present class: small, rare
            # defects (pits, cracks) otherwise almost never fall inside a crop.
            present = np.flatnonzero(masks.any(axis=(1, 2)))
            ys, xs = np.nonzero(masks[int(rng.choice(present))])
            j = int(rng.integers(0, len(ys)))
            y0 = int(np.clip(ys[j] - rng.integers(0, ch), 0, h - ch))
            x0 = int(np.clip(xs[j] - rng.integers(0, cw), 0, w - cw))
        img = img[y0 : y0 + ch, x0 : x0 + cw]
        masks = masks[:, y0 : y0 + ch, x0 : x0 + cw]
        if self.flip:
            if rng.random() < 0.5:
                img, masks = img[:, ::-1], masks[:, :, ::-1]
            if rng.random() < 0.5:
                img, masks = img[::-1, :], masks[:, ::-1, :]
        if self.jitter > 0:
            contrast = 1.0 + rng.uniform(-self.jitter, self.jitter)
            brightness = rng.uniform(-self.jitter, self.jitter) * 0.5
            m = img.mean()
            img = np.clip((img - m) * contrast + m + brightness, 0.0, 1.0)
        x = normalise_unit(img, self.mean, self.std, self.in_channels)
        return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)), torch.from_numpy(
            np.ascontiguousarray(masks, dtype=np.float32)
        )


class SyntheticTopUp:
    """Synthetic pairs added on top of every real batch: `per_batch` crops a step, drawn
    from a seeded shuffle of the synthetic set by (seed, epoch), so the real images are
    seen exactly as often as without them (an arm with synthetic data isolates the data,
    not the number of real passes) and a run is reproducible."""

    def __init__(self, crops: CropDataset, per_batch: int, seed: int) -> None:
        if len(crops) == 0:
            raise DataError(f"{crops.ds.root}: no synthetic images to add to the batches")
        self.crops, self.per_batch, self.seed = crops, per_batch, seed
        self._epoch, self._order = -1, np.zeros(0, np.int64)

    def batch(self, epoch: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        if epoch != self._epoch:
            self._epoch, self._order = epoch, np.random.default_rng([self.seed, epoch, 11]).permutation(len(self.crops))
            self.crops.set_epoch(epoch)
        n = len(self._order)
        items = [self.crops[int(self._order[(step * self.per_batch + j) % n])] for j in range(self.per_batch)]
        return torch.stack([x for x, _ in items]), torch.stack([y for _, y in items])


def estimate_mean_std(ds: SteelDataset, max_images: int = 256, seed: int = 0) -> tuple[float, float]:
    """Grey-level mean/std over a seeded random sample of up to `max_images` images drawn
    from the whole set (rounded: they travel in ModelInfo).

    Not the first images by id: data sets are often sorted by class (NEU-Seg's first 64
    are all inclusions, mean 0.368 / std 0.086 against 0.443 / 0.203 over all 3129)."""
    n = len(ds)
    if n == 0:
        raise DataError(f"{ds.root}: no images to estimate the normalisation from")
    idx = np.sort(np.random.default_rng([seed, 2718]).permutation(n)[: min(n, max_images)])
    total = total_sq = count = 0.0
    for i in idx:
        img = ds[int(i)].image.astype(np.float64) / 255.0
        total += img.sum()
        total_sq += (img**2).sum()
        count += img.size
    m = total / count
    var = total_sq / count - m * m
    return round(float(m), 4), round(max(float(np.sqrt(max(var, 0.0))), 1e-3), 4)
