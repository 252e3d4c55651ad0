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


def _reference_masks(logits, thresholds, min_areas):
    # Whole-frame labelling with OpenCV, written independently of the module.
    import cv2

    out = np.zeros(logits.shape, bool)
    for c in range(logits.shape[0]):
        b = (1 / (1 + np.exp(-logits[c].astype(np.float64))) >= thresholds[c]).astype(np.uint8)
        n, lab, st, _ = cv2.connectedComponentsWithStats(b, connectivity=8)
        for j in range(1, n):
            if st[j, cv2.CC_STAT_AREA] >= max(min_areas[c], 1):
                out[c] |= lab == j
    return out


def test_analyse_logits_matches_whole_frame_labelling_on_random_frames():
    from inspect_edge.postprocess import analyse_logits

    rng = np.random.default_rng(0)
    info = _info(classes=("a", "b", "c"), thresholds=(0.5, 0.3, 0.8), min_areas=(0, 5, 40))
    for _ in range(5):
        # smooth random blobs so components have varied sizes, some touching the border
        noise = rng.normal(size=(3, 8, 16)).astype(np.float32)
        import cv2

        logits = np.stack([cv2.resize(n, (64, 32)) * 4 - 2 for n in noise])
        masks, defects = analyse_logits(logits, info, 1.0)
        assert np.array_equal(masks, _reference_masks(logits, info.thresholds, info.min_areas))
        assert np.array_equal(masks, masks_from_logits(logits, info.thresholds, info.min_areas))
        for d in defects:
            x, y, w, h = d.bbox
            inside = masks[d.class_index, y : y + h, x : x + w]
            assert inside.sum() >= d.area_px  # the component lies within its box
            peak = 1 / (1 + np.exp(-logits[d.class_index, y : y + h, x : x + w][inside].max()))
            assert d.peak_prob <= peak + 1e-6
        assert sum(d.area_px for d in defects) == masks.sum()


def test_sparse_speckle_split_into_bands_labels_like_the_whole_frame():
    """Flagged columns far apart are labelled in separate windows; the result must be
    the whole-frame labelling, including marks that meet only at a corner and marks
    that sit just either side of the band gap."""
    import cv2

    from inspect_edge.postprocess import BAND_GAP, analyse_logits

    rng = np.random.default_rng(1)
    info = _info(classes=("a", "b"), thresholds=(0.5, 0.5), min_areas=(1, 3))
    for _ in range(4):
        logits = np.full((2, 48, 600), -5.0, np.float32)
        speckle = rng.random((2, 48, 600)) < 0.004
        logits[speckle] = 3.0
        x = int(rng.integers(20, 400))
        logits[:, 10, x] = logits[:, 11, x + 1] = 3.0                 # corner contact: one component
        logits[:, 30, x + 60] = logits[:, 30, x + 61 + BAND_GAP] = 3.0  # gap exactly at the band limit
        logits[:, 40, x + 120] = logits[:, 40, x + 122 + BAND_GAP] = 3.0  # one column past it
        cv2.line(logits[1], (x + 150, 5), (x + 190, 40), 3.0, 1)     # a thin diagonal mark
        masks, defects = analyse_logits(logits, info)
        assert np.array_equal(masks, _reference_masks(logits, info.thresholds, info.min_areas))
        for c in range(2):
            n, _, stats, _ = cv2.connectedComponentsWithStats((logits[c] >= 0).astype(np.uint8), connectivity=8)
            expected = sorted(int(a) for a in stats[1:n, cv2.CC_STAT_AREA] if a >= info.min_areas[c])
            assert sorted(d.area_px for d in defects if d.class_index == c) == expected
