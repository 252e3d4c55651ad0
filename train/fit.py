"""`train fit`: data -> trained, calibrated segmenter in a run folder.

Single process or under `torchrun` (`train.dist`). The parts, in order: `prepare_data`
(splits, subset, crop, normalisation, ModelInfo), `TrainState` (model, optimiser, the
cosine schedule, resume), `run_epoch` (one pass over this rank's share, synthetic crops
on top when configured), `record_epoch` (validation and checkpoints on rank 0),
`BudgetPlanner` (re-plans the epochs to fit a time budget), then `train.finish`
(calibrate the best and last epoch, keep the better, write results).
"""

from __future__ import annotations

import copy
import json
import logging
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

from inspect_edge.data import DataError, open_dataset, open_datasets
from inspect_edge.model_info import ModelInfo
from inspect_edge.postprocess import masks_from_logits
from inspect_edge.scoring import DiceAccumulator
from train.checkpoint import model_from_checkpoint, read_checkpoint, save_checkpoint
from train.config import FitConfig
from train.datasets import CropDataset, SyntheticTopUp, estimate_mean_std, seeded_subset_indices, split_train_val
from train.dist import Dist, epoch_order
from train.ema import ema_decay_at, ema_update
from train.finish import FinishedTraining, finish
from train.losses import BceDiceLoss
from train.model import UNetConfig, build_model
from train.predict import iter_dataset_logits

log = logging.getLogger("train.fit")


