"""Defect-free negatives (train/gan/erase.py): every defect pixel and its margin is painted
over, nothing else changes, the label is all clean, a hole larger than the generator's crop
is painted window by window, and the draw repeats for a seed."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from helpers_gan_data import tiny_samples
from train.gan.erase import EraseConfig, erasable, erase_defects
from train.gan.generator import GeneratorConfig, InpaintGenerator
from train.gan.pairs import dilate
from train.gan.shape_bank import LabelledImage, labels_from_masks

torch.set_num_threads(1)


def _labelled(n=6):
    return [LabelledImage(s.image_id, s.image, labels_from_masks(s.masks)) for s in tiny_samples(n_train=n, n_val=0)]


def _source_view(src: LabelledImage, flips):
    img, lab = src.image, src.labels
    if flips[0]:
        img, lab = img[:, ::-1], lab[:, ::-1]
    if flips[1]:
        img, lab = img[::-1], lab[::-1]
    return img, lab


@pytest.mark.parametrize("eraser", ["telea", "gan"])
def test_erased_images_are_clean_and_change_only_inside_the_hole(eraser):
    labelled = _labelled()
    gen = InpaintGenerator(GeneratorConfig(num_classes=2, base=8, noise_channels=2)).eval() if eraser == "gan" else None
    cfg = EraseConfig(count=8, eraser=eraser, crop=32, hole_margin=2)
    items = erase_defects(labelled, cfg, 2, gen)
    by_id = {li.image_id: li for li in labelled}
    assert len(items) == 8 and len({it.image_id for it in items}) == 8
    assert {it.record["background"] for it in items[:6]} == set(by_id)  # no repeats before every source is used
    for it in items:
        img, lab = _source_view(by_id[it.record["background"]], it.record["flips"])
        hole = dilate(lab > 0, 2)
        assert not it.labels.any() and it.record["defects"] == []
        assert np.array_equal(it.new_mask, hole) and it.record["erased_px"] == int(hole.sum())
        assert np.array_equal(it.image[~hole], img[~hole])
        assert np.abs(it.image[hole].astype(int) - img[hole]).mean() > 5  # the dark pit and bright streak are gone
    again = erase_defects(labelled, cfg, 2, gen)
    assert all(np.array_equal(a.image, b.image) for a, b in zip(items, again))


class _WhitePainter(torch.nn.Module):
    """Paints every hole pixel white: makes which pixels a tiled erase reached visible."""

    def __init__(self) -> None:
        super().__init__()
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def noise_like(self, hole, generator=None):
        return None

    def forward(self, masked, hole, class_map, noise=None):
        return torch.ones_like(masked)


def test_a_hole_larger_than_the_crop_is_painted_window_by_window():
    img = np.full((64, 64), 100, np.uint8)
    lab = np.zeros((64, 64), np.uint8)
    lab[5:58, 10:14] = 1  # a scratch longer than two 16-pixel windows
    lab[40:44, 20:60] = 2
    items = erase_defects([LabelledImage("long", img, lab)], EraseConfig(count=1, eraser="gan", crop=16, hole_margin=1,
                                                                           max_defect_share=0.5), 2, _WhitePainter())
    out, hole = items[0].image, items[0].new_mask
    assert hole.sum() > 16 * 16 and np.all(out[hole] == 255) and np.all(out[~hole] == 100)


def test_images_whose_defects_cover_too_much_are_not_erased():
    labelled = _labelled(3)
    big = labelled[0].labels.copy()
    big[:, :40] = 1
    labelled[0] = LabelledImage("mostly-defect", labelled[0].image, big)
    assert [li.image_id for li in erasable(labelled, 0.25)] == [li.image_id for li in labelled[1:]]
    items = erase_defects(labelled, EraseConfig(count=5, eraser="telea"), 2)
    assert "mostly-defect" not in {it.record["background"] for it in items}
    with pytest.raises(ValueError, match="nothing to erase"):
        erase_defects(labelled[:1], EraseConfig(count=1, eraser="telea"), 2)
    with pytest.raises(ValueError, match="needs a generator"):
        erase_defects(labelled, EraseConfig(count=1, eraser="gan"), 2)
    with pytest.raises(ValueError, match="unknown eraser"):
        EraseConfig(count=1, eraser="blur")
