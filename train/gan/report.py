"""Pictures and the augment-and-fit report (report.md + report.json).

Pictures are plain uint8 mosaics written with OpenCV: every tile is an image the
networks saw or made, so what a reader sees is exactly what was measured.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

# BGR colours for defect classes (clean steel is drawn as dark grey inside holes).
PALETTE = [(0, 0, 255), (0, 200, 0), (255, 128, 0), (0, 215, 255), (255, 0, 255), (255, 255, 0)]


def colour_labels(labels: np.ndarray, hole: np.ndarray | None = None) -> np.ndarray:
    """Class map as a colour tile; with `hole`, only the hole is painted (clean = grey)."""
    out = np.zeros((*labels.shape, 3), np.uint8)
    if hole is not None:
        out[hole] = (90, 90, 90)
    for k in range(1, int(labels.max()) + 1 if labels.size else 1):
        sel = labels == k if hole is None else (labels == k) & hole
        out[sel] = PALETTE[(k - 1) % len(PALETTE)]
    return out


def overlay(image: np.ndarray, labels: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """Grey image with defect classes tinted (outline-free, so small defects stay visible)."""
    rgb = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    col = colour_labels(labels)
    sel = labels > 0
    rgb[sel] = (rgb[sel] * (1 - alpha) + col[sel] * alpha).astype(np.uint8)
    return rgb


def mosaic(rows: list[list[np.ndarray]], pad: int = 2) -> np.ndarray:
    """Rows of equally sized tiles (gray or BGR) -> one BGR image with white gutters."""
    tiles = [[t if t.ndim == 3 else cv2.cvtColor(t, cv2.COLOR_GRAY2BGR) for t in r] for r in rows]
    h = max(t.shape[0] for r in tiles for t in r)
    w = max(t.shape[1] for r in tiles for t in r)
    ncol = max(len(r) for r in tiles)
    out = np.full((len(tiles) * (h + pad) + pad, ncol * (w + pad) + pad, 3), 255, np.uint8)
    for i, r in enumerate(tiles):
        for j, t in enumerate(r):
            y, x = pad + i * (h + pad), pad + j * (w + pad)
            out[y : y + t.shape[0], x : x + t.shape[1]] = t
    return out


def gan_sample_grid(path: Path, pairs, generated: list[np.ndarray]) -> None:
    """input (hole blanked) | hole + class map | generated (composited) | real, one pair a row."""
    rows = []
    for p, g in zip(pairs, generated):
        blanked = p.image.copy()
        blanked[p.hole] = 127
        rows.append([blanked, colour_labels(p.labels, p.hole), g, p.image])
    cv2.imwrite(str(path), mosaic(rows))


def synthetic_grid(path: Path, examples: dict[str, list[tuple[np.ndarray, np.ndarray]]], max_rows: int = 6) -> None:
    """One column pair (image | overlay) per method, e.g. {"gan": [(img, labels), ...], ...}."""
    names = list(examples)
    n = min(max_rows, min(len(v) for v in examples.values())) if names else 0
    rows = []
    for i in range(n):
        row = []
        for name in names:
            img, lab = examples[name][i]
            row += [img, overlay(img, lab)]
        rows.append(row)
    if rows:
        cv2.imwrite(str(path), mosaic(rows))


def _fmt(v) -> str:
    return "n/a" if v is None else f"{v:.4f}"


def write_report(out: Path, result: dict) -> None:
    """report.json (everything) and report.md (the side-by-side table and pictures)."""
    out = Path(out)
    (out / "report.json").write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    classes = result["classes"]
    arms = result["arms"]
    lines = [
        "# augment-and-fit report",
        "",
        f"Data: `{result['data']}`; labelled fraction {result['labelled_fraction']} "
        f"({result['labelled_images']} labelled training images, seed {result['seed']}); "
        f"evaluated on {result['eval_images']} held-out real images ({result['eval_split']}).",
        "",
        f"Painter: **{result.get('method')}** ({result.get('method_why')}). Schedule: **{result.get('schedule', 'mix')}** "
        f"({result.get('schedule_why', '')}). Every arm makes the same passes over the real images; with `mix` synthetic "
        "arms add synthetic crops on top of each real batch (share below), with `pretrain-finetune` they first fit on the "
        "synthetic pairs alone (time included in train s), then fine-tune on the real ones"
        + ("; `real-pretrain` pre-trains as many steps on the labelled real images instead, so a pre-trained arm's gain "
           "over it is the synthetic pairs', not the extra steps'" if "real-pretrain" in arms else "") + ".",
        "",
        "| arm | real + synthetic images | synthetic share of a batch | epochs | train s | mIoU incl. background | Dice present (mean) "
        "| competition Dice | " + " | ".join(f"Dice {c}" for c in classes) + " |",
        "|---|---|---|---|---|---|---|---|" + "---|" * len(classes),
    ]
    for name, arm in arms.items():
        m = arm["metrics"]
        per = [_fmt(m["per_class_dice"].get(c)) for c in classes]
        lines.append(f"| {name} | {arm['real_images']} + {arm['synthetic_images']} | {arm.get('synthetic_share_of_batch', 0):.2f} | "
                     f"{arm.get('epochs_run')} | {arm.get('train_seconds')} | {_fmt(m.get('miou_incl_background'))} | "
                     f"{_fmt(m.get('mean_dice_present'))} | {_fmt(m['competition_dice'])} | " + " | ".join(per) + " |")
    lines += ["", "Per-class Dice on images where the class is present:", ""]
    lines += ["| arm | " + " | ".join(classes) + " |", "|---|" + "---|" * len(classes)]
    for name, arm in arms.items():
        pres = arm["metrics"].get("per_class_dice_present", {})
        lines.append(f"| {name} | " + " | ".join(_fmt(pres.get(c)) for c in classes) + " |")
    if result.get("calibration_note"):
        lines += ["", f"Note: {result['calibration_note']}."]
    verdict = result.get("verdict")
    if verdict:
        lines += ["", f"**Verdict:** {verdict}"]
    gm = result.get("gan_metrics")
    if gm:
        lines += ["", "## Generator quality (held-out real defects)", "", f"Features for the Fréchet distance: {gm['feature_net']}; {gm['pairs']} pairs.", ""]
        lines += ["| painter | masked L1 | masked PSNR (dB) | Fréchet distance |", "|---|---|---|---|"]
        for painter in ("gan", "telea"):
            if painter in gm:
                g = gm[painter]
                lines.append(f"| {painter} | {g['masked_l1']:.4f} | {g['masked_psnr_db']:.2f} | {g['frechet_distance']:.4f} |")
    sq = result.get("quality_segmenter_features")
    if sq:
        lines += ["", f"Same held-out holes, features of {sq['feature_net']}:", ""]
        lines += ["| painter | masked L1 | masked PSNR (dB) | Fréchet distance |", "|---|---|---|---|"]
        for painter in [p for p in ("gan", "telea") if p in sq]:
            g = sq[painter]
            lines.append(f"| {painter} | {g['masked_l1']:.4f} | {g['masked_psnr_db']:.2f} | {g['frechet_distance']:.4f} |")
        rz = sq.get("realism", {})
        methods = [m for m in rz if isinstance(rz[m], dict)]
        if methods:
            lines += ["", f"Synthetic defects vs {rz['real_crops']} real held-out defect crops (Fréchet distance, same features; lower is more real):", ""]
            lines += ["| method | crops | Fréchet distance |", "|---|---|---|"]
            for m in methods:
                lines.append(f"| {m} | {rz[m]['crops']} | {_fmt(rz[m]['frechet_distance'])} |")
    lines += ["", "## Pictures", ""]
    for title, rel in result.get("pictures", {}).items():
        lines += [f"**{title}**", "", f"![{title}]({rel})", ""]
    lines += ["## Reproduce", "", "```bash", result["command"], "```", ""]
    (out / "report.md").write_text("\n".join(lines))
