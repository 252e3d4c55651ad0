"""Each physical defect once: fragments merged in a frame, one track across frames."""

from __future__ import annotations

import pytest

from inspect_edge.postprocess import Defect
from inspect_edge.tracking import DefectTracker, merge_fragments

FRAME = (256, 1600)


def d(x, y, w, h, cls=0, p=0.9, name=None):
    return Defect(cls, name or f"class{cls}", w * h, (x, y, w, h), p, 0.0)


def test_fragments_of_one_scratch_become_one_defect_and_others_stay_apart():
    pieces = [d(100, 50, 30, 4, p=0.7), d(135, 51, 25, 4, p=0.95), d(166, 52, 30, 3, p=0.8)]  # gaps of 5-6 px
    apart = d(240, 50, 20, 4)          # 44 px further along: another defect
    beside = d(100, 120, 30, 4)        # same place along the strip, but elsewhere across it
    other_class = d(200, 50, 20, 4, cls=1)
    merged = merge_fragments(pieces + [apart, beside, other_class], gap_px=16, axis=0)
    assert len(merged) == 4
    scratch = next(m for m in merged if m.bbox[0] == 100 and m.bbox[1] == 50)
    assert scratch.bbox == (100, 50, 96, 5) and scratch.area_px == sum(p.area_px for p in pieces)
    assert scratch.peak_prob == 0.95
    assert len(merge_fragments(pieces, gap_px=-1)) == 3  # merging can be switched off


def test_a_defect_moving_through_ten_frames_is_one_track_with_its_own_length():
    tracker = DefectTracker(axis=0, max_missed=2)
    started, closed = [], []
    for seq in range(1, 11):  # 40 px long, moving 35 px a frame: seen in 10 frames
        u = tracker.update(seq, float(seq), [d(100 + 35 * seq, 80, 40, 10, p=0.6 + 0.02 * seq)], FRAME)
        started += u.started
        closed += u.closed
        assert u.track_ids == [1]
    for seq in range(11, 14):
        closed += tracker.update(seq, float(seq), [], FRAME).closed
    assert len(started) == 1 and len(closed) == 1
    ev = closed[0].to_event(tracker.speed, mm_per_px=0.5)
    assert ev["frames"] == 10 and ev["first_seq"] == 1 and ev["last_seq"] == 10
    assert abs(ev["length_px"] - 40) <= 1 and abs(ev["length_mm"] - 20) <= 0.5
    assert ev["peak_seq"] == 10 and abs(ev["peak_prob"] - 0.8) < 1e-9
    assert abs(tracker.speed - 35) < 1e-6


def test_a_missed_frame_does_not_split_a_defect_and_two_defects_stay_two():
    tracker = DefectTracker(axis=0, max_missed=2)
    ids = []
    for seq in range(1, 9):
        seen = [d(50 + 20 * seq, 30, 16, 16)] if seq != 4 else []  # the model misses it once
        seen.append(d(60 + 20 * seq, 180, 16, 16))                 # a second pit lower on the strip
        ids.append(tracker.update(seq, 0.0, seen, FRAME).track_ids)
    flat = {i for row in ids for i in row}
    assert flat == {1, 2}


def test_a_defect_longer_than_the_view_gets_the_length_it_travelled():
    tracker = DefectTracker(axis=0, max_missed=1, speed_px_per_frame=400.0)
    for seq in range(1, 6):  # a seam filling the whole 1600 px view for 5 frames
        tracker.update(seq, 0.0, [d(0, 100, 1600, 8)], FRAME)
    (track,) = tracker.close_all()
    assert track.clipped and abs(track.length_px(tracker.speed) - (1600 + 4 * 400)) < 1


def test_frames_dropped_between_sightings_are_allowed_for_by_their_sequence_numbers():
    tracker = DefectTracker(axis=0, max_missed=2)
    for seq in (1, 2, 5, 6):  # frames 3 and 4 were dropped as stale: the defect moved three steps
        u = tracker.update(seq, 0.0, [d(100 + 30 * seq, 40, 20, 20)], FRAME)
    assert u.track_ids == [1] and abs(tracker.speed - 30) < 1e-6


def test_labels_of_crowded_defects_never_overprint_each_other():
    import cv2

    from inspect_edge.overlay import label_positions

    crowd = [d(100 + 3 * i, 60 + 2 * i, 30, 10, cls=i % 2, p=0.5 + 0.05 * i) for i in range(8)]
    placed = label_positions(crowd, (256, 1600))
    rects = []
    for _, text, (x, y) in placed:
        (tw, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, 0.45, 1)
        rects.append((x, y - th - 2, tw, th + 6))
    assert len(placed) >= 3  # room above and below for several, not for all eight
    for i, a in enumerate(rects):
        for b in rects[i + 1:]:
            assert not (a[0] < b[0] + b[2] and b[0] < a[0] + a[2] and a[1] < b[1] + b[3] and b[1] < a[1] + a[3])
    assert placed[0][0].peak_prob == max(c.peak_prob for c in crowd)


def test_a_track_closes_as_soon_as_the_strip_has_carried_it_out_of_view():
    tracker = DefectTracker(axis=0, max_missed=5, speed_px_per_frame=-100.0)
    tracker.update(1, 0.0, [d(150, 40, 30, 10)], FRAME)
    tracker.update(2, 0.0, [d(50, 40, 30, 10)], FRAME)
    u = tracker.update(3, 0.0, [], FRAME)  # carried to x = -50..-20: gone, 4 frames before max_missed
    assert [t.frames for t in u.closed] == [2] and tracker.open == []


def test_the_strips_true_masks_give_one_event_per_defect_in_it():
    from inspect_edge.bench.count_check import run
    from inspect_edge.config import DEFAULT_MODEL

    if not DEFAULT_MODEL.is_file():
        pytest.skip(f"no built-in model at {DEFAULT_MODEL}")
    rows = run(60, DEFAULT_MODEL)
    assert rows[-1]["class"] == "total" and rows[-1]["in_strip"] >= 1
    # The counting itself (merge + tracker on the true masks) is exact, per class.
    assert all(r["true_masks"] == r["in_strip"] for r in rows)
    assert rows[-1]["true_masks_detections"] > rows[-1]["true_masks"]  # each defect is seen in several frames
