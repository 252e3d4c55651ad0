import cv2
import numpy as np
import pytest

from inspect_edge.data.synthetic import (
    SYNTH_CLASSES,
    MovingStrip,
    StripConfig,
    generate_strip,
    material,
    paint_defects,
    write_video,
)
from inspect_edge.data.synthetic_preview import render_preview

SMALL = StripConfig(height=64, width=320)


def test_shapes_types_and_configurable_size():
    img, masks = generate_strip(np.random.default_rng(0), SMALL)
    assert img.shape == (64, 320) and img.dtype == np.uint8
    assert masks.shape == (4, 64, 320) and masks.dtype == bool
    img, masks = generate_strip(np.random.default_rng(0))
    assert img.shape == (256, 1600) and masks.shape == (4, 256, 1600)
    assert SYNTH_CLASSES == ("pits", "cracks", "scratches", "patches")


def test_deterministic_for_a_seed():
    a = generate_strip(np.random.default_rng(7), SMALL)
    b = generate_strip(np.random.default_rng(7), SMALL)
    c = generate_strip(np.random.default_rng(8), SMALL)
    assert (a[0] == b[0]).all() and (a[1] == b[1]).all()
    assert not (a[0] == c[0]).all()


@pytest.mark.parametrize("seed", range(12))
def test_masks_cover_the_painted_pixels_as_an_annotator_would(seed):
    import cv2

    rng = np.random.default_rng(seed)
    img = material(rng, 256, 800)
    before = img.copy()
    masks = paint_defects(rng, img, StripConfig(height=256, width=800, max_defects=4))
    changed = img != before
    assert masks.any()
    assert (changed <= masks.any(axis=0)).all()  # every painted pixel is labelled
    # Thin marks (pits, cracks) are outlined 2 px wide, like a person draws them; nothing more.
    grown = cv2.dilate(changed.view(np.uint8), cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5))).astype(bool)
    assert (masks.any(axis=0) <= grown).all()
    assert (masks[2] <= changed).all() and (masks[3] <= changed).all()  # scratches, patches: exact
    assert masks.sum(axis=0).max() <= 1  # later defects take their pixels from earlier masks


def test_defect_free_share_and_every_class_appears():
    cfg = StripConfig(height=64, width=400, defect_free_share=0.5)
    strips = [generate_strip(np.random.default_rng([1, i]), cfg)[1] for i in range(160)]
    has = np.array([m.any(axis=(1, 2)) for m in strips])
    clean = 1 - has.any(axis=1).mean()
    assert 0.35 < clean < 0.65
    assert has.any(axis=0).all()
    all_clean = [generate_strip(np.random.default_rng(i), StripConfig(64, 320, defect_free_share=1.0))[1].any()
                 for i in range(5)]
    assert not any(all_clean)


def test_looks_like_steel_not_noise():
    # Rolling texture: neighbours along x are far more alike than neighbours across (y).
    img, _ = generate_strip(np.random.default_rng(3), StripConfig(defect_free_share=1.0))
    f = img.astype(float)
    along = np.abs(np.diff(f, axis=1)).mean()
    across = np.abs(np.diff(f, axis=0)).mean()
    assert along < across
    assert 40 < f.mean() < 220 and f.std() > 4


def test_config_is_validated():
    with pytest.raises(ValueError, match="defect_free_share"):
        generate_strip(np.random.default_rng(0), StripConfig(defect_free_share=1.5))
    with pytest.raises(ValueError, match="at least 16"):
        generate_strip(np.random.default_rng(0), StripConfig(height=8))


def test_moving_strip_moves_and_defects_enter_and_leave():
    ms = MovingStrip(frame_height=64, frame_width=320, speed_px=16, seed=2)
    frames = [ms.next_frame() for _ in range(300)]
    for (_, a), (_, b) in zip(frames, frames[1:]):
        assert (a[:, :, 16:] == b[:, :, :-16]).all()  # the same strip, moved by 16 px
    visible = [m.any() for _, m in frames]
    assert any(visible) and not all(visible)
    entered = any(not p and q for p, q in zip(visible, visible[1:]))
    left = any(p and not q for p, q in zip(visible, visible[1:]))
    assert entered and left
    again = MovingStrip(frame_height=64, frame_width=320, speed_px=16, seed=2)
    img0, m0 = again.next_frame()
    assert (img0 == frames[0][0]).all() and (m0 == frames[0][1]).all()


def test_write_video_and_preview(tmp_path):
    path = write_video(tmp_path / "strip.avi", MovingStrip(frame_height=64, frame_width=320, seed=1), 12, fps=10)
    cap = cv2.VideoCapture(str(path))
    n = 0
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        assert frame.shape[:2] == (64, 320)
        n += 1
    assert n == 12
    with pytest.raises(ValueError, match="mp4"):
        write_video(tmp_path / "x.gif", MovingStrip(frame_height=64, frame_width=320), 2)
    rng = np.random.default_rng(0)
    strips = [generate_strip(rng, SMALL) for _ in range(3)]
    png = render_preview(tmp_path / "p.png", strips, SYNTH_CLASSES)
    sheet = cv2.imread(str(png))
    assert sheet.shape[1] == 320 and sheet.shape[0] > 3 * 2 * 64
