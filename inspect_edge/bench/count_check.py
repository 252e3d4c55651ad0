"""Each physical defect once: the synthetic strip's own defects against the events the service's parts give.

`python -m inspect_edge.bench.count_check [FRAMES] [--model M.onnx]` runs the moving strip
(seed 0, 40 px per frame) and counts, per class: the defects in the strip (true components
of at least 30 px with the service's 16 px merge gap), the events its true masks give
through merge and tracker (the counting alone), and the events the model gives.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import cv2
import numpy as np

SPEED_PX, MIN_AREA, MERGE_GAP = 40, 30, 16


def count_events(frames, info, logits_of) -> tuple[dict[str, int], int]:
    from inspect_edge.postprocess import analyse_logits
    from inspect_edge.tracking import DefectTracker, merge_fragments

    tracker, events, detections = DefectTracker(axis=0, max_missed=5), {}, 0
    for i, (image, masks) in enumerate(frames):
        _, defects = analyse_logits(logits_of(image, masks), info, float(i))
        defects = merge_fragments(defects, MERGE_GAP, 0)
        detections += len(defects)
        for t in tracker.update(i + 1, float(i), defects, image.shape).started:
            events[t.class_name] = events.get(t.class_name, 0) + 1
    return events, detections


def run(n_frames: int, model: Path) -> list[dict]:
    from inspect_edge.backends import open_backend
    from inspect_edge.data.synthetic import MovingStrip
    from inspect_edge.pipeline import infer_tiles
    from inspect_edge.preprocess import Preprocessor

    strip = MovingStrip(frame_height=256, frame_width=1600, seed=0, speed_px=SPEED_PX)
    frames = [strip.next_frame() for _ in range(n_frames)]
    tape = np.concatenate([frames[0][1]] + [m[:, :, -SPEED_PX:] for _, m in frames[1:]], axis=2)
    with open_backend(model, "onnxruntime", 2) as backend:
        info, pre = backend.info, Preprocessor(backend.info, "tile", 32)
        truth = dataclasses.replace(info, thresholds=(0.5,) * info.num_classes, min_areas=(MIN_AREA,) * info.num_classes)
        oracle, oracle_det = count_events(frames, truth, lambda img, m: np.where(m, 10.0, -10.0).astype(np.float32))

        def model_logits(img, _m):
            batch, plan = pre.to_batch(img)
            return pre.stitch(infer_tiles(backend, batch), plan)

        found, found_det = count_events(frames, info, model_logits)
    rows = []
    for k, name in enumerate(info.classes):
        grown = cv2.dilate(tape[k].astype(np.uint8), np.ones((1, MERGE_GAP + 1), np.uint8))
        _, _, stats, _ = cv2.connectedComponentsWithStats(grown, connectivity=8)
        rows.append({"class": name, "in_strip": int(sum(s[cv2.CC_STAT_AREA] >= MIN_AREA for s in stats[1:])),
                     "true_masks": oracle.get(name, 0), "model": found.get(name, 0)})
    rows.append({"class": "total", "in_strip": sum(r["in_strip"] for r in rows), "true_masks": sum(oracle.values()),
                 "model": sum(found.values()), "true_masks_detections": oracle_det, "model_detections": found_det})
    return rows


def main() -> None:
    from inspect_edge.config import DEFAULT_MODEL

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("frames", type=int, nargs="?", default=150)
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    a = ap.parse_args()
    rows = run(a.frames, a.model)
    print(f"{a.frames} frames of 256x1600 at {SPEED_PX} px/frame (seed 0), model {a.model.name}")
    print("| class | defects in the strip | events from the true masks | events from the model |\n|---|---|---|---|")
    for r in rows:
        extra = (f" (of {r['true_masks_detections']} per-frame detections)", f" (of {r['model_detections']})") if r["class"] == "total" else ("", "")
        print(f"| {r['class']} | {r['in_strip']} | {r['true_masks']}{extra[0]} | {r['model']}{extra[1]} |")


if __name__ == "__main__":
    main()
