"""Do two runtimes compute the same segmentation? Logits and masks, side by side.

Used after each export step: PyTorch vs ONNX Runtime (CPU) for `export onnx`,
ONNX Runtime vs TensorRT for `export engine`. Two numbers per comparison:
- the largest absolute logit difference (what the runtime changed), and
- per-class Dice between the two sets of masks after the model's own thresholds
  and minimum areas (what a user would see change). Dice pools every pixel of a
  class over all images; a class with no positive pixels on either side scores
  1.0 and is flagged as "empty" so a trivial 1.0 is not mistaken for evidence.

This module imports no torch: the engine check runs on devices without it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from inspect_edge.model_info import ModelInfo
from inspect_edge.postprocess import mask_dice_between


class ParityError(RuntimeError):
    """Two runtimes disagree beyond the tolerance."""


@dataclass(frozen=True)
class Tolerance:
    max_abs_logit: float = 1e-3
    min_dice: float = 0.99

    @classmethod
    def for_precision(cls, precision: str) -> Tolerance:
        # FP16 moves logits by ~1e-2 on a trained net; what matters is that masks barely move.
        return cls(max_abs_logit=0.1, min_dice=0.97) if precision == "fp16" else cls()


@dataclass
class ParityReport:
    reference: str
    candidate: str
    n_images: int
    max_abs_logit_diff: float
    mean_abs_logit_diff: float
    per_class_dice: dict[str, float]
    positive_pixels: dict[str, list[int]]  # class -> [reference, candidate]
    tolerance: Tolerance
    failures: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures

    def to_dict(self) -> dict:
        d = asdict(self)
        d["passed"] = self.passed
        return d

    def save(self, path: str | Path) -> Path:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return Path(path)

    def lines(self) -> list[str]:
        out = [f"parity {self.reference} vs {self.candidate} on {self.n_images} image(s): "
               f"max |logit diff| {self.max_abs_logit_diff:.3g} (tolerance {self.tolerance.max_abs_logit:g}), "
               f"mean {self.mean_abs_logit_diff:.3g}"]
        for name, dice in self.per_class_dice.items():
            ref, cand = self.positive_pixels[name]
            note = "  (no positive pixels: trivially 1)" if ref == cand == 0 else ""
            out.append(f"  {name:<14} Dice {dice:.4f}  positive px {ref} vs {cand}{note}")
        out.append("PASSED" if self.passed else "FAILED: " + "; ".join(self.failures))
        return out


def compare_logits(ref: np.ndarray, cand: np.ndarray, info: ModelInfo, *, reference: str, candidate: str,
                   tolerance: Tolerance | None = None) -> ParityReport:
    """Compare (N, K, H, W) logits from two runtimes for the same images."""
    tolerance = tolerance or Tolerance.for_precision(info.precision)
    if ref.shape != cand.shape:
        raise ParityError(f"{reference} gave logits {ref.shape}, {candidate} gave {cand.shape}")
    diff = np.abs(ref.astype(np.float64) - cand.astype(np.float64))
    dice, positive = mask_dice_between(ref, cand, info)
    report = ParityReport(
        reference=reference, candidate=candidate, n_images=len(ref),
        max_abs_logit_diff=float(diff.max()) if diff.size else 0.0,
        mean_abs_logit_diff=float(diff.mean()) if diff.size else 0.0,
        per_class_dice=dice,
        positive_pixels=positive,
        tolerance=tolerance,
    )
    if not np.isfinite(diff).all():
        report.failures.append(f"{candidate} produced non-finite logits")
    elif report.max_abs_logit_diff > tolerance.max_abs_logit:
        report.failures.append(f"max |logit diff| {report.max_abs_logit_diff:.3g} > {tolerance.max_abs_logit:g}")
    low = {n: round(d, 4) for n, d in dice.items() if d < tolerance.min_dice}
    if low:
        report.failures.append(f"mask Dice below {tolerance.min_dice:g} for {low}")
    return report


# ---- which images to compare on --------------------------------------------
def _fit(image: np.ndarray, h: int, w: int) -> np.ndarray:
    """Crop (top-left) or pad a frame to the model's input size; parity needs equal inputs, not pretty ones."""
    out = np.zeros((h, w), np.uint8)
    ih, iw = min(h, image.shape[0]), min(w, image.shape[1])
    out[:ih, :iw] = image[:ih, :iw]
    return out


def images_from_data(data: str | Path, info: ModelInfo, n: int, ids: list[str] | None = None) -> np.ndarray:
    """Up to `n` frames from a data set (preferring `ids`, e.g. a run's validation split)."""
    from inspect_edge.data import open_datasets

    ds = open_datasets(data)
    order = list(range(len(ds)))
    if ids:
        wanted = set(ids)
        order = [i for i, image_id in enumerate(ds.ids) if image_id in wanted] or order
    picks = order[:n]
    if not picks:
        raise ParityError(f"{data}: no images to compare on")
    return np.stack([_fit(ds[i].image, info.input_height, info.input_width) for i in picks])


def images_from_run(run: str | Path, info: ModelInfo, n: int) -> np.ndarray | None:
    """The run's own validation images, when its data set is still where training read it."""
    run = Path(run)
    run_dir = run if run.is_dir() else run.parent
    try:
        data = json.loads((run_dir / "config.json").read_text())["data"]
        ids = json.loads((run_dir / "split.json").read_text()).get("val_ids") if (run_dir / "split.json").is_file() else None
    except (OSError, KeyError, TypeError, json.JSONDecodeError):
        return None
    if not all(Path(d).exists() for d in ([data] if isinstance(data, str) else data)):
        return None
    return images_from_data(data, info, n, ids)


def textured_images(info: ModelInfo, n: int, seed: int = 0) -> np.ndarray:
    """Steel-like stand-ins (grain, streaks, dark and bright spots) when no data set is at hand."""
    rng = np.random.default_rng(seed)
    h, w = info.input_height, info.input_width
    yy, xx = np.mgrid[0:h, 0:w]
    frames = []
    for _ in range(n):
        img = 128 + 12 * rng.standard_normal((h, w)) + 20 * np.sin(xx / rng.uniform(20, 80))
        for _ in range(rng.integers(2, 6)):
            cy, cx, r = rng.integers(0, h), rng.integers(0, w), rng.uniform(4, 24)
            img += rng.choice([-70, 70]) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))
        frames.append(np.clip(img, 0, 255).astype(np.uint8))
    return np.stack(frames)


def pick_images(info: ModelInfo, n: int, data: str | Path | None = None, run: str | Path | None = None,
                log=print) -> np.ndarray:
    if data is not None:
        images = images_from_data(data, info, n)
        log(f"parity images: {len(images)} from {data}")
        return images
    if run is not None and (images := images_from_run(run, info, n)) is not None:
        log(f"parity images: {len(images)} validation frames of {run}")
        return images
    log(f"parity images: {n} generated steel-like frames (pass --data for real ones)")
    return textured_images(info, n)
