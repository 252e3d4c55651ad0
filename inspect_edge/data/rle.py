"""Severstal run-length encoding, exactly as the competition defines it.

A mask is flattened column-major (top to bottom, then left to right) and written as
space-separated `start length` pairs with 1-indexed starts. Everything here is
vectorised numpy: a 256x1600 mask with thousands of runs decodes in well under a
millisecond or two, because the runs become one cumulative sum, not a pixel loop.
"""

from __future__ import annotations

import re

import numpy as np

# ASCII digits only: int() would also accept "+5", "٣" or "1_000", none of which
# Severstal ever writes, so they are reported rather than guessed at.
_VALID = re.compile(r"\s*(?:\d+\s+)*\d+\s*|\s*", re.ASCII)
_TOKEN = re.compile(r"\d+", re.ASCII)


class RLEError(ValueError):
    """An RLE string is malformed; the message says what and where."""


def rle_encode(mask: np.ndarray) -> str:
    """bool (H, W) -> Severstal RLE ("" for an empty mask)."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"rle_encode needs a 2-D mask, got shape {mask.shape}")
    flat = mask.astype(bool).ravel(order="F")
    padded = np.concatenate(([False], flat, [False]))
    edges = np.flatnonzero(padded[1:] != padded[:-1])
    if edges.size == 0:
        return ""
    starts = edges[0::2]
    lengths = edges[1::2] - starts
    pairs = np.empty(starts.size * 2, dtype=np.int64)
    pairs[0::2] = starts + 1
    pairs[1::2] = lengths
    return " ".join(map(str, pairs.tolist()))


def parse_rle(rle: str, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Validate an RLE string against an image shape; return (starts0, lengths) sorted.

    Raises RLEError for non-numbers, an odd count, zero lengths, runs outside the image
    and overlapping runs. Runs may come in any order (they are sorted here), and
    adjacent runs (one ending where the next starts) are accepted.
    """
    if rle is None:
        rle = ""
    if not isinstance(rle, str):
        raise RLEError(f"RLE must be a string, got {type(rle).__name__}")
    if not _VALID.fullmatch(rle):
        bad = next(t for t in rle.split() if not _TOKEN.fullmatch(t))
        raise RLEError(f"not a non-negative integer: {bad[:20]!r}")
    tokens = rle.split()
    total = int(shape[0]) * int(shape[1])
    # Checked as Python ints first: int64 would overflow (or silently wrap in start + length)
    # on values no image can hold.
    for i, t in enumerate(tokens):
        if len(t) > 18 or int(t) > total:
            raise RLEError(f"run {i // 2 + 1}: {'start' if i % 2 == 0 else 'length'} {t[:24]}"
                           f"{'...' if len(t) > 24 else ''} is outside the image (it has {total} pixels)")
    values = np.array(tokens, dtype=np.int64) if tokens else np.empty(0, np.int64)
    if values.size % 2:
        raise RLEError(f"odd number of values ({values.size}); RLE needs start/length pairs")
    starts, lengths = values[0::2], values[1::2]
    if values.size == 0:
        return starts, lengths
    if (starts < 1).any():
        i = int(np.argmax(starts < 1))
        raise RLEError(f"run {i + 1}: start {starts[i]} < 1 (starts are 1-indexed)")
    if (lengths < 1).any():
        i = int(np.argmax(lengths < 1))
        raise RLEError(f"run {i + 1}: length {lengths[i]} < 1")
    ends = starts - 1 + lengths  # exclusive, 0-indexed
    if (ends > total).any():
        i = int(np.argmax(ends > total))
        raise RLEError(
            f"run {i + 1} ({starts[i]} {lengths[i]}) ends at pixel {ends[i]}, "
            f"outside the {shape[0]}x{shape[1]} image ({total} pixels)"
        )
    order = np.argsort(starts, kind="stable")
    s0, ln, en = starts[order] - 1, lengths[order], ends[order]
    if s0.size > 1 and (s0[1:] < en[:-1]).any():
        j = int(np.argmax(s0[1:] < en[:-1]))
        a, b = order[j], order[j + 1]
        raise RLEError(
            f"runs {a + 1} ({starts[a]} {lengths[a]}) and {b + 1} ({starts[b]} {lengths[b]}) overlap"
        )
    return s0, ln


def rle_decode(rle: str, shape: tuple[int, int]) -> np.ndarray:
    """Severstal RLE -> bool (H, W). Raises RLEError on malformed input."""
    h, w = int(shape[0]), int(shape[1])
    starts, lengths = parse_rle(rle, (h, w))
    # +1 where a run starts, -1 where it ends; the running sum is then 1 inside runs.
    # Runs never overlap (checked above) so each index is written at most once per array.
    step = np.zeros(h * w + 1, dtype=np.int8)
    step[starts] = 1
    step[starts + lengths] -= 1
    flat = np.cumsum(step[:-1], dtype=np.int8).view(bool)
    return np.ascontiguousarray(flat.reshape((w, h)).T)


def rle_area(rle: str, shape: tuple[int, int]) -> int:
    """Pixel count of a valid RLE without building the mask."""
    return int(parse_rle(rle, shape)[1].sum())
