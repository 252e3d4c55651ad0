"""`train synthesize`: new (image, mask) pairs from real backgrounds and real defect shapes.

For every synthetic image: take a background (a labelled defect-free image when the
labelled data has any, otherwise any labelled image, whose existing defects stay and
stay labelled), draw 1..N real defect shapes from the bank with classes balanced,
transform them (flips, scale, a few degrees of rotation) and place each where it does
not overlap existing defects. Then paint them:
- `gan`: the inpainting generator paints the class into a hole = the new mask dilated
  by a few pixels (never over existing defects); pixels outside the hole keep their
  exact values;
- `copy-paste`: the real defect's own pixels are pasted through its mask;
- `gan-blend` (hybrid): the real defect's pixels are pasted, shifted to the brightness
  of the new background around them, then the generator repaints a band across the
  mask border (`blend_band` pixels inside, `hole_margin` outside): real texture in the
  middle, generated transitions at the edge. Masks thinner than twice the band (fine
  scratches) are repainted whole.
Every method draws the same shapes and placements from the same seed, so only the
painter differs. The output is a data set in the input's format plus manifest.json.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from train.gan.pairs import dilate, erode, pad_to, window_around
from train.gan.shape_bank import LabelledImage, ShapeBank, TransformConfig, masks_from_labels, place_shape, transform_shape

METHODS = ("gan", "copy-paste", "gan-blend")
PAINTED = ("gan", "gan-blend")  # methods that need a generator


@dataclass
class SynthConfig:
    count: int
    method: str = "gan"
    seed: int = 0
    max_defects_per_image: int = 2
    crop: int = 128  # GAN crop (taken from the generator when there is one); also caps shape size
    hole_margin: int = 4  # GAN hole = new mask dilated by this many pixels
    blend_band: int = 3  # gan-blend: pixels inside the mask border that the generator repaints
    scale_range: tuple[float, float] = (0.75, 1.25)
    max_rotation_deg: float = 10.0
    min_shape_area: int = 16

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; valid: {', '.join(METHODS)}")
        if self.count < 1:
            raise ValueError(f"count must be >= 1, got {self.count}")


@dataclass
class Synthetic:
    image_id: str
    image: np.ndarray  # uint8 (H, W)
    labels: np.ndarray  # uint8 (H, W)
    record: dict  # manifest entry
    new_mask: np.ndarray | None = None  # bool (H, W): the defects added here


def _gan_job(image: np.ndarray, labels: np.ndarray, new_mask: np.ndarray, before: np.ndarray, final: np.ndarray, cfg: SynthConfig):
    """The crop the generator paints one new defect in: (Pair, window top-left).

    Hole = the new mask dilated by `hole_margin`, never over other defects: those there
    before (they keep their pixels and labels) and those added after this one (`final`:
    the image's labels at the end; they get painted, or keep their pasted core, in their
    own turn). The class map is the labels after adding this defect."""
    from train.gan.pairs import Pair

    c = cfg.crop
    img_p, lab_p = pad_to(image, labels, c)
    pad = ((0, img_p.shape[0] - image.shape[0]), (0, img_p.shape[1] - image.shape[1]))
    new_p, before_p, final_p = np.pad(new_mask, pad), np.pad(before, pad), np.pad(final, pad)  # zeros: the pad is never painted
    inside = np.pad(np.ones(image.shape, bool), pad)
    ys, xs = np.nonzero(new_p)
    y0, x0 = window_around((ys.min() + ys.max()) / 2, (xs.min() + xs.max()) / 2, img_p.shape, c)
    win = (slice(y0, y0 + c), slice(x0, x0 + c))
    hole = dilate(new_p[win], cfg.hole_margin) & (before_p[win] == 0) & ((final_p[win] == 0) | new_p[win]) & inside[win]
    if cfg.method == "gan-blend":  # keep the pasted core: only the border band is repainted
        hole &= ~erode(new_p[win], cfg.blend_band)
    return Pair(img_p[win], lab_p[win], hole, "", "synthetic"), (y0, x0)


def paint_batch(generator, jobs: list, num_classes: int, noise_rng, batch: int = 32) -> list[np.ndarray]:
    """Generated uint8 crops for a list of Pairs, in batches (one forward per batch); a
    stochastic generator's noise comes from `noise_rng`, so synthesis repeats exactly."""
    import torch

    from train.gan.pairs import to_tensors, to_uint8

    device = next(generator.parameters()).device
    out = []
    with torch.no_grad():
        for i in range(0, len(jobs), batch):
            real, hole, cmap = (t.to(device) for t in to_tensors(jobs[i : i + batch], num_classes))
            out.extend(to_uint8(generator(real * (1 - hole), hole, cmap, generator.noise_like(hole, noise_rng))))
    return out


