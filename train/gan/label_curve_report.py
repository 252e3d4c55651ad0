"""The label-curve study's report: report.json (every cell's raw numbers and the aggregates),
report.md (tables, verdict), label_curve.png (score vs labelled fraction, one line per arm,
error bars = standard deviation over seeds) and samples_<class>.png (one mask painted by
every method). Works on a partial study: whatever cells exist are reported, and missing
ones are listed.

Decision rule (stated before the numbers, and printed with them): at a fraction, a
synthetic arm *beats real-only* on a metric when the mean of its paired per-seed
differences to real-only is larger than 2 standard deviations of those differences
(needs at least 2 seeds); it *does not lose competition Dice* when that mean difference
is not below zero by more than 2 standard deviations; it *beats copy-paste* when its
paired differences to copy-paste (every copy-paste arm of its own schedule: with and
without Telea-erased negatives) also exceed 2 standard deviations on both mIoU incl.
background and Dice on present images, the margin over seed noise the goal asks for; *ahead of copy-paste* (reported, decides
nothing) when those mean differences are merely positive. Where the study has the
equal-steps control `real-pretrain`, a synthetic pre-train arm must also beat it by > 2 sd
on both (*beats real pre-train*): otherwise its gain over real-only is the extra steps'.
Where it has the equal-crops control `real-equal-crops`, a mixed synthetic arm must beat
that by > 2 sd on both (*beats real equal crops*): otherwise its gain is the bigger batch's.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

from train.gan.label_curve import ARM_TITLES, CEILING, CONTROLS, GAN_UNLABELLED, PRETRAIN, REAL_EQUAL_CROPS, REAL_PRETRAIN, StudyConfig, arm_eraser, arm_method, arm_schedule, fraction_tag, is_gan_based, painter, plan_cells

HEADLINE = (("miou_incl_background", "mIoU incl. background"), ("mean_dice_present", "Dice on present images"),
            ("competition_dice", "competition Dice"))
TARGET_FRACTIONS = (0.05, 0.10)


def control_key(control: str) -> str:
    """'real_pretrain' for real-pretrain: the suffix of an entry's vs_* and a verdict's beats_* key."""
    return control.replace("-", "_")


def load_cells(out: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((out / "cells").glob("*/*/seed*.json"))]


def _stats(values: list[float]) -> dict:
    a = np.asarray(values, np.float64)
    return {"mean": float(a.mean()), "sd": float(a.std(ddof=1)) if a.size > 1 else None, "n": int(a.size),
            "values": [float(v) for v in a]}


def paired(cells_a: dict[int, dict], cells_b: dict[int, dict], metric: str) -> dict | None:
    """Per-seed differences a - b on `metric` over the seeds both arms have."""
    seeds = sorted(set(cells_a) & set(cells_b))
    if not seeds:
        return None
    d = [cells_a[s]["metrics"][metric] - cells_b[s]["metrics"][metric] for s in seeds]
    st = _stats(d)
    st["seeds"] = seeds
    st["z"] = st["mean"] / st["sd"] if st["sd"] else None  # mean difference in units of its own spread
    return st


def aggregate(cells: list[dict]) -> dict:
    by: dict[tuple[float, str], dict[int, dict]] = {}
    for c in cells:
        by.setdefault((c["fraction"], c["arm"]), {})[c["seed"]] = c
    out = {}
    for (f, arm), seeds in sorted(by.items()):
        any_cell = next(iter(seeds.values()))
        classes = list(any_cell["metrics"]["per_class_dice_present"])
        entry = {
            "fraction": f, "arm": arm, "seeds": sorted(seeds), "real_images": any_cell["real_images"],
            "synthetic_images": any_cell["synthetic_images"], "epochs": any_cell["epochs"], "real_steps": any_cell["real_steps"],
            "synthetic_share_of_batch": any_cell["synthetic_share_of_batch"],
            "train_seconds": _stats([c["train_seconds"] for c in seeds.values()]),
            "metrics": {m: _stats([c["metrics"][m] for c in seeds.values()]) for m, _ in HEADLINE},
            "dice_present_per_class": {k: _stats([c["metrics"]["per_class_dice_present"][k] for c in seeds.values()]) for k in classes},
        }
        if arm != "real" and (f, "real") in by:
            entry["vs_real"] = {m: paired(seeds, by[(f, "real")], m) for m, _ in HEADLINE}
        rivals = copy_paste_rivals(arm, {a for (g, a) in by if g == f})
        if is_gan_based(arm) and rivals:
            entry["vs_copy_paste"] = {r: {m: paired(seeds, by[(f, r)], m) for m, _ in HEADLINE} for r in rivals}
        control = CONTROLS[arm_schedule(arm)]
        if arm_method(arm) and (f, control) in by:
            entry[f"vs_{control_key(control)}"] = {m: paired(seeds, by[(f, control)], m) for m, _ in HEADLINE}
        if arm == GAN_UNLABELLED and (f, "gan") in by:  # the same painter, its generator without the unlabelled images
            entry["vs_gan"] = {m: paired(seeds, by[(f, "gan")], m) for m, _ in HEADLINE}
        out[f"{fraction_tag(f)}/{arm}"] = entry
    return out


def copy_paste_rivals(arm: str, arms: set[str]) -> list[str]:
    """The copy-paste arms a GAN-based arm is judged against: all of its schedule the study
    has (with and without negatives), else plain mixed copy-paste."""
    same = [a for a in ARM_TITLES if a in arms and arm_method(a) == "copy-paste" and arm_schedule(a) == arm_schedule(arm)]
    return same or (["copy-paste"] if "copy-paste" in arms else [])


def _beats(p: dict | None) -> bool:
    return bool(p and p["sd"] is not None and p["mean"] > 2 * p["sd"])


def verdicts(agg: dict) -> dict:
    """Per target fraction and synthetic arm: the decision rule's answers, and overall."""
    res, ahead = {}, {}
    for key, e in agg.items():
        if e["arm"] == "real" or "vs_real" not in e:
            continue
        vr, vcs = e["vs_real"], (e.get("vs_copy_paste") or {}).values()
        comp = vr["competition_dice"]
        both = ("miou_incl_background", "mean_dice_present")
        res[key] = {
            "beats_real_miou": _beats(vr["miou_incl_background"]),
            "beats_real_dice_present": _beats(vr["mean_dice_present"]),
            "keeps_competition_dice": bool(comp and comp["sd"] is not None and comp["mean"] >= -2 * comp["sd"]),
        }
        if arm_method(e["arm"]):  # the real-pretrain control has no painter to compare
            res[key]["beats_copy_paste"] = bool(vcs) and all(_beats(vc[m]) for vc in vcs for m in both)
        for control in map(control_key, CONTROLS.values()):
            if f"vs_{control}" in e:
                res[key][f"beats_{control}"] = all(_beats(e[f"vs_{control}"][m]) for m in both)
        if vcs:
            ahead[key] = all(vc[m] and vc[m]["mean"] > 0 for vc in vcs for m in both)
    goal = {}
    for f in TARGET_FRACTIONS:
        arms = [v for k, v in res.items() if k.startswith(fraction_tag(f) + "/") and is_gan_based(k.split("/", 1)[1])]
        goal[f"{f:g}"] = any(all(v.values()) for v in arms)
    return {"per_arm": res, "ahead_of_copy_paste": ahead, "goal_met_at": goal, "goal_met": bool(goal) and all(goal.values())}


