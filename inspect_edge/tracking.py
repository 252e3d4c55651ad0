"""Each physical defect once: fragments merged within a frame, tracks across frames.

The strip moves along one image axis (the rolling direction, x for a 256 x 1600
strip camera), so one defect is seen in many frames and a thin scratch often
breaks into pieces. Within a frame, components of one class closer than
`gap_px` along the rolling axis, and overlapping across it, become one defect.
Across frames, a defect is matched to a track of its class that overlaps it
across the strip and sits where the track's last box has moved to at the
strip's speed, which the tracker learns from its own matches (or is told).
A track that is not seen for `max_missed` frames is closed: one physical
defect, with its first and last frame, its length along the strip and its
peak score.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field, replace

from inspect_edge.postprocess import Defect

MAX_SIGHTINGS = 2000


def _span(box, axis: int) -> tuple[int, int]:
    """(start, end) of a box (x, y, w, h) along axis 0 = x, 1 = y."""
    return (box[0], box[0] + box[2]) if axis == 0 else (box[1], box[1] + box[3])


def _gap(a: tuple[int, int], b: tuple[int, int]) -> int:
    """Pixels between two intervals; negative when they overlap."""
    return max(a[0], b[0]) - min(a[1], b[1])


def _union(a, b) -> tuple[int, int, int, int]:
    x0, y0 = min(a[0], b[0]), min(a[1], b[1])
    x1, y1 = max(a[0] + a[2], b[0] + b[2]), max(a[1] + a[3], b[1] + b[3])
    return (x0, y0, x1 - x0, y1 - y0)


def merge_fragments(defects: list[Defect], gap_px: int, axis: int = 0) -> list[Defect]:
    """One defect per cluster of same-class boxes within `gap_px` along `axis` and overlapping across it."""
    if gap_px < 0 or len(defects) < 2:
        return list(defects)
    across = 1 - axis
    parent = list(range(len(defects)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, a in enumerate(defects):
        for j in range(i + 1, len(defects)):
            b = defects[j]
            if a.class_index == b.class_index and _gap(_span(a.bbox, axis), _span(b.bbox, axis)) <= gap_px \
                    and _gap(_span(a.bbox, across), _span(b.bbox, across)) <= 0:
                parent[root(j)] = root(i)
    groups: dict[int, Defect] = {}
    for i, d in enumerate(defects):
        r = root(i)
        g = groups.get(r)
        groups[r] = d if g is None else replace(
            g, area_px=g.area_px + d.area_px, bbox=_union(g.bbox, d.bbox), peak_prob=max(g.peak_prob, d.peak_prob))
    return list(groups.values())


@dataclass
class Track:
    id: int
    class_index: int
    class_name: str
    first_seq: int
    first_time: float
    last_seq: int
    last_time: float
    box: tuple[int, int, int, int]          # last seen
    peak_prob: float
    peak_seq: int
    peak_box: tuple[int, int, int, int]
    frames: int = 1
    spans: list[tuple[int, int, int]] = field(default_factory=list)  # (seq, start, end) along the rolling axis
    clipped: bool = False                   # touched an edge of the view along the rolling axis

    def length_px(self, speed: float) -> float:
        """Extent along the strip: the union of every sighting moved back by the strip's travel."""
        lo = min(a - speed * q for q, a, _ in self.spans)
        hi = max(b - speed * q for q, _, b in self.spans)
        return hi - lo

    def to_event(self, speed: float, mm_per_px: float | None = None) -> dict:
        length = self.length_px(speed)
        out = {"defect_id": self.id, "class": self.class_name, "class_index": self.class_index,
               "first_seq": self.first_seq, "last_seq": self.last_seq, "first_time": self.first_time,
               "last_time": self.last_time, "frames": self.frames, "length_px": round(length, 1),
               "peak_prob": self.peak_prob, "peak_seq": self.peak_seq, "bbox_at_peak": list(self.peak_box),
               "clipped_by_view": self.clipped}
        if mm_per_px:
            out["length_mm"] = round(length * mm_per_px, 1)
        return out


@dataclass
class TrackUpdate:
    track_ids: list[int]                    # per defect of the frame
    started: list[Track] = field(default_factory=list)
    closed: list[Track] = field(default_factory=list)


