"""`train label-curve`: does synthesis make scarce labels go further? The study that decides.

For each labelled fraction (nested seeded subsets of the training split: the 2% images
are inside the 5% set) one GAN is fitted on that fraction's labelled images only, and
one set of synthetic pairs is drawn: the same shapes and placements for every painter
(copy-paste, GAN, the gan-blend hybrid). Then, for every segmenter seed and arm, one
segmenter is fitted and scored on the whole held-out split:

- every arm of a fraction makes the same number of passes over the same real images
  in the same order (same seed = same initialisation and real order); a synthetic arm
  adds `synthetic_per_batch` synthetic crops on top of each batch of real ones;
- thresholds and the kept epoch come from `train fit` on a seeded subset of the
  held-out split (the same for every arm); the scores are on all of it.

The pre-train arms get 400 more optimiser steps than real-only; `real-pretrain` spends
those steps on the labelled real images instead of synthetic pairs, so it tells a gain
from synthesis apart from a gain from training longer (two cosine cycles). Likewise the
mixed arms see `batch_size + synthetic_per_batch` crops per step against real-only's
`batch_size`; `real-equal-crops` fills those extra places with more real crops, so it
tells a gain from synthesis apart from a gain from bigger batches.

`gan-unlabelled` breaks the one-GAN-per-fraction rule on purpose: its generator also learns
from the fraction's *other* training images with their masks withheld (a share of each
batch, all-unknown class map; `GanConfig.unlabelled_data`), as many labelled pairs as the
plain GAN. It asks whether a generator that sees information the segmenter does not
(unlabelled steel, which a mill has in bulk) adds what a labelled-only one could not.

Every (fraction, arm, seed) cell is written to cells/ as it finishes and skipped on a
re-run, so the study can be stopped and resumed at any point; GANs and synthetic sets
are reused the same way. `label_curve_report` turns the cells into report.md/json and
pictures, also from a partial study.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

PRETRAIN = "-pretrain"  # arm suffix: pre-train on the synthetic pairs alone, then fine-tune on the real ones
NEG = "-neg"  # before PRETRAIN: the pre-train set also holds defect-free negatives (train/gan/erase.py)
NEG_ERASER = {"copy-paste": "telea", "gan-blend": "gan"}  # copy-paste has no generator: Telea is its eraser
REAL_PRETRAIN = "real" + PRETRAIN  # the control of the pre-train arms: as many pre-train steps, on the real images
REAL_EQUAL_CROPS = "real-equal-crops"  # the control of the mixed arms: as many crops per step, all real
GAN_UNLABELLED = "gan-unlabelled"  # painted by a GAN that also learned from the fraction's unlabelled images
CONTROLS = {"pretrain-finetune": REAL_PRETRAIN, "mix": REAL_EQUAL_CROPS}  # a synthetic arm's schedule -> its equal-compute control
ARMS = ("real", REAL_PRETRAIN, REAL_EQUAL_CROPS, "copy-paste", "gan", "gan-blend", GAN_UNLABELLED, "copy-paste" + PRETRAIN, "gan" + PRETRAIN, "gan-blend" + PRETRAIN,
        "copy-paste" + NEG + PRETRAIN, "gan-blend" + NEG + PRETRAIN)
_METHOD_TITLES = {"copy-paste": "copy-paste", "gan": "GAN", "gan-blend": "GAN-blend (hybrid)"}
ARM_TITLES = {"real": "real only", REAL_PRETRAIN: "real pre-train (same steps), real fine-tune",
              REAL_EQUAL_CROPS: "real only, as many crops per step as the mixed arms",
              **{m: f"real + {t}" for m, t in _METHOD_TITLES.items()},
              GAN_UNLABELLED: "real + GAN that also learned from the unlabelled images",
              **{m + PRETRAIN: f"{t} pre-train, real fine-tune" for m, t in _METHOD_TITLES.items()},
              "copy-paste" + NEG + PRETRAIN: "copy-paste + Telea-erased negatives pre-train, real fine-tune",
              "gan-blend" + NEG + PRETRAIN: "GAN-blend + GAN-erased negatives pre-train, real fine-tune"}


def arm_method(arm: str) -> str | None:
    """The painter an arm's synthetic pairs come from; None for the real-only arms."""
    return None if arm in ("real", REAL_PRETRAIN, REAL_EQUAL_CROPS) else arm.removesuffix(PRETRAIN).removesuffix(NEG)