def best_method(agg: dict) -> tuple[str, str]:
    """(synthetic method with the highest mean paired mIoU gain over real-only across the
    target fractions, why); 'none' when no synthetic arm gains on average."""
    gains = {}
    for a in [a for a in ARM_TITLES if arm_method(a)]:
        v = [agg[k]["vs_real"]["miou_incl_background"]["mean"] for k in agg if agg[k]["arm"] == a
             and agg[k]["fraction"] in TARGET_FRACTIONS and agg[k].get("vs_real")]
        if v:
            gains[a] = float(np.mean(v))
    if not gains:
        return "none", "no synthetic arm measured at the target fractions"
    best = max(gains, key=gains.get)
    why = ", ".join(f"{a} {g:+.4f}" for a, g in gains.items())
    if gains[best] <= 0:
        return "none", f"mean paired mIoU gain over real-only at 5%/10% labels: {why}; none is positive"
    return best, f"mean paired mIoU gain over real-only at 5%/10% labels: {why}"


def plot_curve(agg: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from matplotlib.ticker import NullFormatter

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    arms = [a for a in ARM_TITLES if any(e["arm"] == a and e["fraction"] != CEILING for e in agg.values())]
    fractions = sorted({e["fraction"] for e in agg.values() if e["fraction"] != CEILING})
    for ax, (metric, title) in zip(axes, HEADLINE):
        for i, arm in enumerate(arms):
            pts = sorted((e["fraction"], e["metrics"][metric]) for e in agg.values() if e["arm"] == arm and e["fraction"] != CEILING)
            dodge = 1 + 0.025 * (i - (len(arms) - 1) / 2)  # arms side by side at each fraction, so error bars do not hide each other
            x = [p[0] * 100 * dodge for p in pts]
            y = [p[1]["mean"] for p in pts]
            err = [p[1]["sd"] or 0.0 for p in pts]
            ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label=ARM_TITLES[arm])
        ceil = agg.get(f"{fraction_tag(CEILING)}/real")
        if ceil:
            m = ceil["metrics"][metric]
            ax.axhline(m["mean"], color="k", ls="--", lw=1, label=f"all labels, real only ({m['mean']:.3f})")
        ax.set_xscale("log")
        ax.set_xticks([f * 100 for f in fractions])
        ax.set_xticklabels([f"{f * 100:g}%" for f in fractions])
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("labelled share of the training split")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("NEU-Seg val: segmenter score vs labelled fraction (mean ± sd over seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


GRID_METHODS = {"copy-paste": "copy-paste", "gan": "GAN", "gan-blend": "GAN-blend", GAN_UNLABELLED: "GAN + unlabelled"}


def grid_methods(out: Path, fraction: float) -> list[str]:
    return [m for m in GRID_METHODS if (out / "synthetic" / fraction_tag(fraction) / m / "manifest.json").is_file()]


def sample_grids(out: Path, fraction: float, classes: list[str], per_class: int = 3, tile: int = 96) -> dict[str, str]:
    """samples_<class>.png: real source defect | each painter's fill | mask, same mask per row."""
    from inspect_edge.data import open_dataset
    from train.gan.report import mosaic, overlay

    methods = grid_methods(out, fraction)
    if not methods:
        return {}
    sets = {m: open_dataset(out / "synthetic" / fraction_tag(fraction) / m) for m in methods}
    manifest = json.loads((out / "synthetic" / fraction_tag(fraction) / methods[0] / "manifest.json").read_text())["items"]
    real = open_dataset(out / "data" / fraction_tag(fraction), split="train")
    real_ids = {i: n for n, i in enumerate(real.ids)}
    pictures = {}

    def crop(img, x, y, w, h):
        s = max(w, h) + 16
        cy, cx = y + h // 2, x + w // 2
        y0, x0 = max(0, min(img.shape[0] - s, cy - s // 2)), max(0, min(img.shape[1] - s, cx - s // 2))
        return cv2.resize(img[y0 : y0 + s, x0 : x0 + s], (tile, tile), interpolation=cv2.INTER_AREA)

    for k, name in enumerate(classes):
        rows = []
        for n, item in enumerate(manifest):
            d = next((d for d in item["defects"] if d["class"] == name), None)
            if d is None or d["shape_source"] not in real_ids:
                continue
            x, y, w, h = d["bbox_xywh"]
            src = real[real_ids[d["shape_source"]]]
            ncomp, comp, stats, _ = cv2.connectedComponentsWithStats(src.masks[k].astype(np.uint8), connectivity=8)
            row = []
            if d["component"] < ncomp:
                sx, sy, sw, sh = (int(v) for v in stats[d["component"], :4])
                row.append(crop(src.image, sx, sy, sw, sh))
            else:
                row.append(np.zeros((tile, tile), np.uint8))
            for m in methods:
                s = sets[m][sets[m].ids.index(f"syn_{painter(m).replace('-', '')}_{n:05d}")]  # same n = same placements
                row.append(crop(s.image, x, y, w, h))
            labels = np.zeros(s.image.shape, np.uint8)
            for j in range(len(classes)):
                labels[s.masks[j]] = j + 1
            row.append(crop(overlay(s.image, labels), x, y, w, h))
            rows.append(row)
            if len(rows) >= per_class:
                break
        if rows:
            rel = f"samples_{name}.png"
            cv2.imwrite(str(out / rel), mosaic(rows))
            pictures[name] = rel
    return pictures


def erase_grid(out: Path, fraction: float, n: int = 6) -> str | None:
    """negatives.png: real image with its defects tinted | erased by Telea | erased by the GAN
    (the same source and flips per row: both erasers draw from one seeded order)."""
    from inspect_edge.data import open_dataset
    from train.gan.report import mosaic, overlay

    tag = fraction_tag(fraction)
    erasers = [e for e in ("telea", "gan") if (out / "synthetic" / tag / f"erase-{e}" / "manifest.json").is_file()]
    if not erasers:
        return None
    sets = {e: open_dataset(out / "synthetic" / tag / f"erase-{e}") for e in erasers}
    items = json.loads((out / "synthetic" / tag / f"erase-{erasers[0]}" / "manifest.json").read_text())["items"][:n]
    real = open_dataset(out / "data" / tag, split="train")
    real_ids = {i: k for k, i in enumerate(real.ids)}
    rows = []
    for k, item in enumerate(items):
        src = real[real_ids[item["background"]]]
        labels = np.zeros(src.image.shape, np.uint8)
        for j in range(src.masks.shape[0]):
            labels[src.masks[j]] = j + 1
        shown = overlay(src.image, labels)
        fh, fv = item["flips"]
        shown = shown[:, ::-1] if fh else shown
        shown = shown[::-1] if fv else shown
        row = [np.ascontiguousarray(shown)]
        for e in erasers:
            row.append(sets[e][sets[e].ids.index(f"neg_{e}_{k:05d}")].image)
        rows.append(row)
    cv2.imwrite(str(out / "negatives.png"), mosaic(rows))
    return "negatives.png"


def draws_grid(out: Path, fraction: float, n: int = 6) -> str | None:
    """gan_draws.png: held-out masks, each painted three times by the fraction's generator
    (input | hole + class map | draw 1 | draw 2 | draw 3 | real): does one mask get many fills?"""
    from inspect_edge.data import open_dataset
    from train.gan.fit_gan import load_generator, load_held_out_pairs, paint
    from train.gan.report import colour_labels, mosaic

    gen_dir = out / "gan" / fraction_tag(fraction)
    if not (gen_dir / "generator.pt").is_file():
        return None
    generator, meta = load_generator(gen_dir)
    held = open_dataset(out / "data" / fraction_tag(fraction), split="val")
    k = len(meta["classes"])
    pairs = load_held_out_pairs(held, k, int(meta["crop"]), 0, n)
    if not pairs:
        return None
    draws = [paint(generator, pairs, k, seed=s) for s in (0, 1, 2)]
    rows = []
    for i, p in enumerate(pairs):
        blanked = p.image.copy()
        blanked[p.hole] = 127
        rows.append([blanked, colour_labels(p.labels, p.hole), *(d[i] for d in draws), p.image])
    cv2.imwrite(str(out / "gan_draws.png"), mosaic(rows))
    return "gan_draws.png"


def _ms(st: dict | None, digits: int = 4) -> str:
    if not st:
        return "n/a"
    sd = f" ± {st['sd']:.{digits}f}" if st.get("sd") is not None else ""
    return f"{st['mean']:.{digits}f}{sd}"


def _diff(p: dict | None) -> str:
    if not p:
        return "n/a"
    z = f" (z {p['z']:+.1f})" if p.get("z") is not None else ""
    return f"{p['mean']:+.4f} ± {p['sd']:.4f}{z}" if p["sd"] is not None else f"{p['mean']:+.4f}"


def write_study_report(out: Path) -> dict:
    out = Path(out)
    cfg = StudyConfig(**json.loads((out / "study_config.json").read_text()))
    cells = load_cells(out)
    agg = aggregate(cells)
    missing = [f"{f:g}/{a}/seed{s}" for f, a, s in plan_cells(cfg) if not any(
        c["fraction"] == f and c["arm"] == a and c["seed"] == s for c in cells)]
    verdict = verdicts(agg)
    method, why = best_method(agg)
    gans = {}
    for f in cfg.fractions:
        for folder, name in (("gan", f"{f:g}"), ("gan-unlabelled", f"{f:g} + unlabelled images")):
            p = out / folder / fraction_tag(f) / "gan_metrics.json"
            if p.is_file():
                gans[name] = json.loads(p.read_text())
    classes = list(cells[0]["metrics"]["per_class_dice_present"]) if cells else []
    pictures = {}
    if cells:
        plot_curve(agg, out / "label_curve.png")
        pictures["label curve"] = "label_curve.png"
        shown = max((f for f in cfg.fractions if (out / "synthetic" / fraction_tag(f)).is_dir()), default=None)
        if shown is not None:
            columns = " | ".join(["real source", *(GRID_METHODS[m] for m in grid_methods(out, shown)), "mask"])
            for name, rel in sample_grids(out, shown, classes).items():
                pictures[f"{name} at {shown:g} labels ({columns})"] = rel
            rel = erase_grid(out, shown)
            if rel:
                pictures[f"defect-free negatives at {shown:g} labels (real, defects tinted | Telea-erased | GAN-erased)"] = rel
            rel = draws_grid(out, shown)
            if rel:
                pictures[f"GAN at {shown:g} labels: three draws per held-out mask (input | hole | draw 1 | draw 2 | draw 3 | real)"] = rel
    report = {"config": cfg.to_dict(), "cells_done": len(cells), "cells_missing": missing, "aggregates": agg,
              "verdict": verdict, "best_method": method, "best_method_why": why, "gan_metrics": gans,
              "pictures": pictures, "cells": cells}
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "report.md").write_text(render_markdown(report))
    return report


def render_markdown(r: dict) -> str:
    cfg, agg = r["config"], r["aggregates"]
    lines = ["# Label-efficiency study: does synthesis make scarce labels go further?", "",
             f"Data `{cfg['data']}`, scored on its whole held-out split; seeds {cfg['seeds']}; {cfg['size']} segmenter, "
             f"{cfg['real_steps']} steps of {cfg['batch_size']} real crops per cell ({cfg['crop_height']}x{cfg['crop_width']}); "
             f"mixed synthetic arms add {cfg['synthetic_per_batch']} synthetic crops on top of each batch; "
             + (f"the equal-crops control takes {cfg['batch_size'] + cfg['synthetic_per_batch']} real crops per step instead, "
                "for as many steps; " if REAL_EQUAL_CROPS in cfg["arms"] else "")
             + (f"'pre-train' arms first fit {cfg.get('pretrain_steps', 400)} steps of {cfg['batch_size']} synthetic crops alone, "
                "then the same real steps with no synthetic crops; " if any(a.endswith(PRETRAIN) for a in cfg["arms"]) else "") +
             (f"'negatives' arms add {cfg.get('negatives', 100)} labelled images with every defect erased (label all clean) "
              "to that pre-train set; " if any(arm_eraser(a) for a in cfg["arms"]) else "") +
             f"{cfg['count']} synthetic pairs per fraction, the same masks and placements for every painter; "
             "one GAN per fraction, " + (f"{cfg['gan_steps']} steps" if cfg.get("gan_steps") else f"{cfg['gan_minutes']:g} CPU minutes")
             + " on that fraction's labels only.", "",
             f"Cells done: {r['cells_done']}" + (f"; missing: {', '.join(r['cells_missing'])}" if r["cells_missing"] else "; none missing."), "",
             "Decision rule: a synthetic arm beats real-only on a metric when the mean paired per-seed difference exceeds "
             "2 standard deviations of those differences; it keeps competition Dice when that difference is not below 0 "
             "by more than 2 sd; it beats copy-paste when its paired differences to every copy-paste arm of its own schedule "
             "also exceed 2 sd on both mIoU incl. background and Dice on present images (merely positive means are "
             "reported as 'ahead of copy-paste' and decide nothing)"
             + ("; a synthetic pre-train arm must also beat the equal-steps real pre-train by > 2 sd on both, or its gain "
                "is the extra steps'" if REAL_PRETRAIN in cfg["arms"] else "")
             + ("; a mixed synthetic arm must also beat real-only with as many (all real) crops per step by > 2 sd on both, "
                "or its gain is the bigger batch's" if REAL_EQUAL_CROPS in cfg["arms"] else "") + ".", ""]
    fractions = sorted({e["fraction"] for e in agg.values()})
    for f in fractions:
        rows = [e for e in agg.values() if e["fraction"] == f]
        rows.sort(key=lambda e: list(ARM_TITLES).index(e["arm"]))
        lines += [f"## {f:g} of the labels ({rows[0]['real_images']} real images, {rows[0]['epochs']} epochs = {rows[0]['real_steps']} real steps)", "",
                  "| arm | seeds | mIoU incl. bg | Dice present | competition Dice | Δ mIoU vs real | Δ Dice present vs real | Δ competition vs real | training s |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for e in rows:
            m, vr = e["metrics"], e.get("vs_real") or {}
            lines.append(f"| {ARM_TITLES[e['arm']]} | {len(e['seeds'])} | {_ms(m['miou_incl_background'])} | {_ms(m['mean_dice_present'])} | "
                         f"{_ms(m['competition_dice'])} | {_diff(vr.get('miou_incl_background'))} | {_diff(vr.get('mean_dice_present'))} | "
                         f"{_diff(vr.get('competition_dice'))} | {_ms(e['train_seconds'], 0)} |")
        classes = list(rows[0]["dice_present_per_class"])
        lines += ["", "Dice on present images per class: " + "; ".join(
            f"{ARM_TITLES[e['arm']]}: " + ", ".join(f"{k} {_ms(e['dice_present_per_class'][k], 3)}" for k in classes) for e in rows), ""]
        for e in rows:
            rivals = {**(e.get("vs_copy_paste") or {}), **({"gan": e["vs_gan"]} if "vs_gan" in e else {}),
                      **{c: e[f"vs_{control_key(c)}"] for c in CONTROLS.values() if f"vs_{control_key(c)}" in e}}
            for rival, vc in rivals.items():
                lines.append(f"- {ARM_TITLES[e['arm']]} vs {ARM_TITLES[rival]} (paired): mIoU {_diff(vc['miou_incl_background'])}, "
                             f"Dice present {_diff(vc['mean_dice_present'])}, competition {_diff(vc['competition_dice'])}")
        lines.append("")
    v = r["verdict"]
    lines += ["## Verdict", ""]
    for key, d in v["per_arm"].items():
        ahead = v.get("ahead_of_copy_paste", {}).get(key)
        lines.append(f"- {key}: " + ", ".join(f"{k.replace('_', ' ')}: {'yes' if val else 'no'}" for k, val in d.items())
                     + ("" if ahead is None or d["beats_copy_paste"] else f" (ahead of copy-paste on average: {'yes' if ahead else 'no'})"))
    goal = "MET" if v["goal_met"] else "NOT MET"
    lines += ["", f"**Goal (a GAN-based arm beats real-only by > 2 sd on mIoU and Dice present at 5% and 10%, keeps competition Dice, "
              f"beats copy-paste by > 2 sd on both, and the equal-compute real-only control of its schedule where the study has it): {goal}** (per fraction: {v['goal_met_at']}).", "",
              f"Best synthetic method by mean paired mIoU gain: **{r['best_method']}** ({r['best_method_why']}).", ""]
    if r["gan_metrics"]:
        lines += ["## The generators (held-out real defects of each fraction's validation subset)", "",
                  "| fraction | steps | masked L1 (Telea) | PSNR dB (Telea) | Fréchet (Telea) | HF energy gen/real (Telea) | fill diversity |",
                  "|---|---|---|---|---|---|---|"]
        for f, g in r["gan_metrics"].items():
            a, t = g.get("gan", {}), g.get("telea", {})
            hf = lambda d: f"{d['hf_energy_ratio']['all']:.2f}" if "hf_energy_ratio" in d else "n/a"  # noqa: E731
            lines.append(f"| {f} | {g.get('steps')} | {a.get('masked_l1', float('nan')):.4f} ({t.get('masked_l1', float('nan')):.4f}) | "
                         f"{a.get('masked_psnr_db', float('nan')):.2f} ({t.get('masked_psnr_db', float('nan')):.2f}) | "
                         f"{a.get('frechet_distance', float('nan')):.3f} ({t.get('frechet_distance', float('nan')):.3f}) | {hf(a)} ({hf(t)}) | "
                         f"{a.get('fill_diversity', 0.0):.4f} |")
        lines.append("")
    if r["pictures"]:
        lines += ["## Pictures", ""] + [f"![{title}]({rel})" for title, rel in r["pictures"].items()] + [""]
    return "\n".join(lines)
