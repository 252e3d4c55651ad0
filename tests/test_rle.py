import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from inspect_edge.data.rle import RLEError, parse_rle, rle_area, rle_decode, rle_encode


def test_column_major_one_indexed_by_hand():
    # 3x2 image, column-major order: (0,0)=1 (1,0)=2 (2,0)=3 (0,1)=4 (1,1)=5 (2,1)=6
    m = np.array([[0, 1], [1, 1], [1, 0]], bool)
    assert rle_encode(m) == "2 4"
    m2 = np.array([[1, 0], [0, 0], [1, 1]], bool)
    assert rle_encode(m2) == "1 1 3 1 6 1"
    assert (rle_decode("1 1 3 1 6 1", (3, 2)) == m2).all()


def test_empty_and_full():
    assert rle_encode(np.zeros((4, 5), bool)) == ""
    assert not rle_decode("", (4, 5)).any()
    assert rle_encode(np.ones((4, 5), bool)) == "1 20"
    assert rle_decode("1 20", (4, 5)).all()


@settings(max_examples=200, deadline=None)
@given(
    st.integers(1, 40).flatmap(
        lambda h: st.integers(1, 40).flatmap(lambda w: arrays(np.bool_, (h, w), elements=st.booleans()))
    )
)
def test_encode_decode_are_inverses(mask):
    rle = rle_encode(mask)
    back = rle_decode(rle, mask.shape)
    assert back.dtype == bool and back.shape == mask.shape
    assert (back == mask).all()
    assert rle_encode(back) == rle
    assert rle_area(rle, mask.shape) == mask.sum()


@settings(max_examples=50, deadline=None)
@given(st.sampled_from([(7, 9), (8, 10), (9, 8), (16, 33)]), st.integers(0, 2**32 - 1), st.floats(0.0, 1.0))
def test_inverse_on_odd_and_even_sizes_with_runs(shape, seed, density):
    # Structured masks (blocks of runs), not just salt-and-pepper noise.
    rng = np.random.default_rng(seed)
    mask = np.repeat(rng.random((shape[0], (shape[1] + 1) // 2)) < density, 2, axis=1)[:, : shape[1]]
    assert (rle_decode(rle_encode(mask), shape) == mask).all()


def test_unsorted_and_adjacent_runs_are_accepted():
    a = rle_decode("5 4 1 2 3 2", (4, 2))
    assert a.all()


@pytest.mark.parametrize(
    "rle, fragment",
    [
        ("1 2 3", "odd number"),
        ("1 x", "not a non-negative integer"),
        ("1 -2", "not a non-negative integer"),
        ("1.5 2", "not a non-negative integer"),
        ("0 2", "1-indexed"),
        ("1 0", "length 0"),
        ("19 3", "outside"),
        ("1 5 4 2", "overlap"),
        ("10 2 1 10", "overlap"),
    ],
)
def test_malformed_rle_raises_clear_error(rle, fragment):
    with pytest.raises(RLEError, match=fragment):
        rle_decode(rle, (4, 5))


def test_parse_returns_zero_based_sorted_runs():
    starts, lengths = parse_rle("7 1 1 2", (4, 5))
    assert starts.tolist() == [0, 6] and lengths.tolist() == [2, 1]


def test_full_size_decode_matches_reference_loop():
    # A 256x1600 mask with thousands of runs, checked against a plain loop decode.
    rng = np.random.default_rng(1)
    mask = np.zeros((256, 1600), bool)
    for c in rng.choice(1600, 500, replace=False):
        for _ in range(6):
            r = rng.integers(0, 250)
            mask[r : r + rng.integers(1, 7), c] = True
    rle = rle_encode(mask)
    assert len(rle.split()) // 2 > 2000
    ref = np.zeros(256 * 1600, bool)
    vals = list(map(int, rle.split()))
    for s, n in zip(vals[0::2], vals[1::2]):
        ref[s - 1 : s - 1 + n] = True
    assert (ref.reshape(1600, 256).T == mask).all()
    assert (rle_decode(rle, (256, 1600)) == mask).all()


@pytest.mark.parametrize("rle", ["9223372036854775808 1", "1 99999999999999999999999", "5 9223372036854775000", "401 1"])
def test_values_no_image_can_hold_are_refused_without_overflow(rle):
    with pytest.raises(RLEError, match="outside the image"):
        parse_rle(rle, (20, 20))