def painter(method: str) -> str:
    """The synthesis method behind an arm's method: the unlabelled-data GAN paints like the GAN."""
    return "gan" if method == GAN_UNLABELLED else method


def arm_eraser(arm: str) -> str | None:
    """The eraser of an arm's defect-free negatives ("gan" or "telea"); None when it has none."""
    return NEG_ERASER[arm_method(arm)] if arm.removesuffix(PRETRAIN).endswith(NEG) else None


def arm_schedule(arm: str) -> str:
    return "pretrain-finetune" if arm.endswith(PRETRAIN) else "mix"


def is_gan_based(arm: str) -> bool:
    return arm_method(arm) in ("gan", "gan-blend", GAN_UNLABELLED) or arm_eraser(arm) == "gan"
CEILING = 1.0
log = logging.getLogger("train.label_curve")


@dataclass
class StudyConfig:
    data: str
    out: str
    fractions: tuple[float, ...] = (0.05, 0.10, 0.02)  # run in this order: the target fractions first
    arms: tuple[str, ...] = ARMS
    seeds: tuple[int, ...] = (0, 1, 2)
    ceiling: bool = True  # also real-only on every training image, the same seeds
    subset_seed: int = 0  # which images keep their labels (nested across fractions)
    size: str = "nano"
    real_steps: int = 800  # steps of `batch_size` real crops per cell: epochs = ceil(real_steps / steps per epoch)
    ceiling_epochs: int = 3
    batch_size: int = 8
    synthetic_per_batch: int = 4  # on top of batch_size real crops: 1/3 of each batch is synthetic
    pretrain_steps: int = 400  # -pretrain arms: steps of batch_size synthetic crops before the real fine-tune
    negatives: int = 100  # -neg arms: defect-free images added to the pre-train set (a quarter of it with count 300)
    count: int = 300  # synthetic pairs per fraction (per painter)
    max_defects_per_image: int = 2
    crop_height: int = 176
    crop_width: int = 176
    lr: float = 3e-3
    defect_crop_prob: float = 0.0
    fit_val_images: int = 150
    gan_minutes: float = 6.0
    gan_steps: int | None = None  # a fixed number of GAN steps instead of gan_minutes: the same GAN however loaded the CPU is
    gan_crop: int = 96
    gan_base: int = 12
    gan_batch_size: int = 8
    gan_eval_pairs: int = 256
    gan_options: dict = field(default_factory=dict)  # any other GanConfig field, e.g. {"ffl_weight": 0}
    unlabelled_share: float = 0.5  # gan-unlabelled: share of each GAN batch from the unlabelled images
    threads: int | None = 2
    device: str = "auto"

    def __post_init__(self) -> None:
        self.fractions, self.arms, self.seeds = tuple(self.fractions), tuple(self.arms), tuple(self.seeds)
        if self.negatives < 1:
            raise ValueError(f"negatives must be >= 1, got {self.negatives}")
        if not 0.0 < self.unlabelled_share < 1.0:
            raise ValueError(f"unlabelled_share must be in (0, 1), got {self.unlabelled_share}")
        bad = [a for a in self.arms if a not in ARMS]
        if bad:
            raise ValueError(f"unknown arm(s) {bad}; valid: {', '.join(ARMS)}")
        if "real" not in self.arms:
            raise ValueError("arms must include 'real': every difference is paired against it")
        if not self.fractions or any(not 0.0 < f < 1.0 for f in self.fractions):
            raise ValueError(f"fractions must be in (0, 1), got {list(self.fractions)}")
        if len(self.seeds) < 1 or self.real_steps < 1 or self.synthetic_per_batch < 1 or self.pretrain_steps < 1:
            raise ValueError("need at least one seed, real_steps >= 1, synthetic_per_batch >= 1 and pretrain_steps >= 1")

    def to_dict(self) -> dict:
        return asdict(self)


