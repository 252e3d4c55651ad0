"""FitConfig: every knob of `train fit`, one typed record; the CLI flags map onto it."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TypeVar

from train.calibrate import OBJECTIVES

T = TypeVar("T")


def strict_from_dict(cls: type[T], d: dict, what: str) -> T:
    """Build a config dataclass from a dict, refusing unknown keys: a typo in a saved
    config or a checkpoint from another version fails with the key's name."""
    unknown = sorted(set(d) - {f.name for f in fields(cls)})
    if unknown:
        raise ValueError(f"{what}: unknown field(s) {unknown}")
    return cls(**d)


@dataclass
class FitConfig:
    data: str | list[str]  # one data set folder, or several merged (same classes)
    out: str
    size: str = "nano"
    in_channels: int = 1
    epochs: int = 30
    time_budget_min: float | None = None  # stop by itself: epochs are cut to fit the budget
    batch_size: int = 8
    crop_height: int | None = None  # None: the full frame height
    crop_width: int = 512
    lr: float = 2e-3
    weight_decay: float = 1e-4
    warmup_fraction: float = 0.05  # of all steps
    seed: int = 0
    workers: int = 0
    resume: str | None = None
    init_weights: str | None = None  # a run or checkpoint whose weights start this fit (new optimiser and schedule): fine-tuning
    split: str | None = None  # training split name; None: "train" if present, else everything
    val_split: str = "val"  # used when the data set has it; else a seeded fraction
    val_fraction: float = 0.2
    labelled_fraction: float = 1.0  # fraction of training images kept (seeded): few-label baselines
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: bool = True  # mixed precision, only ever on CUDA
    flip: bool = True
    jitter: float = 0.2  # brightness/contrast jitter amplitude
    defect_crop_prob: float = 0.5  # share of crops placed over a defect (rare classes get seen)
    val_every: int = 1
    threads: int | None = None  # torch CPU threads per process; None leaves torch's default
    synthetic_data: str | None = None  # a data set of synthetic pairs added on top of every real batch
    synthetic_per_batch: int = 0  # synthetic crops per step, on top of batch_size real ones
    pos_weight: list[float] | None = None  # per class: weight of a defect pixel in the BCE term (thin classes)
    weight_other_classes: bool = False  # another class's pixel counts against a class as its own pixel does
    lovasz_weight: float = 0.0  # weight of a Lovasz IoU term added to BCE + Dice (0: off)
    calibrate_for: str = "competition"  # thresholds/min areas: "competition" Dice, "balanced" with Dice on present images, or pixel "iou"
    ema_decay: float | None = None  # validate, calibrate and ship an exponential moving average of the weights

    def __post_init__(self) -> None:
        checks = [
            (self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}"),
            (self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}"),
            (self.crop_width >= 32, f"crop_width must be >= 32, got {self.crop_width}"),
            (self.crop_height is None or self.crop_height >= 32, f"crop_height must be >= 32, got {self.crop_height}"),
            (self.lr > 0, f"lr must be > 0, got {self.lr}"),
            (0.0 < self.val_fraction < 1.0, f"val_fraction must be in (0, 1), got {self.val_fraction}"),
            (0.0 < self.labelled_fraction <= 1.0, f"labelled_fraction must be in (0, 1], got {self.labelled_fraction}"),
            (self.time_budget_min is None or self.time_budget_min > 0, "time_budget_min must be > 0"),
            (0.0 <= self.defect_crop_prob <= 1.0, f"defect_crop_prob must be in [0, 1], got {self.defect_crop_prob}"),
            (self.in_channels in (1, 3), f"in_channels must be 1 or 3, got {self.in_channels}"),
            (self.synthetic_per_batch >= 0, f"synthetic_per_batch must be >= 0, got {self.synthetic_per_batch}"),
            (not (self.synthetic_per_batch and not self.synthetic_data), "synthetic_per_batch needs synthetic_data"),
            (self.pos_weight is None or all(w > 0 for w in self.pos_weight), f"pos_weight must be > 0, got {self.pos_weight}"),
            (not (self.weight_other_classes and self.pos_weight is None), "weight_other_classes needs pos_weight"),
            (self.calibrate_for in OBJECTIVES, f"calibrate_for must be one of {', '.join(OBJECTIVES)}, got {self.calibrate_for!r}"),
            (self.lovasz_weight >= 0.0, f"lovasz_weight must be >= 0, got {self.lovasz_weight}"),
            (self.ema_decay is None or 0.0 < self.ema_decay < 1.0, f"ema_decay must be in (0, 1), got {self.ema_decay}"),
            (not (self.resume and self.init_weights), "resume and init_weights exclude each other: resume continues a run, init_weights starts a new one"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> FitConfig:
        return strict_from_dict(cls, d, "fit config")

    def save(self, path: Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")
