import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

import reference_t5  # tests/reference_t5.py: tests/ is on sys.path (rootdir conftest)
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


@pytest.mark.parametrize(
    "input_length, density, mean, raw_length, target_length",
    [(256, 0.5, 3.0, 382, 256), (512, 0.5, 3.0, 766, 512), (1024, 0.5, 8.0, 1818, 1024)],
)
def test_density_half_matches_t5_special_case(input_length, density, mean, raw_length, target_length):
    # The numbers T5's random_spans_helper gives (the reference is written from its code).
    assert reference_t5.random_spans_helper(input_length, density, mean) == (raw_length, target_length)
    assert span_corruption_lengths(input_length, density, mean) == (raw_length, target_length)
    assert corrupted_lengths(raw_length, density, mean) == (input_length, target_length)


@pytest.mark.parametrize("density, mean", [(0.15, 3.0), (0.5, 3.0), (0.5, 8.0), (0.3, 3.0), (0.25, 2.0)])
def test_raw_length_is_t5_helpers(density, mean):
    """Input lengths from 16 to 2048 (every 7th, and the round ones): the raw length is
    T5's helper's, and the lengths returned are the ones T5's mask (float32 counts)
    really produces."""
    for n in [*range(16, 2049, 7), 128, 256, 512, 1024, 2048]:
        raw, target = span_corruption_lengths(n, density, mean)
        assert raw == reference_t5.random_spans_helper(n, density, mean)[0], n
        num_noise, num_spans = reference_t5.noise_span_counts(raw, density, mean)
        assert target == num_noise + num_spans + 1, n
        assert raw - num_noise + num_spans + 1 <= n


def test_noise_count_rounds_in_float32_like_t5():
    # 190 * 0.15 is 28.4999... in float64 but 28.500002 in float32, which tf.round
    # takes to 29; 29 / 3 -> 10 spans.
    assert noise_span_counts(190, 0.15, 3.0) == (29, 10)
    assert reference_t5.noise_span_counts(190, 0.15, 3.0) == (29, 10)
    # Half to even where the product is an exact .5: 0.5 * 383 = 191.5 -> 192.
    assert noise_span_counts(383, 0.5, 3.0) == (192, 64)
    for density, mean in [(0.15, 3.0), (0.5, 3.0), (0.3, 2.5), (0.05, 8.0)]:
        for n in range(2, 4097):
            assert noise_span_counts(n, density, mean) == reference_t5.noise_span_counts(n, density, mean)


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
        span_corruption_lengths(512, mean_noise_span_length=0.0)


def test_pack_documents_round_trip():
    docs = [[5, 6, 7], [8], [], [9, 10, 11, 12, 13], [14, 15]]
    stream = [t for d in docs for t in d + [1]]
    chunks = list(pack_documents(docs, 4, eos_id=1))
    assert all(len(c) == 4 for c in chunks)
    assert list(itertools.chain(*chunks)) == stream[: 4 * (len(stream) // 4)]


def test_pack_documents_without_separator():
    docs = [[5, 6, 7], [8], [], [9, 10, 11, 12, 13]]
    chunks = list(pack_documents(docs, 3, eos_id=None))
    assert chunks == [[5, 6, 7], [8, 9, 10], [11, 12, 13]]


def test_packer_carries_remainder():
    packer = Packer(3, carry=[1, 2])
    assert packer.take_chunks() == []
    packer.add([3, 4, 5, 6, 7, 8, 9])
    assert packer.take_chunks() == [[1, 2, 3], [4, 5, 6], [7, 8, 9]]
    assert packer.carry == []
    packer.add([10])
    assert packer.take_chunks() == [] and packer.carry == [10]
