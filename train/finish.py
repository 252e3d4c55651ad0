"""After training: calibrate, choose the checkpoint to keep, write results and pictures.

The per-epoch score uses one fixed threshold; calibration can change the ranking (a
noisy late model often beats an all-empty early one once its speckle is removed), so
the best and the last epoch are both calibrated on validation and the better one is
kept as best.pt with its thresholds and minimum areas.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from inspect_edge.model_info import ModelInfo
from inspect_edge.postprocess import masks_from_logits
from train.calibrate import calibrate
from train.checkpoint import model_from_checkpoint, read_checkpoint, save_checkpoint
from train.config import FitConfig
from train.model import UNetConfig
from train.plots import plot_curves, plot_mask_grid
from train.predict import iter_dataset_logits

log = logging.getLogger("train.fit")


@dataclass
class FinishedTraining:
    """What the training loop hands over: the run, its data and how the training went."""

    cfg: FitConfig
    out: Path
    model_cfg: UNetConfig
    info: ModelInfo
    val_ds: object  # SteelDataset view
    history: list[dict]
    best_score: float
    how: str  # how the validation split was chosen
    train_s: float
    stopped_by_budget: bool
    n_train: int
    n_train_all: int  # before the labelled-fraction subset


def store_calibration(out: Path, ck: dict, info: ModelInfo, cal: dict) -> ModelInfo:
    """Write a calibration's thresholds and minimum areas into the run's three copies
    (calibration.json, model_info.json and best.pt's model_info); the updated info."""
    info = info.replace(thresholds=tuple(cal["thresholds"]), min_areas=tuple(cal["min_areas"]))
    (out / "calibration.json").write_text(json.dumps(cal, indent=2) + "\n")
    info.save(out / "model_info.json")
    ck["model_info"] = info.to_dict()
    save_checkpoint(out / "best.pt", **{k: v for k, v in ck.items() if k not in ("format", "format_version")})
    return info


def finish(t: FinishedTraining) -> dict:
    """Calibrate the best and the last epoch on validation, keep whichever calibrates better,
    store its thresholds with it, write results and pictures.

    The per-epoch score uses one fixed threshold; calibration can change the ranking
    (a noisy late model often beats an all-empty early one once its speckle is removed).
    """
    cfg, out, info, val_ds = t.cfg, t.out, t.info, t.val_ds
    if not (out / "best.pt").exists():  # no validation improved on -1: keep the last epoch
        ck = read_checkpoint(out / "last.pt")
        save_checkpoint(out / "best.pt", **{k: v for k, v in ck.items() if k not in ("format", "format_version")})
    candidates = {}
    for name in ("best.pt", "last.pt"):
        ck = read_checkpoint(out / name)
        if any(c[0]["epoch"] == ck["epoch"] for c in candidates.values()):
            continue
        model = model_from_checkpoint(ck, str(out / name))
        t_cal = time.monotonic()
        pairs = ((logits, s.masks) for s, logits in iter_dataset_logits(model, val_ds, info, batch_size=cfg.batch_size))
        cal = calibrate(pairs, info.classes, (info.input_height, info.input_width), objective=cfg.calibrate_for)
        log.info("%s (epoch %d) calibrated (%s) on %d validation images in %.1fs: thresholds %s min_areas %s, "
                 "competition Dice %.4f (at 0.5/0: %.4f), score %.4f", name, ck["epoch"] + 1, cal["objective"], cal["n_images"],
                 time.monotonic() - t_cal, cal["thresholds"], cal["min_areas"], cal["competition_dice"],
                 cal["competition_dice_at_default"], cal["score"])
        candidates[name] = (ck, model, cal)
    chosen = max(candidates, key=lambda n: candidates[n][2]["score"])  # ties: best.pt (first)
    ck, model, cal = candidates[chosen]
    cal["chosen_checkpoint_epoch"] = int(ck["epoch"]) + 1
    cal["candidates"] = {f"epoch {c[0]['epoch'] + 1}": c[2]["score"] for c in candidates.values()}
    log.info("keeping epoch %d as best.pt (calibrated %s score %.4f, competition Dice %.4f)", ck["epoch"] + 1,
             cal["objective"], cal["score"], cal["competition_dice"])
    info = store_calibration(out, ck, info, cal)

    plot_curves(t.history, out / "curves.png")
    rows = []
    presence = val_ds.class_presence()
    chosen = [i for i in range(len(val_ds)) if presence[i].any()][:6] or list(range(min(4, len(val_ds))))
    sub = val_ds.subset(chosen)
    for s, logits in iter_dataset_logits(model, sub, info, batch_size=cfg.batch_size):
        rows.append((s.image_id, s.image, s.masks, masks_from_logits(logits, info.thresholds, info.min_areas)))
    plot_mask_grid(rows, info.classes, out / "val_samples.png", f"{out.name}: validation, calibrated masks")

    metrics = {
        "data": str(cfg.data), "split": t.how, "n_train": t.n_train, "n_train_before_subset": t.n_train_all,
        "n_val": len(val_ds), "labelled_fraction": cfg.labelled_fraction, "arch": t.model_cfg.arch,
        "epochs_run": len(t.history), "best_epoch": int(ck["epoch"]) + 1, "best_val_dice_at_0.5_min_area_0.1pct": t.best_score,
        "val_competition_dice_calibrated": cal["competition_dice"], "calibration": cal["per_class"],
        "train_seconds": round(t.train_s, 1), "stopped_by_time_budget": t.stopped_by_budget,
        "final_train_loss": t.history[-1]["train_loss"] if t.history else None, "history": t.history,
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    log.info("run folder %s written (%.1f min of training)", out, t.train_s / 60)
    return metrics