def paste_matched(region: np.ndarray, patch: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The defect's pixels shifted by the difference in background brightness between its
    source (the patch around the mask) and its new place (the region around the mask)."""
    src_bg, dst_bg = patch[~mask], region[~mask]
    delta = float(dst_bg.mean()) - float(src_bg.mean()) if src_bg.size and dst_bg.size else 0.0
    return np.clip(np.rint(patch.astype(np.float32) + delta), 0, 255).astype(np.uint8)


def synthesize_samples(
    backgrounds: list[LabelledImage], bank: ShapeBank, cfg: SynthConfig, classes, generator=None, id_prefix: str = "syn"
) -> list[Synthetic]:
    """`cfg.count` synthetic images; deterministic for a given seed, backgrounds and bank.

    Shapes and placements are drawn first (the only random part, identical for both
    methods); then the GAN paints the i-th new defect of every image in one batched
    pass per i, so a later defect is painted with the earlier ones already in place."""
    if not backgrounds:
        raise ValueError("no labelled backgrounds to synthesize on")
    if not bank.classes_present:
        raise ValueError("the shape bank is empty: the labelled data has no defect large enough to reuse")
    if cfg.method in PAINTED and generator is None:
        raise ValueError(f"method {cfg.method!r} needs a generator (train one with `train gan`)")
    clean = [b for b in backgrounds if not b.labels.any()]
    pool = clean or backgrounds
    rng = np.random.default_rng(cfg.seed)
    tcfg = TransformConfig(scale_range=cfg.scale_range, max_rotation_deg=cfg.max_rotation_deg, max_extent=cfg.crop - 4 * cfg.hole_margin)
    present = bank.classes_present
    class_cycle = 0
    items, plans = [], []
    for n in range(cfg.count):
        bg = pool[int(rng.integers(len(pool)))]
        image, labels = bg.image.copy(), bg.labels.copy()
        defects, plan = [], []
        for _ in range(int(rng.integers(1, cfg.max_defects_per_image + 1))):
            k = present[class_cycle % len(present)]  # round robin: rare classes get as many as common ones
            class_cycle += 1
            shape = bank.pick(rng, k)
            mask, patch = transform_shape(shape, rng, tcfg)
            placed = place_shape(labels, mask, rng)
            if placed is None:
                continue
            y, x, new_mask = placed
            before = labels
            labels = labels.copy()
            labels[new_mask] = k + 1
            if cfg.method in ("copy-paste", "gan-blend"):
                h, w = mask.shape
                sub = new_mask[y : y + h, x : x + w]
                region = image[y : y + h, x : x + w]
                src = paste_matched(region, patch, mask) if cfg.method == "gan-blend" else patch
                region[sub] = src[sub]
            plan.append((new_mask, before, labels))
            defects.append({
                "class": classes[k], "shape_source": shape.source_id, "component": int(shape.component),
                "bbox_xywh": [x, y, int(mask.shape[1]), int(mask.shape[0])], "area_px": int(new_mask.sum()),
            })
        image_id = f"{id_prefix}_{cfg.method.replace('-', '')}_{n:05d}"
        record = {"image_id": image_id, "synthetic": True, "method": cfg.method, "background": bg.image_id,
                  "background_defect_free": not bg.labels.any(), "defects": defects}
        items.append(Synthetic(image_id, image, labels, record, (labels > 0) & (bg.labels == 0)))
        plans.append(plan)
    if cfg.method in PAINTED:
        import torch

        noise_rng = torch.Generator().manual_seed(cfg.seed)
        for r in range(max((len(p) for p in plans), default=0)):
            todo = [(i, p[r]) for i, p in enumerate(plans) if len(p) > r]
            jobs = [_gan_job(items[i].image, after, new_mask, before, items[i].labels, cfg) for i, (new_mask, before, after) in todo]
            painted = paint_batch(generator, [pair for pair, _ in jobs], len(classes), noise_rng)
            for (i, _), (pair, (y0, x0)), gen in zip(todo, jobs, painted):
                img = items[i].image
                c = cfg.crop
                h, w = min(c, img.shape[0] - y0), min(c, img.shape[1] - x0)  # the window may reach into padding
                region = img[y0 : y0 + h, x0 : x0 + w]
                region[...] = np.where(pair.hole[:h, :w], gen[:h, :w], region)
    return items


def write_dataset(out: Path, items: list[Synthetic], classes, fmt: str, split: str = "train", extra_manifest: dict | None = None) -> None:
    """Write synthetic items in `fmt` ("severstal" or "mask-folder") plus manifest.json."""
    from inspect_edge.data import Sample, write_mask_folder, write_severstal

    out = Path(out)
    samples = [Sample(s.image_id, s.image, masks_from_labels(s.labels, len(classes)), split) for s in items]
    if fmt == "severstal":
        write_severstal(out, samples, classes)
    else:
        write_mask_folder(out, samples, classes)
    manifest = {**(extra_manifest or {}), "format": fmt, "count": len(items), "items": [s.record for s in items]}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")


def run_synthesize(data: str, out: str, count: int, method: str, generator_run: str | None, *, seed: int = 0,
                   labelled_fraction: float = 1.0, max_defects_per_image: int = 2, console=None) -> dict:
    """The `train synthesize` command: open, pick the labelled images, synthesize, write."""
    from inspect_edge.data import open_dataset
    from train.gan.fit_gan import labelled_split, load_generator
    from train.gan.shape_bank import load_labelled

    ds = open_dataset(data)
    classes = tuple(ds.classes)
    generator, meta = None, {}
    crop = 128
    if generator_run:
        generator, meta = load_generator(generator_run)
        if tuple(meta["classes"]) != classes:
            raise ValueError(f"{generator_run}: generator classes {meta['classes']} differ from {data}'s {list(classes)}")
        crop = int(meta["crop"])
    elif method in PAINTED:
        raise ValueError(f"--method {method} needs --generator RUN (a `train gan` run folder)")
    cfg = SynthConfig(count=count, method=method, seed=seed, crop=crop, max_defects_per_image=max_defects_per_image)
    train_ds, _, how = labelled_split(ds, seed=seed, labelled_fraction=labelled_fraction)
    labelled = load_labelled(train_ds)
    bank = ShapeBank.from_images(labelled, len(classes), cfg.min_shape_area)
    items = synthesize_samples(labelled, bank, cfg, classes, generator)
    extra = {"source_data": str(data), "generator": str(generator_run) if generator_run else None,
             "labelled_fraction": labelled_fraction, "labelled_images": len(labelled), "split": how,
             "config": asdict(cfg), "shape_bank": bank.summary()}
    write_dataset(Path(out), items, classes, ds.format, extra_manifest=extra)
    return {"count": len(items), "out": str(out), "format": ds.format, "shape_bank": bank.summary()}
