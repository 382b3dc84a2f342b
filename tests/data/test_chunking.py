import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from spactor.data.chunking import (
    Packer,
    corrupted_lengths,
    noise_span_counts,
    pack_documents,
    raw_chunk_length,
    span_corruption_lengths,
)


@pytest.mark.parametrize(
    "input_length, raw_length, target_length",
    [(128, 141, 29), (512, 568, 114), (1024, 1137, 229)],
)
def test_t5_lengths(input_length, raw_length, target_length):
    assert span_corruption_lengths(input_length) == (raw_length, target_length)
    assert raw_chunk_length(input_length) == raw_length
    assert corrupted_lengths(raw_length, 0.15, 3.0) == (input_length, target_length)


def test_noise_counts_match_t5():
    assert noise_span_counts(568, 0.15, 3.0) == (85, 28)
    assert noise_span_counts(10, 0.01, 3.0) == (1, 1)  # clamped like random_spans_noise_mask
    assert noise_span_counts(2, 0.9, 3.0) == (1, 1)


def test_density_half_matches_t5_special_case():
    raw, target = span_corruption_lengths(512, 0.5, 3.0)
    assert (raw, target) == (766, 512)


@given(
    input_length=st.integers(3, 4096),
    density=st.floats(0.01, 0.49),
    mean=st.floats(1.0, 10.0),
)
def test_raw_length_is_the_longest_that_fits(input_length, density, mean):
    raw, target = span_corruption_lengths(input_length, density, mean)
    inputs, targets = corrupted_lengths(raw, density, mean)
    assert inputs <= input_length and targets == target
    assert corrupted_lengths(raw + 1, density, mean)[0] > input_length
    assert raw >= input_length - 1


def test_bad_arguments():
    with pytest.raises(ValueError):
        span_corruption_lengths(2)
    with pytest.raises(ValueError):
        span_corruption_lengths(512, noise_density=0.0)
    with pytest.raises(ValueError):
        span_corruption_lengths(512, mean_noise_span_length=0.5)


def test_pack_documents_round_trip():
    docs = [[5, 6, 7], [8], [], [9, 10, 11, 12, 13], [14, 15]]
    stream = [t for d in docs for t in d + [1]]
    chunks = list(pack_documents(docs, 4, eos_id=1))
    assert all(len(c) == 4 for c in chunks)
    assert list(itertools.chain(*chunks)) == stream[: 4 * (len(stream) // 4)]


def test_packer_carries_remainder():
    packer = Packer(3, carry=[1, 2])
    assert packer.take_chunks() == []
    packer.add([3, 4, 5, 6, 7, 8, 9])
    assert packer.take_chunks() == [[1, 2, 3], [4, 5, 6], [7, 8, 9]]
    assert packer.carry == []
    packer.add([10])
    assert packer.take_chunks() == [] and packer.carry == [10]