class DefectTracker:
    """Not thread-safe: the inference thread owns it.

    `speed_px_per_frame`: the strip's shift between consecutive captured frames
    along `axis` (signed), when known; None learns it from matched tracks.
    `max_shift_px` bounds how far a defect may move between frames before the
    speed is known.
    """

    def __init__(self, *, axis: int = 0, max_missed: int = 5, speed_px_per_frame: float | None = None,
                 max_shift_px: int = 200, tolerance_px: int = 24, ids: Iterator[int] | None = None) -> None:
        self.axis, self.max_missed = axis, max_missed
        self.fixed_speed = speed_px_per_frame
        self.speed = speed_px_per_frame or 0.0
        self._speed_known = speed_px_per_frame is not None
        self.max_shift_px, self.tolerance_px = max_shift_px, tolerance_px
        self.open: list[Track] = []
        self._ids = ids if ids is not None else itertools.count(1)  # shared by the cameras of one service: ids stay unique
        self._last_seq: int | None = None
        self._recent_shifts: deque[float] = deque(maxlen=64)

    def update(self, seq: int, frame_time: float, defects: list[Defect], frame_shape: tuple[int, int]) -> TrackUpdate:
        step = 1 if self._last_seq is None else max(1, seq - self._last_seq)
        self._last_seq = seq
        across = 1 - self.axis
        pairs = []
        for ti, t in enumerate(self.open):
            shift = self.speed * (seq - t.last_seq)
            t_span = _span(t.box, self.axis)
            for di, d in enumerate(defects):
                if d.class_index != t.class_index:
                    continue
                if _gap(_span(t.box, across), _span(d.bbox, across)) > 0:
                    continue
                d_span = _span(d.bbox, self.axis)
                moved = (d_span[0] + d_span[1]) / 2 - (t_span[0] + t_span[1]) / 2
                miss = abs(moved - shift)
                limit = self.tolerance_px + (t_span[1] - t_span[0]) / 2 if self._speed_known else self.max_shift_px
                if miss <= limit:
                    pairs.append((miss, ti, di, moved / max(1, seq - t.last_seq)))
        pairs.sort()
        used_t, used_d, ids = set(), set(), [0] * len(defects)
        shifts = []
        out = TrackUpdate(ids)
        for _, ti, di, per_frame in pairs:
            if ti in used_t or di in used_d:
                continue
            used_t.add(ti)
            used_d.add(di)
            t, d = self.open[ti], defects[di]
            self._extend(t, seq, frame_time, d, frame_shape)
            ids[di] = t.id
            shifts.append(per_frame)
        for di, d in enumerate(defects):
            if di not in used_d:
                t = self._start(seq, frame_time, d, frame_shape)
                ids[di] = t.id
                out.started.append(t)
        if shifts and self.fixed_speed is None:
            # The median of recent matches: one defect's box growing or shrinking as the
            # model sees more or less of it moves its centre, and must not drag the estimate.
            self._recent_shifts.extend(shifts)
            ordered = sorted(self._recent_shifts)
            self.speed = ordered[len(ordered) // 2]
            self._speed_known = True
        still = []
        for t in self.open:
            gone = seq - t.last_seq > self.max_missed * step or self._left_view(t, seq, frame_shape)
            (out.closed if gone else still).append(t)
        self.open = still
        return out

    def close_all(self) -> list[Track]:
        closed, self.open = self.open, []
        return closed

    def _start(self, seq, frame_time, d: Defect, frame_shape) -> Track:
        t = Track(next(self._ids), d.class_index, d.class_name, seq, frame_time, seq, frame_time, d.bbox,
                  d.peak_prob, seq, d.bbox)
        self._sighted(t, seq, d, frame_shape)
        self.open.append(t)
        return t

    def _extend(self, t: Track, seq, frame_time, d: Defect, frame_shape) -> None:
        t.last_seq, t.last_time, t.box, t.frames = seq, frame_time, d.bbox, t.frames + 1
        if d.peak_prob > t.peak_prob:
            t.peak_prob, t.peak_seq, t.peak_box = d.peak_prob, seq, d.bbox
        self._sighted(t, seq, d, frame_shape)

    def _sighted(self, t: Track, seq: int, d: Defect, frame_shape) -> None:
        s = _span(d.bbox, self.axis)
        if len(t.spans) < MAX_SIGHTINGS:  # a defect parked in view for hours must not grow without bound
            t.spans.append((seq, s[0], s[1]))
        t.clipped = t.clipped or self._touches_edge(s, frame_shape)

    def _left_view(self, t: Track, seq: int, frame_shape) -> bool:
        """Where the strip has carried it, the track's box is wholly outside the view."""
        if not self._speed_known or t.last_seq == seq:
            return False
        a, b = _span(t.box, self.axis)
        shift = self.speed * (seq - t.last_seq)
        size = frame_shape[1] if self.axis == 0 else frame_shape[0]
        return b + shift <= 0 or a + shift >= size

    def _touches_edge(self, span: tuple[int, int], frame_shape) -> bool:
        size = frame_shape[1] if self.axis == 0 else frame_shape[0]
        return span[0] <= 0 or span[1] >= size
