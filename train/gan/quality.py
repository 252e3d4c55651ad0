"""Measured generator quality: masked-region L1 and PSNR, and a Fréchet distance between
real and generated defect crops.

The Fréchet distance uses features of a fixed network that ships without downloads:
by default a small conv net with seeded random weights (random-feature Fréchet
distances rank generators consistently, though their scale is arbitrary), or the
encoder of a trained segmenter run, whose features know what defects look like.
Every number also comes for a classical reference painter (OpenCV Telea inpainting on
the same holes), so "the GAN's L1 is 0.08" has something to be compared with.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from train.gan.pairs import Pair

FD_CROP = 64  # defect crops are resized to this square before feature extraction


def hole_l1_psnr(generated: np.ndarray, real: np.ndarray, hole: np.ndarray) -> tuple[float, float]:
    """Mean |error| (grey levels / 255) and PSNR (dB, peak 1) over hole pixels of uint8 images."""
    g = generated[hole].astype(np.float64) / 255.0
    r = real[hole].astype(np.float64) / 255.0
    if g.size == 0:
        return 0.0, float("inf")
    mse = float(np.mean((g - r) ** 2))
    return float(np.mean(np.abs(g - r))), (10.0 * math.log10(1.0 / mse) if mse > 0 else float("inf"))


def defect_crop(image: np.ndarray, hole: np.ndarray, margin: int = 4) -> np.ndarray:
    """The hole's bounding box (plus a margin) resized to FD_CROP x FD_CROP."""
    ys, xs = np.nonzero(hole)
    y0, y1 = max(ys.min() - margin, 0), min(ys.max() + margin + 1, image.shape[0])
    x0, x1 = max(xs.min() - margin, 0), min(xs.max() + margin + 1, image.shape[1])
    return cv2.resize(image[y0:y1, x0:x1], (FD_CROP, FD_CROP), interpolation=cv2.INTER_AREA)


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to feature rows of a and b.

    tr(sqrt(S1 S2)) is computed as the sum of square roots of the eigenvalues of
    sqrt(S1) S2 sqrt(S1), which is symmetric PSD, so no complex matrix square root.
    """
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
    w, v = np.linalg.eigh(s1)
    root1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    cross = np.linalg.eigvalsh(root1 @ s2 @ root1)
    tr_cross = float(np.sqrt(np.clip(cross, 0, None)).sum())
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2.0 * tr_cross)


class FeatureNet:
    """Pooled conv features of uint8 crops; `random` (seeded) or a segmenter's encoder."""

    def __init__(self, kind: str = "random", segmenter_run: str | None = None, seed: int = 0) -> None:
        import torch
        from torch import nn

        self.kind = kind
        if kind == "segmenter":
            from train.checkpoint import load_run

            model, info = load_run(segmenter_run)
            self.mean, self.std = info.mean, info.std
            self.layers = nn.ModuleList([model.stem, *model.stages]).eval()
            self.name = f"segmenter encoder ({segmenter_run})"
        elif kind == "random":
            g = torch.Generator().manual_seed(seed)
            widths = [1, 16, 32, 64]
            layers = []
            for cin, cout in zip(widths[:-1], widths[1:]):
                conv = nn.Conv2d(cin, cout, 3, stride=2, padding=1)
                with torch.no_grad():
                    conv.weight.copy_(torch.randn(conv.weight.shape, generator=g) * math.sqrt(2.0 / (cin * 9)))
                    conv.bias.zero_()
                layers.append(nn.Sequential(conv, nn.ReLU()))
            self.layers = nn.ModuleList(layers).eval()
            self.mean, self.std = 0.5, 0.25
            self.name = f"random conv net (seed {seed})"
        else:
            raise ValueError(f"unknown feature net {kind!r}; valid: random, segmenter")

    def __call__(self, crops: np.ndarray) -> np.ndarray:
        """uint8 (N, h, w) -> float64 (N, D): per-layer channel means and standard deviations."""
        import torch

        from inspect_edge.preprocess import normalise_unit

        x = torch.from_numpy(normalise_unit(crops.astype(np.float32) / 255.0, self.mean, self.std))
        feats = []
        with torch.no_grad():
            for layer in self.layers:
                x = layer(x)
                feats += [x.mean((2, 3)), x.std((2, 3))]
        return torch.cat(feats, 1).double().numpy()


