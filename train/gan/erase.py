"""Defect-free negatives: labelled images with their defects painted out.

Copy-paste and the defect painters add positives only, and NEU-Seg has no defect-free
image at all, so a segmenter never sees steel that is clean *where a defect would be*.
Erasing a real defect gives exactly that: the same strip, the same lighting, the same
neighbourhood, with an all-clean label. The generator can do it (class 0 is clean
steel, and it is trained on clean-steel holes); OpenCV's Telea inpainting is the
eraser a user without a GAN has, and the control that tells whether the generator
matters.

The hole is every defect pixel dilated by `hole_margin` (so no fuzzy border is left
labelled clean). Images whose defects cover more than `max_defect_share` of them are
not used: a fill that large is invented steel, not restored steel.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from train.gan.pairs import Pair, dilate, pad_to, window_around
from train.gan.shape_bank import LabelledImage
from train.gan.synthesize import Synthetic, paint_batch

ERASERS = ("gan", "telea")


@dataclass
class EraseConfig:
    count: int
    eraser: str = "gan"
    seed: int = 0
    crop: int = 96  # the generator's crop: a larger hole is painted window by window
    hole_margin: int = 4
    max_defect_share: float = 0.25
    telea_radius: int = 5

    def __post_init__(self) -> None:
        if self.eraser not in ERASERS:
            raise ValueError(f"unknown eraser {self.eraser!r}; valid: {', '.join(ERASERS)}")
        if self.count < 1:
            raise ValueError(f"count must be >= 1, got {self.count}")


def erasable(images: list[LabelledImage], max_defect_share: float) -> list[LabelledImage]:
    return [li for li in images if 0 < np.count_nonzero(li.labels) <= max_defect_share * li.labels.size]


def _paint_out_with_gan(images: list[np.ndarray], holes: list[np.ndarray], generator, num_classes: int, crop: int, noise_rng) -> None:
    """Paint clean steel into every hole, in place, one crop-sized window per image per round;
    a later window sees the steel the earlier ones painted as its context."""
    left = [h.copy() for h in holes]
    while True:
        todo = [i for i, h in enumerate(left) if h.any()]
        if not todo:
            return
        jobs = []
        for i in todo:
            img, _ = pad_to(images[i], np.zeros_like(images[i]), crop)
            rest = np.pad(left[i], ((0, img.shape[0] - left[i].shape[0]), (0, img.shape[1] - left[i].shape[1])))
            ys, xs = np.nonzero(rest)
            k = int(np.argmin(ys * rest.shape[1] + xs))  # start at the first hole pixel in reading order
            y0, x0 = window_around(ys[k] + crop / 4, xs[k] + crop / 4, img.shape, crop)
            win = (slice(y0, y0 + crop), slice(x0, x0 + crop))
            jobs.append((i, y0, x0, Pair(img[win], np.zeros((crop, crop), np.uint8), rest[win].copy(), "", "clean")))
        painted = paint_batch(generator, [p for *_, p in jobs], num_classes, noise_rng)
        for (i, y0, x0, pair), gen in zip(jobs, painted):
            h, w = min(crop, images[i].shape[0] - y0), min(crop, images[i].shape[1] - x0)
            hole = pair.hole[:h, :w]
            region = images[i][y0 : y0 + h, x0 : x0 + w]
            region[hole] = gen[:h, :w][hole]
            left[i][y0 : y0 + h, x0 : x0 + w] &= ~hole


def erase_defects(labelled: list[LabelledImage], cfg: EraseConfig, num_classes: int, generator=None,
                  id_prefix: str = "neg") -> list[Synthetic]:
    """`cfg.count` defect-free images (labels all 0), deterministic for a given seed: sources
    drawn without repeats while they last, each flipped at random so repeats differ."""
    pool = erasable(labelled, cfg.max_defect_share)
    if not pool:
        raise ValueError(f"no labelled image has defects covering at most {cfg.max_defect_share:.0%} of it: nothing to erase")
    if cfg.eraser == "gan" and generator is None:
        raise ValueError("the gan eraser needs a generator (train one with `train gan`)")
    rng = np.random.default_rng([cfg.seed, 7])
    order = np.concatenate([rng.permutation(len(pool)) for _ in range(-(-cfg.count // len(pool)))])[: cfg.count]
    images, holes, records = [], [], []
    for n, j in enumerate(order):
        src = pool[int(j)]
        image, labels = src.image, src.labels
        flip_h, flip_v = bool(rng.random() < 0.5), bool(rng.random() < 0.5)
        if flip_h:
            image, labels = image[:, ::-1], labels[:, ::-1]
        if flip_v:
            image, labels = image[::-1], labels[::-1]
        hole = dilate(labels > 0, cfg.hole_margin)
        images.append(np.array(image, copy=True))  # painted in place: never the caller's array
        holes.append(hole)
        records.append({"image_id": f"{id_prefix}_{cfg.eraser}_{n:05d}", "synthetic": True, "method": f"erase-{cfg.eraser}",
                        "background": src.image_id, "flips": [flip_h, flip_v], "erased_px": int(hole.sum()), "defects": []})
    if cfg.eraser == "telea":
        images = [cv2.inpaint(img, hole.astype(np.uint8), cfg.telea_radius, cv2.INPAINT_TELEA) for img, hole in zip(images, holes)]
    else:
        import torch

        _paint_out_with_gan(images, holes, generator, num_classes, cfg.crop, torch.Generator().manual_seed(cfg.seed))
    return [Synthetic(r["image_id"], img, np.zeros_like(img), r, hole) for r, img, hole in zip(records, images, holes)]
