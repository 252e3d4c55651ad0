"""Training pairs for the inpainting generator, cut from the labelled data itself.

A pair is a square crop of a real image, a hole and the crop's true class map. Two kinds:
- defect holes: a real defect component, dilated by a few pixels, so the generator learns
  to paint a defect of the class it is told from nothing but its mask;
- clean holes: a real defect *shape* from another image dropped where the crop is clean
  steel (class map 0 there), so it learns to paint plain steel into defect-shaped holes.
The class map is always the truth, so no extra labels are needed.

A third kind, from images whose labels are not used (`UnlabelledSampler`): a bank shape
dropped anywhere, and a class map that says nothing (every channel 0, label `UNKNOWN`), so
the generator learns steel texture from context on far more images than carry labels.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from train.gan.shape_bank import LabelledImage, ShapeBank, TransformConfig, transform_shape


UNKNOWN = 255  # label of a pixel whose class is not known: an all-zero class map there


@dataclass(frozen=True)
class PairConfig:
    crop: int = 128
    defect_share: float = 0.7  # share of pairs whose hole covers a real defect
    dilate_range: tuple[int, int] = (2, 6)  # hole = component dilated by this many pixels
    min_component_area: int = 16


@dataclass
class Pair:
    image: np.ndarray  # uint8 (C, C)
    labels: np.ndarray  # uint8 (C, C), 0 clean, k+1 class k, UNKNOWN not known
    hole: np.ndarray  # bool (C, C)
    source_id: str
    kind: str  # "defect" | "clean" | "unlabelled"


def pad_to(image: np.ndarray, labels: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Reflect-pad image and labels together so both sides are at least `size`."""
    ph, pw = max(0, size - image.shape[0]), max(0, size - image.shape[1])
    if ph or pw:
        image = np.pad(image, ((0, ph), (0, pw)), mode="reflect")
        labels = np.pad(labels, ((0, ph), (0, pw)), mode="reflect")
    return image, labels


def window_around(center_y: float, center_x: float, shape: tuple[int, int], crop: int) -> tuple[int, int]:
    """Top-left of a crop x crop window centred near (y, x), clamped inside the image."""
    y0 = int(round(center_y - crop / 2))
    x0 = int(round(center_x - crop / 2))
    return min(max(y0, 0), shape[0] - crop), min(max(x0, 0), shape[1] - crop)


def dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    if radius <= 0:
        return mask.copy()
    k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    return cv2.dilate(mask.astype(np.uint8), k) > 0


def erode(mask: np.ndarray, radius: int) -> np.ndarray:
    if radius <= 0:
        return mask.copy()
    k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    return cv2.erode(mask.astype(np.uint8), k, borderType=cv2.BORDER_REPLICATE) > 0


class PairSampler:
    """Draws random pairs from labelled images (padded to at least the crop size)."""

    def __init__(self, images: list[LabelledImage], num_classes: int, cfg: PairConfig, bank: ShapeBank | None = None) -> None:
        if not images:
            raise ValueError("no labelled images to draw GAN training pairs from")
        self.cfg = cfg
        self.num_classes = num_classes
        self.images = []
        # Every connected defect component: (image index, class, component id map, id).
        self.components: list[tuple[int, int, int]] = []
        self.comp_maps: list[np.ndarray] = []
        for li in images:
            img, lab = pad_to(li.image, li.labels, cfg.crop)
            self.images.append(LabelledImage(li.image_id, img, lab))
            comp_map = np.zeros(lab.shape, np.int32)
            next_id = 1
            for k in range(num_classes):
                m = (lab == k + 1).astype(np.uint8)
                if not m.any():
                    continue
                n, comp, stats, _ = cv2.connectedComponentsWithStats(m, connectivity=8)
                for c in range(1, n):
                    if stats[c, cv2.CC_STAT_AREA] < cfg.min_component_area:
                        continue
                    comp_map[comp == c] = next_id
                    self.components.append((len(self.comp_maps), k, next_id))
                    next_id += 1
            self.comp_maps.append(comp_map)
        self.bank = bank if bank is not None else ShapeBank.from_images(images, num_classes, cfg.min_component_area)
        self.transform = TransformConfig(max_extent=cfg.crop - 16)

    def sample(self, rng: np.random.Generator, kind: str | None = None) -> Pair:
        if kind is None:
            kind = "defect" if (self.components and rng.random() < self.cfg.defect_share) else "clean"
        if kind == "defect" and self.components:
            return self._defect_pair(rng)
        return self._clean_pair(rng)

    def _defect_pair(self, rng: np.random.Generator) -> Pair:
        c = self.cfg.crop
        img_i, _, cid = self.components[int(rng.integers(len(self.components)))]
        li, comp_map = self.images[img_i], self.comp_maps[img_i]
        ys, xs = np.nonzero(comp_map == cid)
        j = int(rng.integers(ys.size))  # centre on a random pixel of the component (big ones span crops)
        jitter = rng.uniform(-c / 8, c / 8, size=2)
        y0, x0 = window_around(ys[j] + jitter[0], xs[j] + jitter[1], li.image.shape, c)
        win = (slice(y0, y0 + c), slice(x0, x0 + c))
        hole = dilate(comp_map[win] == cid, int(rng.integers(self.cfg.dilate_range[0], self.cfg.dilate_range[1] + 1)))
        return random_flips(rng, li.image[win], li.labels[win], hole, li.image_id, "defect")

    def _clean_pair(self, rng: np.random.Generator) -> Pair:
        c = self.cfg.crop
        li = self.images[int(rng.integers(len(self.images)))]
        win = random_window(rng, li.image.shape, c)
        hole = shape_hole(rng, self.bank, self.transform, self.cfg)
        return random_flips(rng, li.image[win], li.labels[win], hole, li.image_id, "clean")


