"""Review of the line's own evidence, and its export as training data.

A reviewer confirms a physical defect, rejects it (a false positive), changes
its class, or marks its frame as holding a defect the model missed. Decisions
are appended to `reviews.jsonl` in the run folder (whole lines, never
rewritten: the last decision for a defect counts), so they survive restarts.

`export_reviewed` turns reviewed evidence into a data set `train` reads: the
frame where the defect scored highest, with the model's masks changed only
where the reviewer said so (rejected: that defect's pixels removed, so the frame
becomes a negative example for it; reclassed: its pixels moved to the new
class). Other defects in the frame keep the model's masks.
Formats with one class per pixel (mask folders, CVAT) resolve a multi-label
overlap in favour of the reviewed defect's class, elsewhere of the later class. Frames marked "missed" carry no invented masks: they are listed for an
annotation tool instead (and written as a CVAT task folder to label).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from inspect_edge.events import append_whole_line

DECISIONS = ("confirm", "reject", "reclass", "missed")


class ReviewError(ValueError):
    """A decision that cannot be recorded; the message says which field and why."""


class NoSuchDefect(ReviewError):
    """The defect id is not in this run's events."""


_by_id_cache: dict[Path, tuple[tuple[int, int], dict[int, dict]]] = {}


def _records_by_id(path: Path) -> dict[int, dict]:
    """A JSON-lines file's records by `defect_id`, the last one winning; lines that do not
    parse are skipped. Kept while the file is unchanged: the review page asks for one
    overlay per card, and a long run's events.jsonl need not be read for each."""
    try:
        st = path.stat()
    except OSError:
        return {}
    key = (st.st_size, st.st_mtime_ns)
    cached = _by_id_cache.get(path)
    if cached is not None and cached[0] == key:
        return cached[1]
    out = {}
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            rec = json.loads(line)
            out[int(rec["defect_id"])] = rec
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            continue
    _by_id_cache[path] = (key, out)
    return out


def read_events(run_dir: Path) -> dict[int, dict]:
    """Physical-defect events of a run by defect id."""
    return _records_by_id(Path(run_dir) / "events.jsonl")


class ReviewLog:
    def __init__(self, run_dir: Path, classes) -> None:
        self.run_dir, self.classes = Path(run_dir), tuple(classes)
        self.path = self.run_dir / "reviews.jsonl"

    def decisions(self) -> dict[int, dict]:
        return _records_by_id(self.path)

    def record(self, defect_id: int, decision: str, new_class: str | None = None, reviewer: str | None = None) -> dict:
        if decision not in DECISIONS:
            raise ReviewError(f"decision: expected one of {', '.join(DECISIONS)}, got {decision!r}")
        event = read_events(self.run_dir).get(int(defect_id))
        if event is None:
            raise NoSuchDefect(f"defect_id: no defect {defect_id} in this run's events.jsonl")
        if decision == "reclass":
            if new_class not in self.classes:
                raise ReviewError(f"class: expected one of {', '.join(self.classes)}, got {new_class!r}")
            if new_class == event["class"]:
                raise ReviewError(f"class: defect {defect_id} already is {new_class!r}; confirm it instead")
        elif new_class is not None:
            raise ReviewError(f"class: only a 'reclass' decision takes a class, this one is {decision!r}")
        rec = {"defect_id": int(defect_id), "decision": decision, "class": new_class,
               "reviewer": (reviewer or None), "time": time.time()}
        append_whole_line(self.path, (json.dumps(rec) + "\n").encode())
        return rec

    def queue(self, limit: int = 50) -> list[dict]:
        """The newest defects that have evidence, each with its current decision (or None)."""
        decided = self.decisions()
        items = [e for e in read_events(self.run_dir).values() if e.get("evidence")]
        items.sort(key=lambda e: -e["defect_id"])
        return [{**e, "review": decided.get(e["defect_id"])} for e in items[:limit]]


@dataclass
class ExportSummary:
    frames: int = 0
    confirmed: int = 0
    rejected: int = 0
    reclassed: int = 0
    to_label: int = 0
    skipped: int = 0          # decisions whose evidence is gone (evicted by the quota)


def _read_masks(folder: Path, k: int) -> np.ndarray:
    packed = cv2.imread(str(folder / "mask.png"), cv2.IMREAD_UNCHANGED)
    if packed is None:
        raise FileNotFoundError(folder / "mask.png")
    return np.stack([(packed >> c) & 1 for c in range(k)]).astype(bool)


def _one_class_per_pixel(masks: np.ndarray, reviewed: np.ndarray, reviewed_class: int) -> np.ndarray:
    """Where a multi-label model flagged several classes: the reviewed defect keeps its own
    pixels for its (reviewed) class; elsewhere the last class listed wins."""
    out = np.zeros_like(masks)
    owner = np.full(masks.shape[1:], -1, np.int32)
    for k in range(masks.shape[0]):
        owner[masks[k]] = k
    if reviewed.any() and masks[reviewed_class][reviewed].any():
        owner[reviewed & masks[reviewed_class]] = reviewed_class
    for k in range(masks.shape[0]):
        out[k] = owner == k
    return out


def export_reviewed(run_dir: Path, out: Path, classes, fmt: str = "mask-folder") -> ExportSummary:
    from inspect_edge.data import Sample, write_cvat_mask, write_mask_folder, write_severstal

    run_dir, out = Path(run_dir), Path(out)
    classes = tuple(classes)
    events, decided = read_events(run_dir), ReviewLog(run_dir, classes).decisions()
    s = ExportSummary()
    samples, missed = [], []
    for defect_id, d in sorted(decided.items()):
        e = events.get(defect_id)
        folder = run_dir / e["evidence"] if e and e.get("evidence") else None
        if folder is None or not (folder / "frame.jpg").is_file():
            s.skipped += 1
            continue
        image = cv2.imread(str(folder / "frame.jpg"), cv2.IMREAD_GRAYSCALE)
        name = f"d{defect_id:08d}"
        if d["decision"] == "missed":
            missed.append(Sample(name, image, np.zeros((len(classes), *image.shape), bool), "to_label"))
            s.to_label += 1
            continue
        masks = _read_masks(folder, len(classes))
        c = classes.index(e["class"])
        x, y, w, h = e["bbox_at_peak"]
        region = np.zeros(image.shape, bool)
        region[y:y + h, x:x + w] = True
        region &= masks[c]  # this defect's own pixels, not a neighbour's of another class
        if d["decision"] == "reject":
            masks[c] &= ~region
            s.rejected += 1
        elif d["decision"] == "reclass":
            masks[c] &= ~region
            masks[:, region] = False
            masks[classes.index(d["class"]), region] = True
            s.reclassed += 1
        else:
            s.confirmed += 1
        if fmt != "severstal":  # index and colour masks hold one class a pixel
            masks = _one_class_per_pixel(masks, region, classes.index(d["class"]) if d["decision"] == "reclass" else c)
        samples.append(Sample(name, image, masks, "train"))
    s.frames = len(samples)
    if fmt == "mask-folder":
        write_mask_folder(out, samples, classes)
    elif fmt == "severstal":
        write_severstal(out, samples, classes)
    elif fmt == "cvat":
        write_cvat_mask(out, samples, classes)
    else:
        raise ValueError(f"format: expected mask-folder, severstal or cvat, got {fmt!r}")
    if missed:  # for the annotation tool: frames only, no invented masks
        write_cvat_mask(out / "to_label", missed, classes)
        (out / "to_label.txt").write_text("".join(f"{m.image_id}\n" for m in missed))
    (out / "review_export.json").write_text(json.dumps(s.__dict__, indent=2) + "\n")
    return s