# Settings that only choose which cells a study has: a resumed study may add or drop cells
# with them. Every other setting changes what a cell means and must match to resume.
CELL_SELECTION = ("fractions", "arms", "seeds", "ceiling")


def fraction_tag(f: float) -> str:
    return f"f{f:.3f}"


def cell_path(out: Path, fraction: float, arm: str, seed: int) -> Path:
    return out / "cells" / fraction_tag(fraction) / arm / f"seed{seed}.json"


def nested_subsets(n: int, fractions, seed: int) -> dict[float, np.ndarray]:
    """Sorted index sets, one per fraction, each a prefix of one seeded permutation, so a
    smaller fraction's images are always inside a larger one's."""
    perm = np.random.default_rng([seed, 31337]).permutation(n)
    return {f: np.sort(perm[: max(1, int(round(n * f)))]) for f in fractions}


def plan_cells(cfg: StudyConfig) -> list[tuple[float, str, int]]:
    cells = [(f, arm, s) for f in cfg.fractions for s in cfg.seeds for arm in cfg.arms]
    if cfg.ceiling:
        cells += [(CEILING, "real", s) for s in cfg.seeds]
    return cells


class Study:
    def __init__(self, cfg: StudyConfig, console) -> None:
        from inspect_edge.data import open_dataset
        from train.datasets import split_train_val

        self.cfg, self.console, self.out = cfg, console, Path(cfg.out)
        self.out.mkdir(parents=True, exist_ok=True)
        ds = open_dataset(cfg.data)
        self.classes = tuple(ds.classes)
        self.train_ds, self.held_ds, self.how = split_train_val(ds, train_split=None, val_split="val", val_fraction=0.2, seed=0)
        self.subsets = nested_subsets(len(self.train_ds), cfg.fractions, cfg.subset_seed)
        self.subsets[CEILING] = np.arange(len(self.train_ds))
        rng = np.random.default_rng([cfg.subset_seed, 1])
        n_val = len(self.held_ds) if cfg.fit_val_images <= 0 else min(cfg.fit_val_images, len(self.held_ds))
        self.fit_val = self.held_ds.subset(np.sort(rng.permutation(len(self.held_ds))[:n_val]).tolist())

    # -- folders: real data per fraction, the scoring split, GANs and synthetic sets --
    def _data_folder(self, name: str, train, held) -> Path:
        """data/<name>: a mask folder of `train` and `held` images (either may be None), built once."""
        from train.gan.augment_and_fit import build_arm_folder

        folder = self.out / "data" / name
        if not (folder / "classes.txt").is_file():
            build_arm_folder(folder, train, held, [], self.classes)
        return folder

    def labelled(self, f: float):
        return self.train_ds.subset(self.subsets[f].tolist())

    def eval_folder(self) -> Path:
        return self._data_folder("eval", None, self.held_ds)

    def calibration_folder(self) -> Path:
        """Only the held-out images the fits calibrate on: the validation half of a pre-training data set."""
        return self._data_folder("fit-val", None, self.fit_val)

    def real_folder(self, f: float) -> Path:
        return self._data_folder(fraction_tag(f), self.labelled(f), self.fit_val)

    def real_pretrain_folder(self, f: float) -> Path:
        """The fraction's labelled images alone (no held-out split): the real control's pre-train set."""
        return self._data_folder(f"{fraction_tag(f)}-pretrain", self.labelled(f), None)

    def unlabelled_folder(self, f: float) -> Path:
        """data/<fraction>-unlabelled: links to the image files of the training images outside
        the fraction's labelled subset, and nothing else: no masks (never the held-out split)."""
        from train.gan.augment_and_fit import link_file

        folder = self.out / "data" / f"{fraction_tag(f)}-unlabelled"
        done = folder / "done.txt"
        if not done.is_file():
            rest = np.setdiff1d(np.arange(len(self.train_ds)), self.subsets[f])
            ids = self.train_ds.ids
            for i in rest:
                src = self.train_ds.image_path(int(i))
                link_file(src, folder / f"{ids[i]}{src.suffix}")
            done.write_text(f"{rest.size}\n")
        return folder

    def generator(self, f: float, unlabelled: bool = False) -> Path:
        """The fraction's GAN run; with `unlabelled`, the one that also learns from the fraction's
        unlabelled images (as many steps again per labelled pair as the share takes from them)."""
        from train.gan.fit_gan import GanConfig, fit_gan

        c = self.cfg
        run = self.out / ("gan-unlabelled" if unlabelled else "gan") / fraction_tag(f)
        if not (run / "gan_metrics.json").is_file():
            stretch = 1.0 / (1.0 - c.unlabelled_share) if unlabelled else 1.0
            steps = round(c.gan_steps * stretch) if c.gan_steps else None
            length = f"{steps} steps" if steps else f"{c.gan_minutes * stretch:g} min"
            extra = {"unlabelled_data": str(self.unlabelled_folder(f)), "unlabelled_share": c.unlabelled_share} if unlabelled else {}
            self.console.print(f"[bold]GAN[/] for fraction {f:g} ({len(self.subsets[f])} labelled images"
                               + (", and the unlabelled rest" if unlabelled else "") + f"), {length}")
            fit_gan(GanConfig(data=str(self.real_folder(f)), out=str(run), crop=c.gan_crop, base=c.gan_base,
                              batch_size=c.gan_batch_size, steps=steps or 10**7,
                              time_budget_min=None if steps else c.gan_minutes * stretch, eval_pairs=c.gan_eval_pairs,
                              seed=c.subset_seed, threads=c.threads, device=c.device, resume=True, **c.gan_options, **extra),
                    self.console)
        return run

    def _made_once(self, f: float, name: str, painted: bool, make, unlabelled_gan: bool = False) -> Path:
        """synthetic/<fraction>/<name>: `make(labelled, generator, crop)` on that fraction's labelled
        images (generator None unless `painted`), written once and reused by every arm and re-run."""
        folder = self.out / "synthetic" / fraction_tag(f) / name
        if (folder / "manifest.json").is_file():
            return folder
        from train.gan.fit_gan import load_generator
        from train.gan.shape_bank import load_labelled
        from train.gan.synthesize import write_dataset

        generator, crop = None, self.cfg.gan_crop
        if painted:
            generator, meta = load_generator(self.generator(f, unlabelled_gan))
            crop = int(meta["crop"])
        labelled = load_labelled(self.labelled(f))
        t = time.monotonic()
        items = make(labelled, generator, crop)
        write_dataset(folder, items, self.classes, "mask-folder", extra_manifest={"fraction": f, "seconds": round(time.monotonic() - t, 1)})
        return folder

    def synthetic_folder(self, f: float, method: str) -> Path:
        from train.gan.shape_bank import ShapeBank
        from train.gan.synthesize import PAINTED, SynthConfig, synthesize_samples

        c, how = self.cfg, painter(method)
        return self._made_once(f, method, how in PAINTED, lambda labelled, generator, crop: synthesize_samples(
            labelled, ShapeBank.from_images(labelled, len(self.classes)),
            SynthConfig(count=c.count, method=how, seed=c.subset_seed, crop=crop, max_defects_per_image=c.max_defects_per_image),
            self.classes, generator), unlabelled_gan=method == GAN_UNLABELLED)

    def negatives_folder(self, f: float, eraser: str) -> Path:
        from train.gan.erase import EraseConfig, erase_defects

        c = self.cfg
        return self._made_once(f, f"erase-{eraser}", eraser == "gan", lambda labelled, generator, crop: erase_defects(
            labelled, EraseConfig(count=c.negatives, eraser=eraser, seed=c.subset_seed, crop=crop), len(self.classes), generator))

    # -- one cell --
    def batch_size(self, arm: str) -> int:
        """Real crops per step: the equal-crops control fills the mixed arms' synthetic places with real ones."""
        return self.cfg.batch_size + (self.cfg.synthetic_per_batch if arm == REAL_EQUAL_CROPS else 0)

    def steps_per_epoch(self, f: float, arm: str = "real") -> int:
        return max(1, len(self.subsets[f]) // self.batch_size(arm))

    def epochs(self, f: float, arm: str = "real") -> int:
        if f == CEILING:
            return self.cfg.ceiling_epochs
        return max(1, math.ceil(self.cfg.real_steps / self.steps_per_epoch(f, arm)))

    def pretrain(self, f: float, arm: str, seed: int, run: Path) -> tuple[Path, float]:
        """Fit on the synthetic pairs alone (calibrated on the same held-out images); returns the
        run and its training seconds. As many synthetic crops as a mixed arm sees in all."""
        from train.gan.augment_and_fit import pretrain_on_synthetic

        c = self.cfg
        if arm == REAL_PRETRAIN:
            synthetic, n = [self.real_pretrain_folder(f)], len(self.subsets[f])
        else:
            synthetic, n = [self.synthetic_folder(f, arm_method(arm))], c.count
        if arm_eraser(arm):
            synthetic, n = synthetic + [self.negatives_folder(f, arm_eraser(arm))], n + c.negatives
        seconds = pretrain_on_synthetic(
            synthetic, self.calibration_folder(), run, c.pretrain_steps, n,
            progress=False, size=c.size, batch_size=c.batch_size, crop_height=c.crop_height, crop_width=c.crop_width,
            lr=c.lr, seed=seed, threads=c.threads, device=c.device, defect_crop_prob=c.defect_crop_prob)
        return run, seconds

    def run_cell(self, f: float, arm: str, seed: int) -> dict:
        from train.config import FitConfig
        from train.evaluate import evaluate
        from train.fit import fit

        c = self.cfg
        run = self.out / "runs" / fraction_tag(f) / arm / f"seed{seed}"
        method, schedule = arm_method(arm), arm_schedule(arm)
        mixed = method is not None and schedule == "mix"
        syn = self.synthetic_folder(f, method) if mixed else None
        init, pre_seconds = (None, 0.0)
        if arm != "real" and schedule == "pretrain-finetune":
            init, pre_seconds = self.pretrain(f, arm, seed, run / "pretrain")
        epochs = self.epochs(f, arm)
        fm = fit(FitConfig(
            data=str(self.real_folder(f)), out=str(run), size=c.size, epochs=epochs, batch_size=self.batch_size(arm),
            crop_height=c.crop_height, crop_width=c.crop_width, lr=c.lr, seed=seed, threads=c.threads, device=c.device,
            defect_crop_prob=c.defect_crop_prob, val_every=epochs, init_weights=str(init) if init else None,
            synthetic_data=str(syn) if syn else None, synthetic_per_batch=c.synthetic_per_batch if syn else 0,
        ), progress=False)
        ev = evaluate(run, self.eval_folder(), "val", out=run, timing_images=1)
        keys = ("competition_dice", "per_class_dice", "per_class_dice_present", "mean_dice_present", "per_class_iou",
                "mean_iou", "background_iou", "miou_incl_background", "per_class_dice_pixels", "n_images")
        return {
            "fraction": f, "arm": arm, "seed": seed, "schedule": "real" if arm == "real" else schedule,
            "real_images": len(self.subsets[f]), "synthetic_images": 0 if method is None else self.cfg.count,
            "negative_images": self.cfg.negatives if arm_eraser(arm) else 0, "epochs": epochs,
            "real_steps": epochs * self.steps_per_epoch(f, arm), "real_crops_per_step": self.batch_size(arm),
            "synthetic_share_of_batch": c.synthetic_per_batch / (c.batch_size + c.synthetic_per_batch) if mixed else 0.0,
            "pretrain_seconds": pre_seconds, "train_seconds": fm["train_seconds"] + pre_seconds,
            "run": str(run.relative_to(self.out)), "metrics": {k: ev[k] for k in keys},
        }


# The training protocol every cell shares: a report made with other values holds cells that
# mean something else (e.g. 800 instead of 2000 real steps), so reusing them is refused. The
# GAN's settings are not here: a generator differs between machines even with the same ones.
PROTOCOL = ("subset_seed", "size", "real_steps", "batch_size", "crop_height", "crop_width", "lr", "defect_crop_prob",
            "fit_val_images", "ceiling_epochs", "count", "synthetic_per_batch", "pretrain_steps", "max_defects_per_image",
            "negatives")


def reuse_cells(out: Path, reports: list[Path], cells: list[tuple[float, str, int]], cfg: StudyConfig | None = None) -> int:
    """Put the cells a committed report.json holds (its `cells` list) into out/cells/ for the
    planned (fraction, arm, seed) cells that have none yet, so a study resumes on a machine
    where its run folder is gone; returns how many were written. A report whose protocol
    (`PROTOCOL`, where it records the setting) differs from `cfg`'s is refused."""
    planned, n = set(cells), 0
    mine = json.loads(json.dumps(cfg.to_dict())) if cfg else {}
    for report in reports:
        r = json.loads(Path(report).read_text())
        theirs = r.get("config") if isinstance(r.get("config"), dict) else {}
        differ = [f"{k} {theirs[k]} (here {mine[k]})" for k in PROTOCOL if k in theirs and k in mine and theirs[k] != mine[k]]
        if differ:
            raise ValueError(f"{report}: its cells were made with other settings: {', '.join(differ)}; not reused")
        for c in r["cells"]:
            path = cell_path(out, c["fraction"], c["arm"], c["seed"])
            if (c["fraction"], c["arm"], c["seed"]) in planned and not path.is_file():
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(json.dumps(c, indent=2) + "\n")
                n += 1
    return n


def run_study(cfg: StudyConfig, console=None, reuse: list[Path] = ()) -> dict:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from train.gan.label_curve_report import write_study_report

    console = console or Console()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    cfg_path = out / "study_config.json"
    if cfg_path.is_file():
        # A setting added since the study started counts as its default there.
        defaults = json.loads(json.dumps(StudyConfig(data=cfg.data, out=cfg.out).to_dict()))
        old, new = {**defaults, **json.loads(cfg_path.read_text())}, json.loads(json.dumps(cfg.to_dict()))
        changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k) and k not in CELL_SELECTION)
        if changed:
            raise ValueError(f"{cfg_path}: this study was started with other settings ({', '.join(changed)}); "
                             "resume with the same flags or use a new --out (fractions, arms, seeds and the ceiling may change)")
    cfg_path.write_text(json.dumps(cfg.to_dict(), indent=2, sort_keys=True) + "\n")
    study = Study(cfg, console)
    cells = plan_cells(cfg)
    if reuse:
        console.print(f"reused {reuse_cells(out, list(reuse), cells, cfg)} cell(s) from {', '.join(map(str, reuse))}")
    todo = [c for c in cells if not cell_path(out, *c).is_file()]
    console.print(f"[bold]label-curve[/]: {len(cells)} cells, {len(cells) - len(todo)} already done; "
                  f"{len(study.train_ds)} training images, scored on {len(study.held_ds)} held-out ({study.how})")
    columns = [TextColumn("[bold]study"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[cell]}"),
               TimeElapsedColumn(), TimeRemainingColumn()]
    with Progress(*columns, console=console) as bar:
        task = bar.add_task("cells", total=len(cells), completed=len(cells) - len(todo), cell="")
        for f, arm, seed in todo:
            bar.update(task, cell=f"fraction {f:g} {arm} seed {seed}")
            t = time.monotonic()
            result = study.run_cell(f, arm, seed)
            result["cell_seconds"] = round(time.monotonic() - t, 1)
            path = cell_path(out, f, arm, seed)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(result, indent=2) + "\n")
            tmp.replace(path)  # a cell is either whole or absent: a re-run never reads half of one
            m = result["metrics"]
            console.print(f"fraction {f:g} {arm:10s} seed {seed}: mIoU(incl. bg) {m['miou_incl_background']:.4f} "
                          f"Dice(present) {m['mean_dice_present']:.4f} competition {m['competition_dice']:.4f} "
                          f"({result['train_seconds']:.0f}s training)")
            bar.advance(task)
    return write_study_report(out)
