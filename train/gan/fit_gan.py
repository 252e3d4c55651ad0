"""`train gan`: fit the mask-conditioned inpainting GAN on the labelled data.

Run folder: config.json, gan_checkpoint.pt (everything needed to resume), generator.pt
(the EMA generator: what synthesis uses), samples/step_*.png (input | hole + class map |
generated | real on fixed held-out pairs), history.json, gan_metrics.json.
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from train.config import strict_from_dict
from train.ema import ema_decay_at, ema_update
from train.gan.discriminator import PatchDiscriminator
from train.gan.generator import GeneratorConfig, InpaintGenerator, composite
from train.gan.losses import d_adversarial, feature_matching, focal_frequency, g_adversarial, masked_l1, mode_seeking, r1_penalty
from train.gan.pairs import Pair, PairConfig, PairSampler, UnlabelledSampler, to_tensors, to_uint8
from train.gan.quality import FeatureNet, fill_diversity, measure
from train.gan.report import gan_sample_grid
from train.gan.shape_bank import load_labelled

GENERATOR_FORMAT = "inspect-edge-gan-generator"


@dataclass
class GanConfig:
    data: str | list[str]  # one data set folder, or several merged (same classes)
    out: str
    crop: int = 128
    batch_size: int = 8
    steps: int = 3000
    time_budget_min: float | None = None  # stops early (and still saves and measures) when spent
    lr_g: float = 5e-4
    lr_d: float = 5e-4
    base: int = 16
    ffc_blocks: int = 4
    noise_channels: int = 4  # 0: one mask gives one fill (the pre-study generator)
    ffl_weight: float = 100.0  # focal frequency loss on the hole (texture); 0 turns it off
    ms_weight: float = 0.1  # mode-seeking diversity term; needs noise_channels > 0
    d_base: int = 32
    d_spectral_norm: bool = False  # True: the pre-study discriminator (its logits stayed near 0 on a CPU budget)
    l1_weight: float = 10.0
    fm_weight: float = 5.0
    adv_weight: float = 1.0
    r1_gamma: float = 1.0
    r1_every: int = 8  # lazy regularisation: the penalty every N discriminator steps, scaled by N
    ema_decay: float = 0.999
    defect_share: float = 0.7
    seed: int = 0
    labelled_fraction: float = 1.0
    split: str | None = None
    val_split: str = "val"
    val_fraction: float = 0.2
    sample_every: int = 250
    checkpoint_every: int = 250
    eval_pairs: int = 256
    measure_at_min: tuple[float, ...] = ()  # also measure the EMA generator at these training minutes (quality_curve.json)
    # Images whose masks are never read: a share of each batch is drawn from them with an
    # all-unknown class map, so the generator learns texture on more than the labelled images.
    unlabelled_data: str | None = None
    unlabelled_share: float = 0.5
    feature_net: str = "random"  # random | segmenter
    segmenter_run: str | None = None
    resume: bool = False
    threads: int | None = None
    device: str = "auto"

    def __post_init__(self) -> None:
        if self.crop < 32 or self.crop % 8:
            raise ValueError(f"crop must be a multiple of 8 and >= 32, got {self.crop}")
        if not 0.0 < self.labelled_fraction <= 1.0:
            raise ValueError(f"labelled_fraction must be in (0, 1], got {self.labelled_fraction}")
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError("steps and batch_size must be >= 1")
        if self.feature_net == "segmenter" and not self.segmenter_run:
            raise ValueError("feature_net 'segmenter' needs segmenter_run")
        if not 0.0 < self.unlabelled_share < 1.0:
            raise ValueError(f"unlabelled_share must be in (0, 1), got {self.unlabelled_share}")
        if self.ms_weight > 0 and (self.noise_channels < 1 or self.batch_size < 2):
            raise ValueError("ms_weight > 0 needs noise_channels >= 1 and batch_size >= 2 (pairs are drawn twice)")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> GanConfig:
        return strict_from_dict(cls, d, "gan config")


def labelled_split(ds, *, seed: int, labelled_fraction: float, split=None, val_split="val", val_fraction=0.2):
    """(labelled training view, held-out view, how): the same train/val split and the same
    seeded labelled subset as `train fit --labelled-fraction`, so every stage agrees on
    which images have labels."""
    from train.datasets import seeded_subset_indices, split_train_val

    train_ds, held_ds, how = split_train_val(ds, train_split=split, val_split=val_split, val_fraction=val_fraction, seed=seed)
    if labelled_fraction < 1.0:
        train_ds = train_ds.subset(seeded_subset_indices(len(train_ds), labelled_fraction, seed).tolist())
    return train_ds, held_ds, how


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@torch.no_grad()
def paint(generator: InpaintGenerator, pairs: list[Pair], num_classes: int, batch: int = 16, seed: int = 0) -> list[np.ndarray]:
    """Composited uint8 crops: generated inside each hole, the input's exact pixels outside.
    A stochastic generator draws its noise from `seed`, so a measurement repeats exactly."""
    generator.eval()
    device = next(generator.parameters()).device
    noise_rng = torch.Generator().manual_seed(seed)
    out = []
    for i in range(0, len(pairs), batch):
        chunk = pairs[i : i + batch]
        real, hole, cmap = (t.to(device) for t in to_tensors(chunk, num_classes))
        gen = to_uint8(generator(real * (1 - hole), hole, cmap, generator.noise_like(hole, noise_rng)))
        for p, g in zip(chunk, gen):
            out.append(np.where(p.hole, g, p.image))
    return out


def save_generator(path: Path, generator: InpaintGenerator, classes, crop: int, step: int) -> None:
    record = {
        "format": GENERATOR_FORMAT,
        "generator_config": generator.cfg.to_dict(),
        "state_dict": generator.state_dict(),
        "classes": list(classes),
        "crop": crop,
        "step": step,
    }
    tmp = Path(path).with_suffix(".tmp")
    torch.save(record, tmp)
    tmp.replace(path)


def load_generator(path: str | Path) -> tuple[InpaintGenerator, dict]:
    """(EMA generator in eval mode, its record without weights) from a run folder or generator.pt."""
    p = Path(path)
    if p.is_dir():
        p = p / "generator.pt"
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no generator (run `train gan` first)")
    record = torch.load(p, map_location="cpu", weights_only=True)
    if not isinstance(record, dict) or record.get("format") != GENERATOR_FORMAT:
        raise ValueError(f"{p}: not an inspect-edge GAN generator (no format={GENERATOR_FORMAT!r} tag)")
    g = InpaintGenerator(GeneratorConfig(**record["generator_config"]))
    g.load_state_dict(record["state_dict"])
    meta = {k: v for k, v in record.items() if k != "state_dict"}
    return g.eval(), meta


def held_out_pairs(held_images, num_classes: int, crop: int, seed: int, n: int) -> list[Pair]:
    """Fixed defect pairs from held-out images (seeded): the measuring stick for every step."""
    if not held_images:
        return []
    sampler = PairSampler(held_images, num_classes, PairConfig(crop=crop, dilate_range=(3, 3)))
    rng = np.random.default_rng(seed + 7919)
    kind = "defect" if sampler.components else "clean"
    return [sampler.sample(rng, kind) for _ in range(n)]


def load_held_out_pairs(held_ds, num_classes: int, crop: int, seed: int, n: int) -> list[Pair]:
    """`n` held-out pairs from up to `n` seeded held-out images (the same ones for the same seed)."""
    idx = np.sort(np.random.default_rng(seed).permutation(len(held_ds))[: max(n, 1)])
    return held_out_pairs(load_labelled(held_ds, idx), num_classes, crop, seed, n)


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")


def load_images_only(data: str, console=None) -> tuple[list[tuple[str, np.ndarray]], list[str]]:
    """((id, image) of every image under `data`, the problems skipped): `data` is a labelled
    data set folder (only its image files are read, never its masks) or any folder of plain
    images, as a mill has by the thousand. An image that cannot be decoded is skipped and reported."""
    from inspect_edge.data import open_dataset
    from inspect_edge.data.dataset import DataError, read_gray

    root = Path(data)
    try:
        ds = open_dataset(root)
    except DataError:
        ds = None
    if ds is not None:
        files, bad = [(image_id, ds.image_path(i)) for i, image_id in enumerate(ds.ids)], [str(p) for p in ds.problems]
    elif root.is_dir():
        files, bad = [(str(q.relative_to(root)), q) for q in sorted(root.rglob("*")) if q.suffix.lower() in IMAGE_SUFFIXES], []
    else:
        raise FileNotFoundError(f"{root}: no such folder of unlabelled images")
    out = []
    for image_id, path in files:
        try:
            out.append((image_id, read_gray(path)))
        except DataError as e:
            bad.append(str(e))
    if bad and console is not None:
        console.print(f"[yellow]{len(bad)} unlabelled image(s) skipped[/], first: {bad[0]}")
    if not out:
        raise ValueError(f"{root}: no readable images ({', '.join(IMAGE_SUFFIXES)})")
    return out, bad


def fit_gan(cfg: GanConfig, console=None) -> dict:
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from inspect_edge.data import open_datasets

    console = console or Console()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out = Path(cfg.out)
    (out / "samples").mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2, sort_keys=True) + "\n")
    device = pick_device(cfg.device)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)

    ds = open_datasets(cfg.data)
    k = len(ds.classes)
    train_ds, held_ds, how = labelled_split(
        ds, seed=cfg.seed, labelled_fraction=cfg.labelled_fraction, split=cfg.split,
        val_split=cfg.val_split, val_fraction=cfg.val_fraction,
    )
    labelled = load_labelled(train_ds)
    eval_pairs = load_held_out_pairs(held_ds, k, cfg.crop, cfg.seed, cfg.eval_pairs)
    sampler = PairSampler(labelled, k, PairConfig(crop=cfg.crop, defect_share=cfg.defect_share))
    unlabelled, skipped = None, []
    if cfg.unlabelled_data:
        images, skipped = load_images_only(cfg.unlabelled_data, console)
        unlabelled = UnlabelledSampler(images, sampler.bank, PairConfig(crop=cfg.crop))
    console.print(
        f"GAN: {len(labelled)} labelled images ({sampler.bank.summary()['shapes']} defect shapes), "
        + (f"{len(unlabelled.images)} unlabelled ({cfg.unlabelled_share:.0%} of each batch), " if unlabelled else "")
        + f"held-out {len(eval_pairs)} pairs from {len(held_ds)} images ({how}); device {device}"
    )

    def draw() -> Pair:
        if unlabelled is not None and rng.random() < cfg.unlabelled_share:
            return unlabelled.sample(rng)
        return sampler.sample(rng)

    gen = InpaintGenerator(GeneratorConfig(num_classes=k, base=cfg.base, ffc_blocks=cfg.ffc_blocks,
                                           noise_channels=cfg.noise_channels)).to(device)
    disc = PatchDiscriminator(k, cfg.d_base, spectral=cfg.d_spectral_norm).to(device)
    ema = copy.deepcopy(gen).eval()
    for p in ema.parameters():
        p.requires_grad_(False)
    opt_g = torch.optim.Adam(gen.parameters(), lr=cfg.lr_g, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(disc.parameters(), lr=cfg.lr_d, betas=(0.5, 0.999))
    history: list[dict] = []
    step = 0
    ckpt_path = out / "gan_checkpoint.pt"
    if cfg.resume and ckpt_path.is_file():
        ck = torch.load(ckpt_path, map_location=device, weights_only=True)
        gen.load_state_dict(ck["generator"])
        disc.load_state_dict(ck["discriminator"])
        ema.load_state_dict(ck["ema"])
        opt_g.load_state_dict(ck["opt_g"])
        opt_d.load_state_dict(ck["opt_d"])
        step = int(ck["step"])
        rng.bit_generator.state = json.loads(ck["rng"])
        history = json.loads(ck["history"])
        console.print(f"resumed from {ckpt_path} at step {step}")

    def save_checkpoint() -> None:
        record = {
            "generator": gen.state_dict(), "discriminator": disc.state_dict(), "ema": ema.state_dict(),
            "opt_g": opt_g.state_dict(), "opt_d": opt_d.state_dict(), "step": step,
            "rng": json.dumps(rng.bit_generator.state), "history": json.dumps(history),
        }
        torch.save(record, ckpt_path.with_suffix(".tmp"))
        ckpt_path.with_suffix(".tmp").replace(ckpt_path)
        save_generator(out / "generator.pt", ema, ds.classes, cfg.crop, step)

    def write_samples() -> None:
        shown = eval_pairs[:6]
        if shown:
            gan_sample_grid(out / "samples" / f"step_{step:06d}.png", shown, paint(ema, shown, k))

    t0 = time.monotonic()
    deadline = t0 + cfg.time_budget_min * 60 if cfg.time_budget_min else None
    curve_features = FeatureNet(cfg.feature_net, cfg.segmenter_run, seed=0) if cfg.measure_at_min and eval_pairs else None
    curve, pending = [], sorted(cfg.measure_at_min)

    def measure_now() -> None:
        """One point of the quality curve: is time or design the limit?"""
        m = measure(eval_pairs, paint(ema, eval_pairs, k), curve_features)
        m["gan"]["fill_diversity"] = fill_diversity(paint(ema, eval_pairs, k, seed=0), paint(ema, eval_pairs, k, seed=1), eval_pairs)
        curve.append({"minutes": round((time.monotonic() - t0) / 60, 2), "step": step, "gan": m["gan"], "telea": m["telea"]})
        (out / "quality_curve.json").write_text(json.dumps(curve, indent=1) + "\n")
    stopped = "steps"
    columns = [TextColumn("GAN"), BarColumn(), TextColumn("{task.completed}/{task.total}"), TextColumn("{task.fields[losses]}"), TimeElapsedColumn(), TimeRemainingColumn()]
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task("gan", total=cfg.steps, completed=step, losses="")
        while step < cfg.steps:
            if deadline is not None and time.monotonic() > deadline:
                stopped = "time budget"
                break
            gen.train()
            if cfg.ms_weight > 0:  # each pair twice, with two noise codes: the mode-seeking term compares them
                half = [draw() for _ in range(cfg.batch_size // 2)]
                batch_pairs = half + half
            else:
                batch_pairs = [draw() for _ in range(cfg.batch_size)]
            real, hole, cmap = (t.to(device) for t in to_tensors(batch_pairs, k))
            z = gen.noise_like(hole)
            # Discriminator step.
            disc.requires_grad_(True)
            raw = gen(real * (1 - hole), hole, cmap, z)
            fake = composite(raw, real, hole)
            d_real, feats_real = disc(real, hole, cmap)
            feats_real = [f.detach() for f in feats_real]  # reused for feature matching: one D pass fewer
            d_fake, _ = disc(fake.detach(), hole, cmap)
            loss_d = d_adversarial(d_real, d_fake, hole)
            r1 = torch.zeros((), device=device)
            if cfg.r1_gamma > 0 and step % cfg.r1_every == 0:
                real_r = real.detach().requires_grad_(True)
                logits_r, _ = disc(real_r, hole, cmap)
                r1 = r1_penalty(logits_r, real_r)
                loss_d = loss_d + 0.5 * cfg.r1_gamma * cfg.r1_every * r1
            opt_d.zero_grad(set_to_none=True)
            loss_d.backward()
            opt_d.step()
            # Generator step (discriminator frozen).
            disc.requires_grad_(False)
            d_fake, feats_fake = disc(fake, hole, cmap)
            adv = g_adversarial(d_fake, hole)
            l1 = masked_l1(raw, real, hole)
            fm = feature_matching(feats_fake, feats_real)
            loss_g = cfg.adv_weight * adv + cfg.l1_weight * l1 + cfg.fm_weight * fm
            ffl = ms = torch.zeros((), device=device)
            if cfg.ffl_weight > 0:
                ffl = focal_frequency(raw, real, hole)
                loss_g = loss_g + cfg.ffl_weight * ffl
            if cfg.ms_weight > 0:
                h2 = len(half)
                ms = mode_seeking(raw[:h2], raw[h2:], z[:h2], z[h2:], hole[:h2])
                loss_g = loss_g + cfg.ms_weight * ms
            opt_g.zero_grad(set_to_none=True)
            loss_g.backward()
            opt_g.step()
            ema_update(ema, gen, ema_decay_at(step, cfg.ema_decay))
            step += 1
            rec = {"step": step, "loss_d": loss_d.item(), "loss_g": loss_g.item(), "adv": adv.item(), "l1": l1.item(), "fm": fm.item(), "r1": r1.item(),
                   "ffl": ffl.item(), "ms": ms.item()}
            history.append(rec)
            progress.update(task, completed=step, losses=f"D {rec['loss_d']:.3f} G {rec['loss_g']:.3f} L1 {rec['l1']:.3f}")
            if step % cfg.sample_every == 0:
                write_samples()
            if step % cfg.checkpoint_every == 0:
                save_checkpoint()
            if pending and time.monotonic() - t0 >= pending[0] * 60:
                pending.pop(0)
                measure_now()
    save_checkpoint()
    write_samples()
    (out / "history.json").write_text(json.dumps(history) + "\n")

    features = FeatureNet(cfg.feature_net, cfg.segmenter_run, seed=0)
    metrics = measure(eval_pairs, paint(ema, eval_pairs, k), features) if eval_pairs else {"pairs": 0}
    if eval_pairs:
        metrics["gan"]["fill_diversity"] = fill_diversity(paint(ema, eval_pairs, k, seed=0), paint(ema, eval_pairs, k, seed=1), eval_pairs)
    metrics.update({
        "steps": step, "stopped_by": stopped, "train_seconds": round(time.monotonic() - t0, 1),
        "labelled_images": len(labelled), "held_out_images": len(held_ds), "split": how,
        "unlabelled_images": len(unlabelled.images) if unlabelled else 0, "unlabelled_skipped": skipped,
    })
    (out / "gan_metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    return metrics
