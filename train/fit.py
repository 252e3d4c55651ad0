"""`train fit`: data -> trained, calibrated segmenter in a run folder.

Single process or under `torchrun` (DistributedDataParallel: gloo on the CPU,
NCCL on GPUs). Rank 0 alone validates, writes checkpoints and pictures; the
ranks agree on when to stop through a broadcast, so a time budget never leaves
one rank waiting for another.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

from inspect_edge.data import open_dataset
from inspect_edge.model_info import ModelInfo
from inspect_edge.postprocess import masks_from_logits
from inspect_edge.scoring import DiceAccumulator
from train.calibrate import calibrate
from train.checkpoint import model_from_checkpoint, read_checkpoint, save_checkpoint
from train.config import FitConfig
from train.datasets import CropDataset, SyntheticTopUp, estimate_mean_std, seeded_subset_indices, split_train_val
from train.losses import BceDiceLoss
from train.model import ModelConfig, build_model
from train.plots import plot_curves, plot_mask_grid
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


class Dist:
    """Who we are under torchrun (or a single process when WORLD_SIZE is unset)."""

    def __init__(self, device_arg: str) -> None:
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if device_arg == "auto":
            device_arg = "cuda" if torch.cuda.is_available() else "cpu"
        if device_arg == "cuda" and self.world > 1:
            device_arg = f"cuda:{local}"
        self.device = torch.device(device_arg)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        if self.world > 1 and not dist.is_initialized():
            dist.init_process_group(backend="nccl" if self.device.type == "cuda" else "gloo")

    @property
    def main(self) -> bool:
        return self.rank == 0

    def broadcast_floats(self, values: list[float]) -> list[float]:
        if self.world == 1:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=self.device if self.device.type == "cuda" else "cpu")
        dist.broadcast(t, src=0)
        return t.tolist()

    def close(self) -> None:
        if self.world > 1 and dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()


def epoch_order(n: int, seed: int, epoch: int, rank: int, world: int) -> list[int]:
    """This rank's shuffled share of the training set (equal length on every rank)."""
    perm = np.random.default_rng([seed, epoch, 7]).permutation(n)
    per_rank = max(1, n // world)
    return perm[rank::world][:per_rank].tolist()


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

    ds = open_dataset(cfg.data)
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
    model_cfg = ModelConfig(size=cfg.size, in_channels=cfg.in_channels, num_classes=len(classes))
    info = ModelInfo(
        classes=classes,
        input_height=round_up(frame_h),
        input_width=round_up(frame_w),
        input_channels=cfg.in_channels,
        mean=mean,
        std=std,
        model_version=time.strftime("%Y.%m.%d-%H%M%S"),
        source_run=str(out.resolve()),
        arch=model_cfg.arch,
    )
    if d.main:
        cfg.save(out / "config.json")
        (out / "split.json").write_text(
            json.dumps({"how": how, "train_ids": train_ds.ids, "val_ids": val_ds.ids}, indent=1) + "\n"
        )
        log.info("data %s (%s): %d train images (of %d), %d validation, classes %s, crop %s, mean %.4f std %.4f",
                 cfg.data, how, len(train_ds), n_train_all, len(val_ds), list(classes), crop, mean, std)

    model = build_model(model_cfg).to(d.device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    train_set = CropDataset(train_ds, crop, mean, std, seed=cfg.seed, flip=cfg.flip, jitter=cfg.jitter,
                            in_channels=cfg.in_channels, defect_crop_prob=cfg.defect_crop_prob)
    top_up = None
    if cfg.synthetic_data and cfg.synthetic_per_batch:
        syn_crops = CropDataset(open_dataset(cfg.synthetic_data), crop, mean, std, seed=cfg.seed + 1, flip=cfg.flip,
                                jitter=cfg.jitter, in_channels=cfg.in_channels, defect_crop_prob=cfg.defect_crop_prob)
        top_up = SyntheticTopUp(syn_crops, cfg.synthetic_per_batch, cfg.seed + d.rank)
        if d.main:
            log.info("synthetic pairs %s: %d images, %d on top of each batch of %d real", cfg.synthetic_data,
                     len(syn_crops), cfg.synthetic_per_batch, cfg.batch_size)
    per_rank = len(epoch_order(len(train_ds), cfg.seed, 0, d.rank, d.world))
    steps_per_epoch = max(1, per_rank // cfg.batch_size) if per_rank >= cfg.batch_size else 1
    sched = {"step": 0, "warmup": max(1, min(steps_per_epoch, round(cfg.warmup_fraction * cfg.epochs * steps_per_epoch))),
             "total": cfg.epochs * steps_per_epoch, "planned_epochs": cfg.epochs}
    start_epoch, best_score, history, elapsed_before = 0, -1.0, [], 0.0
    if d.main:
        log.info("%d process(es) on %s, %d step(s) per epoch per process, batch %d", d.world, d.device, steps_per_epoch,
                 cfg.batch_size)
    if cfg.resume:
        rpath = Path(cfg.resume)
        rpath = rpath / "last.pt" if rpath.is_dir() else rpath
        ck = read_checkpoint(rpath)
        model.load_state_dict(model_from_checkpoint(ck, str(rpath)).state_dict())
        opt.load_state_dict(ck["optimizer"])
        sched = dict(ck["scheduler"])
        start_epoch, best_score = int(ck["epoch"]) + 1, float(ck["best_score"])
        history, elapsed_before = list(ck.get("history", [])), float(ck.get("elapsed_s", 0.0))
        if not cfg.time_budget_min and cfg.epochs != sched["planned_epochs"]:
            # An explicit --epochs on resume re-plans the cosine over the new length.
            sched["planned_epochs"], sched["total"] = cfg.epochs, cfg.epochs * steps_per_epoch
        if start_epoch >= sched["planned_epochs"]:
            raise ValueError(f"{rpath}: already trained {start_epoch} epoch(s); pass a larger --epochs to continue")
        best_src = rpath.parent / "best.pt"
        if d.main and best_src.is_file() and not (out / "best.pt").exists():
            shutil.copyfile(best_src, out / "best.pt")  # keep the best so far when resuming into a new folder
        if d.main:
            log.info("resumed from %s at epoch %d (best %.4f)", rpath, start_epoch, best_score)

    net = model
    if d.world > 1:
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[d.device.index] if d.device.type == "cuda" else None)
    use_amp = cfg.amp and d.device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    loss_fn = BceDiceLoss()
    budget_s = cfg.time_budget_min * 60 if cfg.time_budget_min else None
    t_session = time.monotonic()
    t0 = t_session - elapsed_before
    stopped_by_budget = False

    def ckpt_fields(epoch: int) -> dict:
        return {"model_config": model_cfg.to_dict(), "state_dict": model.state_dict(), "model_info": info.to_dict(),
                "epoch": epoch, "best_score": best_score, "optimizer": opt.state_dict(), "scheduler": dict(sched),
                "history": history, "fit_config": cfg.to_dict(), "elapsed_s": time.monotonic() - t0}

    bar = _progress(progress and d.main)
    task = bar.add_task("fit", total=sched["planned_epochs"] * steps_per_epoch, completed=start_epoch * steps_per_epoch,
                        status="starting") if bar else None
    epoch = start_epoch
    while epoch < sched["planned_epochs"]:
        t_epoch = time.monotonic()
        train_set.set_epoch(epoch)
        loader = DataLoader(train_set, batch_size=cfg.batch_size, sampler=epoch_order(len(train_ds), cfg.seed, epoch, d.rank, d.world),
                            num_workers=cfg.workers, drop_last=per_rank >= cfg.batch_size)
        net.train()
        losses = []
        for x, y in loader:
            if top_up is not None:
                xs, ys = top_up.batch(epoch, len(losses))
                x, y = torch.cat([x, xs]), torch.cat([y, ys])
            for g in opt.param_groups:
                g["lr"] = cfg.lr * lr_factor(sched["step"], sched["warmup"], sched["total"])
            x, y = x.to(d.device, non_blocking=True), y.to(d.device, non_blocking=True)
            with torch.autocast(device_type=d.device.type, dtype=torch.float16, enabled=use_amp):
                loss = loss_fn(net(x), y)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            sched["step"] += 1
            losses.append(loss.item())
            if d.main and len(losses) % max(1, steps_per_epoch // 4) == 0 and len(losses) < steps_per_epoch:
                log.info("epoch %d step %d/%d loss %.4f (%.0fs)", epoch + 1, len(losses), steps_per_epoch,
                         np.mean(losses), time.monotonic() - t_epoch)
            if bar:
                bar.update(task, advance=1, status=f"epoch {epoch + 1}/{sched['planned_epochs']} loss {np.mean(losses):.4f}")
        record = {"epoch": epoch + 1, "train_loss": float(np.mean(losses)), "lr": opt.param_groups[0]["lr"]}
        is_last = epoch + 1 >= sched["planned_epochs"]
        if d.main:
            if (epoch + 1) % cfg.val_every == 0 or is_last:
                record.update(validate(model, val_ds, info, cfg.batch_size, loss_fn))
                if record["val_dice"] > best_score:
                    best_score = record["val_dice"]
                    record["best"] = True
            record["epoch_s"] = round(time.monotonic() - t_epoch, 2)
            history.append(record)
            if record.get("best"):
                save_checkpoint(out / "best.pt", **ckpt_fields(epoch))
            save_checkpoint(out / "last.pt", **ckpt_fields(epoch))
            if bar:
                bar.update(task, status=f"epoch {epoch + 1}/{sched['planned_epochs']} loss {record['train_loss']:.4f} "
                           f"val Dice {_fmt(record.get('val_dice'))} best {best_score:.4f}")
            log.info("epoch %d/%d train_loss %.4f val_loss %s val_dice %s lr %.2e (%.1fs)", epoch + 1, sched["planned_epochs"],
                     record["train_loss"], _fmt(record.get("val_loss")), _fmt(record.get("val_dice")), record["lr"], record["epoch_s"])
        # Time budget: after every epoch, re-plan how many epochs fit in what is left,
        # from the mean epoch time so far (the CPU is shared, so speed drifts); the
        # cosine follows the plan, so the rate still decays to its floor at the end.
        planned = float(sched["planned_epochs"])
        if d.main and budget_s:
            now = time.monotonic()
            per_epoch = (now - t_session) / (epoch + 1 - start_epoch)  # includes validation
            extra = int(max(0.0, budget_s - (now - t0)) // max(per_epoch, 1e-6))
            planned = float(max(epoch + 1, min(cfg.epochs, epoch + 1 + extra)))
        planned = d.broadcast_floats([planned])[0]
        if int(planned) != sched["planned_epochs"]:
            stopped_by_budget = int(planned) < cfg.epochs
            sched["planned_epochs"], sched["total"] = int(planned), int(planned) * steps_per_epoch
            if d.main:
                log.info("time budget %.1f min: planning %d epoch(s)", cfg.time_budget_min, int(planned))
                if bar:
                    bar.update(task, total=int(planned) * steps_per_epoch)
        epoch += 1
    if bar:
        bar.stop()
    train_s = time.monotonic() - t0
    result = {}
    if d.main:
        result = _finish(cfg, out, model_cfg, info, val_ds, history, best_score, how, train_s, stopped_by_budget,
                         len(train_ds), n_train_all)
    d.close()
    return result


def _finish(cfg, out, model_cfg, info, val_ds, history, best_score, how, train_s, stopped_by_budget, n_train, n_train_all) -> dict:
    """Calibrate the best and the last epoch on validation, keep whichever calibrates better,
    store its thresholds with it, write results and pictures.

    The per-epoch score uses one fixed threshold; calibration can change the ranking
    (a noisy late model often beats an all-empty early one once its speckle is removed).
    """
    if not (out / "best.pt").exists():  # no validation improved on -1: keep the last epoch
        ck = read_checkpoint(out / "last.pt")
        save_checkpoint(out / "best.pt", **{k: v for k, v in ck.items() if k not in ("format", "format_version")})
    candidates = {}
    for name in ("best.pt", "last.pt"):
        ck = read_checkpoint(out / name)
        if any(c[0]["epoch"] == ck["epoch"] for c in candidates.values()):
            continue
        model = model_from_checkpoint(ck, str(out / name))
        t = time.monotonic()
        pairs = ((logits, s.masks) for s, logits in iter_dataset_logits(model, val_ds, info, batch_size=cfg.batch_size))
        cal = calibrate(pairs, info.classes, (info.input_height, info.input_width))
        log.info("%s (epoch %d) calibrated on %d validation images in %.1fs: thresholds %s min_areas %s, "
                 "competition Dice %.4f (at 0.5/0: %.4f)", name, ck["epoch"] + 1, cal["n_images"], time.monotonic() - t,
                 cal["thresholds"], cal["min_areas"], cal["competition_dice"], cal["competition_dice_at_default"])
        candidates[name] = (ck, model, cal)
    chosen = max(candidates, key=lambda n: candidates[n][2]["competition_dice"])  # ties: best.pt (first)
    ck, model, cal = candidates[chosen]
    cal["chosen_checkpoint_epoch"] = int(ck["epoch"]) + 1
    cal["candidates"] = {f"epoch {c[0]['epoch'] + 1}": c[2]["competition_dice"] for c in candidates.values()}
    log.info("keeping epoch %d as best.pt (calibrated competition Dice %.4f)", ck["epoch"] + 1, cal["competition_dice"])
    info = info.replace(thresholds=tuple(cal["thresholds"]), min_areas=tuple(cal["min_areas"]))
    (out / "calibration.json").write_text(json.dumps(cal, indent=2) + "\n")
    info.save(out / "model_info.json")
    ck["model_info"] = info.to_dict()
    save_checkpoint(out / "best.pt", **{k: v for k, v in ck.items() if k not in ("format", "format_version")})

    plot_curves(history, out / "curves.png")
    rows = []
    presence = val_ds.class_presence()
    chosen = [i for i in range(len(val_ds)) if presence[i].any()][:6] or list(range(min(4, len(val_ds))))
    sub = val_ds.subset(chosen)
    for s, logits in iter_dataset_logits(model, sub, info, batch_size=cfg.batch_size):
        rows.append((s.image_id, s.image, s.masks, masks_from_logits(logits, info.thresholds, info.min_areas)))
    plot_mask_grid(rows, info.classes, out / "val_samples.png", f"{out.name}: validation, calibrated masks")

    metrics = {
        "data": str(cfg.data), "split": how, "n_train": n_train, "n_train_before_subset": n_train_all,
        "n_val": len(val_ds), "labelled_fraction": cfg.labelled_fraction, "arch": model_cfg.arch,
        "epochs_run": len(history), "best_epoch": int(ck["epoch"]) + 1, "best_val_dice_at_0.5_min_area_0.1pct": best_score,
        "val_competition_dice_calibrated": cal["competition_dice"], "calibration": cal["per_class"],
        "train_seconds": round(train_s, 1), "stopped_by_time_budget": stopped_by_budget,
        "final_train_loss": history[-1]["train_loss"] if history else None, "history": history,
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    log.info("run folder %s written (%.1f min of training)", out, train_s / 60)
    return metrics


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
