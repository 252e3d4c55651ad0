import numpy as np
import pytest

from inspect_edge.model_info import ModelInfo
from inspect_edge.postprocess import find_defects, masks_from_logits, prob_to_logit, remove_small_components

HIGH, LOW = 6.0, -6.0  # logits for p ~ 0.9975 and ~ 0.0025


def _info(**kw):
    base = dict(classes=("pits", "scratches"), input_height=32, input_width=64)
    base.update(kw)
    return ModelInfo(**base)


def test_logit_threshold_matches_sigmoid_threshold():
    x = np.linspace(-8, 8, 1001)
    for t in (0.1, 0.35, 0.5, 0.8, 0.97):
        assert np.array_equal(x >= prob_to_logit(t), 1 / (1 + np.exp(-x)) >= t)


def test_remove_small_components_keeps_only_large_blobs():
    m = np.zeros((20, 20), bool)
    m[1:3, 1:3] = True  # 4 px
    m[10:15, 10:15] = True  # 25 px
    m[0, 19] = True  # 1 px
    out = remove_small_components(m, 5)
    assert out.sum() == 25 and out[10:15, 10:15].all()
    assert np.array_equal(remove_small_components(m, 0), m)
    # diagonal neighbours are one component (8-connectivity): 3 px survive min_area 3
    d = np.eye(3, dtype=bool)
    assert remove_small_components(d, 3).sum() == 3


def test_masks_from_logits_applies_per_class_threshold_and_area():
    logits = np.full((2, 32, 64), LOW, np.float32)
    logits[0, 2:4, 2:4] = 0.5  # p=0.62: above 0.5, below 0.7
    logits[1, 10:20, 10:30] = HIGH
    logits[1, 0, 0] = HIGH  # lone pixel removed by min area
    m = masks_from_logits(logits, thresholds=(0.5, 0.5), min_areas=(0, 10))
    assert m[0].sum() == 4 and m[1].sum() == 200
    m = masks_from_logits(logits, thresholds=(0.7, 0.5), min_areas=(0, 0))
    assert m[0].sum() == 0 and m[1].sum() == 201
    with pytest.raises(ValueError, match="thresholds"):
        masks_from_logits(logits, thresholds=(0.5,), min_areas=(0, 0))


def test_find_defects_reports_class_area_bbox_and_peak():
    logits = np.full((2, 32, 64), LOW, np.float32)
    logits[1, 5:9, 20:40] = 2.0
    logits[1, 6, 30] = 4.0
    logits[0, 30, 60] = HIGH  # single pixel, below min area 2
    defects = find_defects(logits, _info(min_areas=(2, 2)), frame_time=123.5)
    assert len(defects) == 1
    d = defects[0]
    assert (d.class_index, d.class_name, d.area_px, d.bbox) == (1, "scratches", 80, (20, 5, 20, 4))
    assert d.peak_prob == pytest.approx(1 / (1 + np.exp(-4.0)))
    assert d.to_dict()["frame_time"] == 123.5
    with pytest.raises(ValueError, match="expected"):
        find_defects(logits[:1], _info())