def hf_energy(image: np.ndarray, hole: np.ndarray) -> float:
    """Mean squared high-pass residual (image minus a 5x5 Gaussian blur, grey levels / 255)
    over the hole: how much fine texture a fill carries. A smooth "grey blob" scores near 0."""
    x = image.astype(np.float32) / 255.0
    r = x - cv2.GaussianBlur(x, (5, 5), 1.0)
    return float(np.mean(r[hole] ** 2)) if hole.any() else 0.0


def hole_class(pair: Pair) -> int:
    """The label painted in most of the hole (0 clean steel, k+1 defect class k)."""
    counts = np.bincount(pair.labels[pair.hole].ravel(), minlength=1)
    return int(counts.argmax())


def texture_ratio(images: list[np.ndarray], pairs: list[Pair]) -> dict:
    """High-frequency energy inside holes, generated / real: overall and per hole class
    (label value as key). 1.0 is real texture; below 1 smoother than steel."""
    gen = np.array([hf_energy(g, p.hole) for g, p in zip(images, pairs)])
    real = np.array([hf_energy(p.image, p.hole) for p in pairs])
    cls = np.array([hole_class(p) for p in pairs])
    per = {str(int(c)): float(gen[cls == c].sum() / max(real[cls == c].sum(), 1e-12)) for c in np.unique(cls)}
    return {"all": float(gen.sum() / max(real.sum(), 1e-12)), "per_label": per}


def fill_diversity(draw_a: list[np.ndarray], draw_b: list[np.ndarray], pairs: list[Pair]) -> float:
    """Mean |difference| (grey levels / 255) inside the holes between two fills of the same
    masks: 0 for a deterministic generator."""
    return float(np.mean([np.abs(a[p.hole].astype(np.float64) - b[p.hole]).mean() / 255.0 for a, b, p in zip(draw_a, draw_b, pairs)]))


def telea_fill(image: np.ndarray, hole: np.ndarray) -> np.ndarray:
    return cv2.inpaint(image, hole.astype(np.uint8), 5, cv2.INPAINT_TELEA)


def measure(pairs: list[Pair], generated: list[np.ndarray], features: FeatureNet) -> dict:
    """Quality of generated crops (composited, uint8) against the real crops of `pairs`,
    with the Telea reference on the same holes."""
    if not pairs:
        raise ValueError("no held-out pairs to measure the generator on")
    result = {"pairs": len(pairs), "feature_net": features.name}
    real_crops = np.stack([defect_crop(p.image, p.hole) for p in pairs])
    real_feats = features(real_crops)
    painters = {"gan": generated, "telea": [telea_fill(p.image, p.hole) for p in pairs]}
    for name, images in painters.items():
        l1, psnr = zip(*(hole_l1_psnr(g, p.image, p.hole) for g, p in zip(images, pairs)))
        crops = np.stack([defect_crop(g, p.hole) for g, p in zip(images, pairs)])
        result[name] = {
            "masked_l1": float(np.mean(l1)),
            "masked_psnr_db": float(np.mean([v for v in psnr if math.isfinite(v)] or [float("inf")])),
            "frechet_distance": frechet_distance(real_feats, features(crops)),
            "hf_energy_ratio": texture_ratio(images, pairs),
        }
    return result


def synthetic_defect_crops(items, margin: int = 3, max_crops: int = 256) -> np.ndarray:
    """Crops around each added defect of synthetic items, cut like held-out defect pairs
    (component dilated by `margin`, bounding box, resized): comparable with real crops."""
    from train.gan.pairs import dilate

    crops = []
    for s in items:
        if s.new_mask is None or not s.new_mask.any():
            continue
        n, comp = cv2.connectedComponents(s.new_mask.astype(np.uint8), connectivity=8)
        for c in range(1, n):
            crops.append(defect_crop(s.image, dilate(comp == c, margin)))
            if len(crops) >= max_crops:
                return np.stack(crops)
    return np.stack(crops) if crops else np.zeros((0, FD_CROP, FD_CROP), np.uint8)


def realism(real_pairs: list[Pair], synthetic: dict[str, list], features: FeatureNet) -> dict:
    """Fréchet distance between real held-out defect crops and each method's synthetic defect crops."""
    real = features(np.stack([defect_crop(p.image, p.hole) for p in real_pairs]))
    out = {"feature_net": features.name, "real_crops": len(real_pairs)}
    for name, items in synthetic.items():
        crops = synthetic_defect_crops(items)
        out[name] = {"crops": len(crops), "frechet_distance": frechet_distance(real, features(crops)) if len(crops) > 1 else None}
    return out
