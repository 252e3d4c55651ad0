"""`train evaluate`: a trained run on a split, with the calibrated post-processing.

Reports per-class Dice and IoU, mIoU over the defect classes and mIoU including
background (the figure NEU-Seg papers publish), the competition Dice (and the
all-empty baseline it must beat), a confusion summary per image and class, and the
inference time per image; writes `evaluation.json` and `worst_cases.png` for the
val split and `evaluation_<split>.json` / `worst_cases_<split>.png` for any other.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from inspect_edge.data import open_dataset
from inspect_edge.postprocess import masks_from_logits
from inspect_edge.scoring import DiceAccumulator, dice_pair
from train.checkpoint import load_run
from train.plots import plot_mask_grid
from train.predict import iter_dataset_logits, predict_logits


def pick_split(ds, run: Path, split: str | None):
    """The named split; else the data set's `val`; else the run's own seeded hold-out (split.json)."""
    if split is not None:
        return ds.split(split), split
    if "val" in ds.split_names:
        return ds.split("val"), "val"
    record = run / "split.json"
    if record.is_dir() or not record.is_file():
        raise ValueError(f"{ds.root} has no 'val' split and {record} is missing; pass --split (one of {list(ds.split_names)})")
    val_ids = set(json.loads(record.read_text())["val_ids"])
    idx = [i for i, image_id in enumerate(ds.ids) if image_id in val_ids]
    if len(idx) != len(val_ids):
        raise ValueError(f"{record}: {len(val_ids) - len(idx)} validation id(s) are not in {ds.root}; is this the run's data set?")
    return ds.subset(idx), "run validation hold-out"


def open_split_for(run: Path, data: str | Path, split: str | None, classes: tuple[str, ...]):
    """(split view, its name) of `data` for a run whose model has `classes`: a data set with other
    classes or an empty split is refused with the reason."""
    ds = open_dataset(data)
    if tuple(ds.classes) != tuple(classes):
        raise ValueError(f"{data}: classes {list(ds.classes)} differ from the model's {list(classes)}")
    view, name = pick_split(ds, run, split)
    if len(view) == 0:
        raise ValueError(f"{data}: split {name!r} is empty")
    return view, name


def output_names(split: str | None) -> tuple[str, str]:
    """(evaluation JSON, worst-cases picture) for the requested split: the default (None or
    `val`) keeps the plain names, any other split gets its own, so scoring `--split test`
    never overwrites the validation scores."""
    if split in (None, "val"):
        return "evaluation.json", "worst_cases.png"
    slug = "".join(c if c.isalnum() or c in "-_" else "_" for c in split)
    return f"evaluation_{slug}.json", f"worst_cases_{slug}.png"


def time_inference(model, images: list[np.ndarray], info, repeats: int = 1) -> float:
    """Median seconds per single frame (batch 1, after one warm-up), the edge's streaming case."""
    if not images:
        return float("nan")
    predict_logits(model, [images[0]], info)
    times = []
    for img in images:
        for _ in range(repeats):
            t = time.perf_counter()
            predict_logits(model, [img], info)
            times.append(time.perf_counter() - t)
    return float(np.median(times))


def evaluate(run: str | Path, data: str | Path, split: str | None = None, *, batch_size: int = 8,
             timing_images: int = 10, worst: int = 6, out: str | Path | None = None) -> dict:
    run = Path(run)
    model, info = load_run(run)
    eval_ds, split_name = open_split_for(run, data, split, info.classes)
    k = info.num_classes
    acc, empty_acc = DiceAccumulator(k), DiceAccumulator(k)
    missed = np.zeros(k, np.int64)  # images where class present in truth, nothing predicted
    false = np.zeros(k, np.int64)  # images where class predicted, absent in truth
    present = np.zeros(k, np.int64)
    img_missed = img_false = 0
    per_image = []
    for s, logits in iter_dataset_logits(model, eval_ds, info, batch_size=batch_size):
        pred = masks_from_logits(logits, info.thresholds, info.min_areas)
        acc.update(pred, s.masks)
        empty_acc.update(np.zeros_like(s.masks), s.masks)
        t_any, p_any = s.masks.any(axis=(1, 2)), pred.any(axis=(1, 2))
        present += t_any
        missed += t_any & ~p_any
        false += p_any & ~t_any
        img_missed += bool((t_any & ~p_any).any())
        img_false += bool((p_any & ~t_any).any())
        per_image.append((float(np.mean([dice_pair(pred[c], s.masks[c]) for c in range(k)])), s.image_id))
    res = acc.result(info.classes)
    base = empty_acc.result(info.classes)
    frames = [eval_ds[i].image for i in range(min(timing_images, len(eval_ds)))]
    with torch.no_grad():
        sec = time_inference(model, frames, info)
    result = {
        "run": str(run), "data": str(data), "split": split_name, "n_images": len(eval_ds), "classes": list(info.classes),
        "thresholds": list(info.thresholds), "min_areas": list(info.min_areas),
        "competition_dice": res["competition_dice"],
        "all_empty_baseline_dice": base["competition_dice"],
        "per_class_dice": res["per_class_dice"],
        "per_class_dice_present": res["per_class_dice_present"],
        "mean_dice_present": float(np.nanmean([v for v in res["per_class_dice_present"].values() if v is not None] or [np.nan])),
        "per_class_iou": res["per_class_iou"],
        # Pixel-level Dice over the whole split, 2|P&T|/(|P|+|T|) (what NEU-Seg papers report): from the IoU.
        "per_class_dice_pixels": {c: (2 * v / (1 + v) if v is not None else None) for c, v in res["per_class_iou"].items()},
        "mean_iou": res["mean_iou"],  # defect classes only
        "background_iou": res["background_iou"],
        "miou_incl_background": res["miou_incl_background"],  # what NEU-Seg papers call mIoU
        "confusion": {
            "images_with_missed_defect": int(img_missed), "images_with_false_defect": int(img_false),
            "per_class": {c: {"images_present": int(present[i]), "missed": int(missed[i]), "false": int(false[i])}
                          for i, c in enumerate(info.classes)},
        },
        "inference_ms_per_image": round(sec * 1000, 2), "inference_device": "cpu",
        "inference_threads": torch.get_num_threads(), "frame_size": list(frames[0].shape),
    }
    out = Path(out) if out else run
    out.mkdir(parents=True, exist_ok=True)
    json_name, worst_name = output_names(split)
    result["written_to"] = json_name
    (out / json_name).write_text(json.dumps(result, indent=2) + "\n")
    worst_ids = {image_id for _, image_id in sorted(per_image)[:worst]}
    idx = [i for i, image_id in enumerate(eval_ds.ids) if image_id in worst_ids]
    rows = []
    score = dict((i, d) for d, i in per_image)
    for s, logits in iter_dataset_logits(model, eval_ds.subset(idx), info, batch_size=batch_size):
        rows.append((f"{s.image_id} (Dice {score[s.image_id]:.2f})", s.image, s.masks,
                     masks_from_logits(logits, info.thresholds, info.min_areas)))
    plot_mask_grid(rows, info.classes, out / worst_name, f"worst {len(rows)} images of {split_name}")
    return result