def round_up(n: int, m: int = 32) -> int:
    return -(-n // m) * m


def lr_factor(step: int, warmup: int, total: int) -> float:
    """Linear warm-up, then cosine decay to 1% of the base rate at `total` steps."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * progress))


def setup_logging(out: Path, main: bool) -> None:
    logger = logging.getLogger("train")
    logger.setLevel(logging.INFO)
    for h in list(logger.handlers):
        if getattr(h, "_inspect_edge_run", False):
            logger.removeHandler(h)
            h.close()
    if main:
        fh = logging.FileHandler(out / "train.log")
        fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        fh._inspect_edge_run = True
        logger.addHandler(fh)


def validate(model, val_ds, info: ModelInfo, batch_size: int, loss_fn) -> dict:
    acc = DiceAccumulator(info.num_classes)
    losses = []
    # Threshold 0.5 and a small minimum area (0.1% of the frame): speckle alone must not
    # make an all-empty early epoch look better than a model that has learnt defects.
    min_area = int(round(0.001 * info.input_height * info.input_width))
    thr, areas = (0.5,) * info.num_classes, (min_area,) * info.num_classes
    for sample, logits in iter_dataset_logits(model, val_ds, info, batch_size=batch_size):
        losses.append(loss_fn(torch.from_numpy(logits[None]), torch.from_numpy(sample.masks[None])).item())
        acc.update(masks_from_logits(logits, thr, areas), sample.masks)
    res = acc.result(info.classes)
    return {"val_loss": float(np.mean(losses)), "val_dice": float(res["competition_dice"])}


@dataclass
class FitData:
    train_ds: object
    val_ds: object
    how: str
    n_train_all: int
    crop: tuple[int, int]
    model_cfg: UNetConfig
    info: ModelInfo


def prepare_data(cfg: FitConfig, out: Path, d: Dist) -> FitData:
    """Open the data, split it, take the labelled subset, size the crop, estimate the
    normalisation and fill ModelInfo; rank 0 writes config, split and data problems."""
    ds = open_datasets(cfg.data)
    train_ds, val_ds, how = split_train_val(
        ds, train_split=cfg.split, val_split=cfg.val_split, val_fraction=cfg.val_fraction, seed=cfg.seed
    )
    n_train_all = len(train_ds)
    if cfg.labelled_fraction < 1.0:
        train_ds = train_ds.subset(seeded_subset_indices(len(train_ds), cfg.labelled_fraction, cfg.seed).tolist())
    classes = tuple(ds.classes)
    frame_h, frame_w = val_ds[0].image.shape
    train_h, train_w = train_ds[0].image.shape
    crop = (min(cfg.crop_height or train_h, train_h), min(cfg.crop_width, train_w))
    mean, std = estimate_mean_std(train_ds)
    model_cfg = UNetConfig(size=cfg.size, in_channels=cfg.in_channels, num_classes=len(classes))
    info = ModelInfo(
        classes=classes, input_height=round_up(frame_h), input_width=round_up(frame_w), input_channels=cfg.in_channels,
        mean=mean, std=std, model_version=time.strftime("%Y.%m.%d-%H%M%S"), source_run=str(out.resolve()), arch=model_cfg.arch,
    )
    if d.main:
        cfg.save(out / "config.json")
        # What the reader skipped stays with the run, not only in a scrolled-away log.
        (out / "data_problems.json").write_text(json.dumps(
            {"data": cfg.data, "count": len(ds.problems), "first": [str(p) for p in ds.problems[:20]]}, indent=1) + "\n")
        (out / "split.json").write_text(
            json.dumps({"how": how, "train_ids": train_ds.ids, "val_ids": val_ds.ids}, indent=1) + "\n"
        )
        log.info("data %s (%s): %d train images (of %d), %d validation, classes %s, crop %s, mean %.4f std %.4f",
                 cfg.data, how, len(train_ds), n_train_all, len(val_ds), list(classes), crop, mean, std)
    return FitData(train_ds, val_ds, how, n_train_all, crop, model_cfg, info)


@dataclass
class TrainState:
    """Everything a checkpoint restores: weights, optimiser, schedule, best score, history.

    With an EMA, a checkpoint's `state_dict` is the averaged model (what is validated,
    calibrated, exported and shipped) and `train_state_dict` the weights being trained."""

    model: torch.nn.Module
    opt: torch.optim.Optimizer
    sched: dict  # step, warmup, total, planned_epochs
    ema: torch.nn.Module | None = None
    start_epoch: int = 0
    best_score: float = -1.0
    history: list[dict] = field(default_factory=list)
    elapsed_before: float = 0.0

    @classmethod
    def new(cls, cfg: FitConfig, data: FitData, device, steps_per_epoch: int) -> TrainState:
        model = build_model(data.model_cfg).to(device)
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        sched = {"step": 0, "warmup": max(1, min(steps_per_epoch, round(cfg.warmup_fraction * cfg.epochs * steps_per_epoch))),
                 "total": cfg.epochs * steps_per_epoch, "planned_epochs": cfg.epochs}
        return cls(model, opt, sched, ema=copy.deepcopy(model).eval() if cfg.ema_decay else None)

    @property
    def inference_model(self) -> torch.nn.Module:
        return self.ema if self.ema is not None else self.model

    def update_ema(self, cfg: FitConfig) -> None:
        if self.ema is not None:
            ema_update(self.ema, self.model, ema_decay_at(self.sched["step"], cfg.ema_decay))

    def load_weights(self, cfg: FitConfig, data: FitData, d: Dist) -> None:
        """Start from another run's weights (pre-train then fine-tune); optimiser and schedule stay new."""
        wpath = Path(cfg.init_weights)
        wpath = wpath / "last.pt" if wpath.is_dir() else wpath
        ck = read_checkpoint(wpath)
        source = model_from_checkpoint(ck, str(wpath))
        theirs, ours = ck["model_config"], data.model_cfg.to_dict()
        if theirs != ours:
            raise ValueError(f"{wpath}: its model {theirs} differs from this fit's {ours}; init_weights needs the same architecture")
        self.model.load_state_dict(source.state_dict())
        if self.ema is not None:
            self.ema.load_state_dict(source.state_dict())
        if d.main:
            log.info("weights initialised from %s", wpath)

    def resume(self, cfg: FitConfig, out: Path, d: Dist, steps_per_epoch: int) -> None:
        rpath = Path(cfg.resume)
        rpath = rpath / "last.pt" if rpath.is_dir() else rpath
        ck = read_checkpoint(rpath)
        saved = model_from_checkpoint(ck, str(rpath)).state_dict()
        self.model.load_state_dict(ck.get("train_state_dict", saved))
        if self.ema is not None:
            self.ema.load_state_dict(saved)  # a run that had no EMA starts one from its weights
        self.opt.load_state_dict(ck["optimizer"])
        self.sched = dict(ck["scheduler"])
        self.start_epoch, self.best_score = int(ck["epoch"]) + 1, float(ck["best_score"])
        self.history, self.elapsed_before = list(ck.get("history", [])), float(ck.get("elapsed_s", 0.0))
        if not cfg.time_budget_min and cfg.epochs != self.sched["planned_epochs"]:
            # An explicit --epochs on resume re-plans the cosine over the new length.
            self.sched["planned_epochs"], self.sched["total"] = cfg.epochs, cfg.epochs * steps_per_epoch
        if self.start_epoch >= self.sched["planned_epochs"]:
            raise ValueError(f"{rpath}: already trained {self.start_epoch} epoch(s); pass a larger --epochs to continue")
        best_src = rpath.parent / "best.pt"
        if d.main and best_src.is_file() and not (out / "best.pt").exists():
            shutil.copyfile(best_src, out / "best.pt")  # keep the best so far when resuming into a new folder
        if d.main:
            log.info("resumed from %s at epoch %d (best %.4f)", rpath, self.start_epoch, self.best_score)

    def checkpoint(self, cfg: FitConfig, data: FitData, epoch: int, t0: float) -> dict:
        record = {"model_config": data.model_cfg.to_dict(), "state_dict": self.inference_model.state_dict(),
                  "model_info": data.info.to_dict(), "epoch": epoch, "best_score": self.best_score, "optimizer": self.opt.state_dict(),
                  "scheduler": dict(self.sched), "history": self.history, "fit_config": cfg.to_dict(),
                  "elapsed_s": time.monotonic() - t0}
        if self.ema is not None:
            record["train_state_dict"] = self.model.state_dict()
        return record


