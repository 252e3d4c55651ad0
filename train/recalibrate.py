"""`train calibrate`: choose a finished run's thresholds and minimum areas again, for another objective.

`train fit` calibrates once, for the objective it was given; a run judged by another
metric (NEU-Seg papers publish pixel IoU, mills care about images with a missed defect)
should not need retraining to be calibrated for it. The weights do not change: only the
per-class thresholds and minimum areas (and, when asked, the flip test-time augmentation
they are chosen for) in `model_info.json`, `best.pt` and `calibration.json`. The calibration being replaced is kept beside it, named by its
objective, so the two can be compared and the old one restored by hand.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from train.calibrate import OBJECTIVES, calibrate
from train.checkpoint import load_run, read_checkpoint
from train.evaluate import open_split_for
from train.finish import store_calibration
from train.predict import iter_dataset_logits

log = logging.getLogger("train.calibrate")


def parse_flips(text: str) -> tuple[str, ...]:
    """'none' | 'h' | 'v' | 'hv' -> the ModelInfo.tta_flips tuple."""
    flips = () if text == "none" else tuple(text)
    if text != "none" and (not flips or any(f not in "hv" for f in flips) or len(set(flips)) != len(flips)):
        raise ValueError(f"tta must be none, h, v or hv, got {text!r}")
    return flips


def recalibrate(run: str | Path, data: str | Path, split: str | None = None, *,
                objective: str = "iou", batch_size: int = 8, tta: str | None = None) -> dict:
    """`tta` (none, h, v, hv) changes the flip views the model runs with before calibrating
    for them; None keeps the run's."""
    run = Path(run)
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {', '.join(OBJECTIVES)}, got {objective!r}")
    if not run.is_dir():
        raise ValueError(f"{run}: give the run folder written by `train fit` (its best.pt, model_info.json "
                         "and calibration.json are rewritten together)")
    model, info = load_run(run)
    previous_flips = list(info.tta_flips)
    if tta is not None:
        info = info.replace(tta_flips=parse_flips(tta))
    cal_ds, split_name = open_split_for(run, data, split, info.classes)

    t0 = time.monotonic()
    pairs = ((logits, s.masks) for s, logits in iter_dataset_logits(model, cal_ds, info, batch_size=batch_size))
    cal = calibrate(pairs, info.classes, (info.input_height, info.input_width), objective=objective)
    cal["split"] = split_name
    cal["tta_flips"] = list(info.tta_flips)
    cal["previous"] = {"thresholds": list(info.thresholds), "min_areas": list(info.min_areas), "tta_flips": previous_flips}

    old_path = run / "calibration.json"
    if old_path.is_file():
        old_text = old_path.read_text()
        old = json.loads(old_text)
        cal["previous"]["objective"] = old.get("objective")
        if "chosen_checkpoint_epoch" in old:  # fit's choice of epoch stands: only the post-processing changes
            cal["chosen_checkpoint_epoch"] = old["chosen_checkpoint_epoch"]
        (run / f"calibration_{old.get('objective') or 'previous'}.json").write_text(old_text)

    store_calibration(run, read_checkpoint(run / "best.pt"), info, cal)
    log.info("%s recalibrated (%s) on %d %s images in %.1fs: thresholds %s min_areas %s (were %s / %s)",
             run, objective, cal["n_images"], split_name, time.monotonic() - t0, cal["thresholds"],
             cal["min_areas"], cal["previous"]["thresholds"], cal["previous"]["min_areas"])
    return cal