class UnlabelledSampler:
    """Pairs from images whose masks are never read: a bank shape (from the labelled images)
    dropped at random, class map UNKNOWN everywhere. Whatever lies under the hole, defect or
    clean steel, is the target, so the generator learns texture from context alone."""

    def __init__(self, images: list[tuple[str, np.ndarray]], bank: ShapeBank, cfg: PairConfig) -> None:
        if not images:
            raise ValueError("no unlabelled images to draw GAN training pairs from")
        self.cfg, self.bank = cfg, bank
        self.images = [(i, pad_to(img, img, cfg.crop)[0]) for i, img in images]
        self.transform = TransformConfig(max_extent=cfg.crop - 16)

    def sample(self, rng: np.random.Generator) -> Pair:
        c = self.cfg.crop
        image_id, image = self.images[int(rng.integers(len(self.images)))]
        win = random_window(rng, image.shape, c)
        hole = shape_hole(rng, self.bank, self.transform, self.cfg)
        return random_flips(rng, image[win], np.full((c, c), UNKNOWN, np.uint8), hole, image_id, "unlabelled")


def random_window(rng: np.random.Generator, shape: tuple[int, int], crop: int) -> tuple[slice, slice]:
    y0, x0 = int(rng.integers(0, shape[0] - crop + 1)), int(rng.integers(0, shape[1] - crop + 1))
    return slice(y0, y0 + crop), slice(x0, x0 + crop)


def shape_hole(rng: np.random.Generator, bank: ShapeBank, transform: TransformConfig, cfg: PairConfig) -> np.ndarray:
    """A crop-sized hole: a transformed bank shape (an ellipse when the bank is empty) at a
    random place, dilated like the defect holes."""
    c = cfg.crop
    if len(bank):
        shape_mask, _ = transform_shape(bank.pick(rng), rng, transform)
    else:
        shape_mask = np.zeros((c // 3, c // 3), np.uint8)
        cv2.ellipse(shape_mask, (c // 6, c // 6), (c // 6, int(rng.integers(2, c // 6 + 1))), 0, 0, 360, 1, -1)
        shape_mask = shape_mask > 0
    h, w = shape_mask.shape
    hole = np.zeros((c, c), bool)
    y, x = int(rng.integers(0, c - h + 1)), int(rng.integers(0, c - w + 1))
    hole[y : y + h, x : x + w] = shape_mask
    return dilate(hole, int(rng.integers(cfg.dilate_range[0], cfg.dilate_range[1] + 1)))


def random_flips(rng, image, labels, hole, source_id, kind) -> Pair:
    if rng.random() < 0.5:
        image, labels, hole = image[:, ::-1], labels[:, ::-1], hole[:, ::-1]
    if rng.random() < 0.5:
        image, labels, hole = image[::-1], labels[::-1], hole[::-1]
    return Pair(np.ascontiguousarray(image), np.ascontiguousarray(labels), np.ascontiguousarray(hole), source_id, kind)


def to_tensors(pairs: list[Pair], num_classes: int):
    """Pairs -> (real [-1, 1] (N,1,C,C), hole (N,1,C,C), one-hot class map (N,K+1,C,C)) float32 tensors;
    an UNKNOWN pixel has every class channel 0."""
    import torch

    real = np.stack([p.image for p in pairs]).astype(np.float32) / 127.5 - 1.0
    hole = np.stack([p.hole for p in pairs]).astype(np.float32)
    labels = np.minimum(np.stack([p.labels for p in pairs]).astype(np.int64), num_classes + 1)
    onehot = np.eye(num_classes + 2, dtype=np.float32)[:, : num_classes + 1][labels].transpose(0, 3, 1, 2)
    return torch.from_numpy(real[:, None]), torch.from_numpy(hole[:, None]), torch.from_numpy(np.ascontiguousarray(onehot))


def to_uint8(x) -> np.ndarray:
    """[-1, 1] tensor (N, 1, H, W) -> uint8 (N, H, W), rounded."""
    a = x.detach().float().cpu().numpy()[:, 0]
    return np.clip(np.rint((a + 1.0) * 127.5), 0, 255).astype(np.uint8)