class BudgetPlanner:
    """Time budget: after every epoch, re-plan how many epochs fit in what is left, from the
    mean epoch time so far (the CPU is shared, so speed drifts); the cosine follows the
    plan, so the rate still decays to its floor at the end. Rank 0 decides for all."""

    def __init__(self, cfg: FitConfig, start_epoch: int, t_session: float, t0: float) -> None:
        self.budget_s = cfg.time_budget_min * 60 if cfg.time_budget_min else None
        self.max_epochs, self.start_epoch, self.t_session, self.t0 = cfg.epochs, start_epoch, t_session, t0

    def plan(self, epoch: int, planned_now: int, d: Dist) -> int:
        planned = float(planned_now)
        if d.main and self.budget_s:
            now = time.monotonic()
            per_epoch = (now - self.t_session) / (epoch + 1 - self.start_epoch)  # includes validation
            extra = int(max(0.0, self.budget_s - (now - self.t0)) // max(per_epoch, 1e-6))
            planned = float(max(epoch + 1, min(self.max_epochs, epoch + 1 + extra)))
        return int(d.broadcast_floats([planned])[0])


def make_top_up(cfg: FitConfig, data: FitData, d: Dist) -> SyntheticTopUp | None:
    if not (cfg.synthetic_data and cfg.synthetic_per_batch):
        return None
    mean, std = data.info.mean, data.info.std
    syn_crops = CropDataset(open_dataset(cfg.synthetic_data), data.crop, mean, std, seed=cfg.seed + 1, flip=cfg.flip,
                            jitter=cfg.jitter, in_channels=cfg.in_channels, defect_crop_prob=cfg.defect_crop_prob)
    if d.main:
        log.info("synthetic pairs %s: %d images, %d on top of each batch of %d real", cfg.synthetic_data,
                 len(syn_crops), cfg.synthetic_per_batch, cfg.batch_size)
    return SyntheticTopUp(syn_crops, cfg.synthetic_per_batch, cfg.seed + d.rank)


@dataclass
class EpochRunner:
    """One pass over this rank's share of the real images (plus synthetic crops on top)."""

    cfg: FitConfig
    d: Dist
    net: torch.nn.Module
    train_set: CropDataset
    top_up: SyntheticTopUp | None
    per_rank: int
    steps_per_epoch: int
    loss_fn: torch.nn.Module

    def __post_init__(self) -> None:
        self.use_amp = self.cfg.amp and self.d.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp)

    def run(self, state: TrainState, epoch: int, on_step) -> list[float]:
        cfg, d, sched, opt = self.cfg, self.d, state.sched, state.opt
        t_epoch = time.monotonic()
        self.train_set.set_epoch(epoch)
        loader = DataLoader(self.train_set, batch_size=cfg.batch_size,
                            sampler=epoch_order(len(self.train_set), cfg.seed, epoch, d.rank, d.world),
                            num_workers=cfg.workers, drop_last=self.per_rank >= cfg.batch_size)
        self.net.train()
        losses = []
        for x, y in loader:
            if self.top_up is not None:
                xs, ys = self.top_up.batch(epoch, len(losses))
                x, y = torch.cat([x, xs]), torch.cat([y, ys])
            for g in opt.param_groups:
                g["lr"] = cfg.lr * lr_factor(sched["step"], sched["warmup"], sched["total"])
            x, y = x.to(d.device, non_blocking=True), y.to(d.device, non_blocking=True)
            with torch.autocast(device_type=d.device.type, dtype=torch.float16, enabled=self.use_amp):
                loss = self.loss_fn(self.net(x), y)
            opt.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(opt)
            self.scaler.update()
            state.update_ema(cfg)
            sched["step"] += 1
            losses.append(loss.item())
            if d.main and len(losses) % max(1, self.steps_per_epoch // 4) == 0 and len(losses) < self.steps_per_epoch:
                log.info("epoch %d step %d/%d loss %.4f (%.0fs)", epoch + 1, len(losses), self.steps_per_epoch,
                         np.mean(losses), time.monotonic() - t_epoch)
            on_step(epoch, float(np.mean(losses)))
        return losses


def record_epoch(cfg: FitConfig, out: Path, data: FitData, state: TrainState, epoch: int, losses: list[float],
                 t_epoch: float, t0: float, loss_fn) -> dict:
    """Rank 0: validate when due, remember the best, write best.pt / last.pt, log."""
    record = {"epoch": epoch + 1, "train_loss": float(np.mean(losses)), "lr": state.opt.param_groups[0]["lr"]}
    is_last = epoch + 1 >= state.sched["planned_epochs"]
    if (epoch + 1) % cfg.val_every == 0 or is_last:
        record.update(validate(state.inference_model, data.val_ds, data.info, cfg.batch_size, loss_fn))
        if state.ema is not None and is_last:  # what the average bought, on the same images
            record["val_dice_without_ema"] = validate(state.model, data.val_ds, data.info, cfg.batch_size, loss_fn)["val_dice"]
        if record["val_dice"] > state.best_score:
            state.best_score = record["val_dice"]
            record["best"] = True
    record["epoch_s"] = round(time.monotonic() - t_epoch, 2)
    state.history.append(record)
    if record.get("best"):
        save_checkpoint(out / "best.pt", **state.checkpoint(cfg, data, epoch, t0))
    save_checkpoint(out / "last.pt", **state.checkpoint(cfg, data, epoch, t0))
    log.info("epoch %d/%d train_loss %.4f val_loss %s val_dice %s lr %.2e (%.1fs)", epoch + 1, state.sched["planned_epochs"],
             record["train_loss"], _fmt(record.get("val_loss")), _fmt(record.get("val_dice")), record["lr"], record["epoch_s"])
    return record


def fit(cfg: FitConfig, progress: bool = True) -> dict:
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    d = Dist(cfg.device)
    out = Path(cfg.out)
    if d.main:
        out.mkdir(parents=True, exist_ok=True)
    if d.world > 1:
        dist.barrier()
    setup_logging(out, d.main)
    torch.manual_seed(cfg.seed)
    if d.device.type == "cpu":
        torch.use_deterministic_algorithms(True, warn_only=True)

    try:
        data = prepare_data(cfg, out, d)
    except DataError as e:
        log.error("cannot train: %s", e)  # train.log says why the run folder is empty
        raise
    per_rank = len(epoch_order(len(data.train_ds), cfg.seed, 0, d.rank, d.world))
    steps_per_epoch = max(1, per_rank // cfg.batch_size) if per_rank >= cfg.batch_size else 1
    state = TrainState.new(cfg, data, d.device, steps_per_epoch)
    train_set = CropDataset(data.train_ds, data.crop, data.info.mean, data.info.std, seed=cfg.seed, flip=cfg.flip,
                            jitter=cfg.jitter, in_channels=cfg.in_channels, defect_crop_prob=cfg.defect_crop_prob)
    top_up = make_top_up(cfg, data, d)
    if d.main:
        log.info("%d process(es) on %s, %d step(s) per epoch per process, batch %d", d.world, d.device, steps_per_epoch,
                 cfg.batch_size)
    if cfg.resume:
        state.resume(cfg, out, d, steps_per_epoch)
    elif cfg.init_weights:
        state.load_weights(cfg, data, d)

    net = state.model
    if d.world > 1:
        net = torch.nn.parallel.DistributedDataParallel(state.model, device_ids=[d.device.index] if d.device.type == "cuda" else None)
    if cfg.pos_weight is not None and len(cfg.pos_weight) != data.info.num_classes:
        raise ValueError(f"pos_weight has {len(cfg.pos_weight)} value(s); the data has {data.info.num_classes} classes "
                         f"({', '.join(data.info.classes)})")
    loss_fn = BceDiceLoss(pos_weight=tuple(cfg.pos_weight) if cfg.pos_weight else None,
                          weight_other_classes=cfg.weight_other_classes, lovasz_weight=cfg.lovasz_weight)
    runner = EpochRunner(cfg, d, net, train_set, top_up, per_rank, steps_per_epoch, loss_fn)
    t_session = time.monotonic()
    t0 = t_session - state.elapsed_before
    planner = BudgetPlanner(cfg, state.start_epoch, t_session, t0)
    stopped_by_budget = False

    sched = state.sched
    bar = _progress(progress and d.main)
    task = bar.add_task("fit", total=sched["planned_epochs"] * steps_per_epoch, completed=state.start_epoch * steps_per_epoch,
                        status="starting") if bar else None

    def on_step(epoch: int, mean_loss: float) -> None:
        if bar:
            bar.update(task, advance=1, status=f"epoch {epoch + 1}/{sched['planned_epochs']} loss {mean_loss:.4f}")

    epoch = state.start_epoch
    while epoch < sched["planned_epochs"]:
        t_epoch = time.monotonic()
        losses = runner.run(state, epoch, on_step)
        if d.main:
            record = record_epoch(cfg, out, data, state, epoch, losses, t_epoch, t0, loss_fn)
            if bar:
                bar.update(task, status=f"epoch {epoch + 1}/{sched['planned_epochs']} loss {record['train_loss']:.4f} "
                           f"val Dice {_fmt(record.get('val_dice'))} best {state.best_score:.4f}")
        planned = planner.plan(epoch, sched["planned_epochs"], d)
        if planned != sched["planned_epochs"]:
            stopped_by_budget = planned < cfg.epochs
            sched["planned_epochs"], sched["total"] = planned, planned * steps_per_epoch
            if d.main:
                log.info("time budget %.1f min: planning %d epoch(s)", cfg.time_budget_min, planned)
                if bar:
                    bar.update(task, total=planned * steps_per_epoch)
        epoch += 1
    if bar:
        bar.stop()
    train_s = time.monotonic() - t0
    result = {}
    if d.main:
        result = finish(FinishedTraining(cfg, out, data.model_cfg, data.info, data.val_ds, state.history, state.best_score,
                                         data.how, train_s, stopped_by_budget, len(data.train_ds), data.n_train_all))
    d.close()
    return result


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.4f}"


def _progress(enabled: bool):
    if not enabled:
        return None
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    bar = Progress(TextColumn("[bold]fit"), BarColumn(), TextColumn("{task.fields[status]}"), TimeElapsedColumn(),
                   TextColumn("left"), TimeRemainingColumn())
    bar.start()
    return bar
