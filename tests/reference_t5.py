"""Per-example numpy reference of T5's span corruption.

A line-by-line numpy rendering of T5's ``random_spans_noise_mask``,
``noise_span_to_unique_sentinel`` and ``nonnoise_span_to_unique_sentinel``
(google-research/text-to-text-transfer-transformer, ``t5/data/preprocessors.py``), one
example at a time with an ``np.random.Generator``. It is meant to be obviously correct,
not fast: the tests use it as the statistical reference for the vectorised torch version
in ``span_corruption.py``, and the benchmarks as the baseline.

It deliberately does not import ``span_corruption.py`` or ``spactor.data.chunking``; the
counting rule and ``random_spans_helper`` are written again here from T5's code so that a
mistake in one shows up as a disagreement.
"""

from __future__ import annotations

import numpy as np

from spactor.objectives.base import Vocab


def noise_span_counts(length: int, noise_density: float, mean_noise_span_length: float) -> tuple[int, int]:
    """(num_noise_tokens, num_noise_spans) for a chunk of ``length`` tokens, as T5's
    ``random_spans_noise_mask`` computes them in the graph: ``to_float`` is float32, the
    Python float operand becomes float32 too, and ``tf.round`` rounds half to even."""
    num_noise_tokens = int(np.round(np.float32(length) * np.float32(noise_density)))
    num_noise_tokens = min(max(num_noise_tokens, 1), length - 1)
    num_noise_spans = int(np.round(np.float32(num_noise_tokens) / np.float32(mean_noise_span_length)))
    num_noise_spans = max(num_noise_spans, 1)
    # Not T5: the same cap as span_corruption.span_counts, where T5 would create empty
    # segments (it only binds at density above ~μ/(μ+1) or μ < 1).
    num_noise_spans = min(num_noise_spans, num_noise_tokens, length - num_noise_tokens)
    return num_noise_tokens, num_noise_spans


def _helper_counts(
    tokens_length: int, noise_density: float, mean_noise_span_length: float
) -> tuple[int, int]:
    """The counts inside T5's ``random_spans_helper``: Python floats (float64) and
    ``round``, no clamping — not always the mask's counts."""
    num_noise_tokens = int(round(tokens_length * noise_density))
    return num_noise_tokens, int(round(num_noise_tokens / mean_noise_span_length))


def random_spans_helper(
    inputs_length: int,
    noise_density: float,
    mean_noise_span_length: float,
    counts=_helper_counts,
) -> tuple[int, int]:
    """T5's ``random_spans_helper`` with one sentinel per span: (tokens_length,
    targets_length). ``counts`` defaults to the helper's own float64 arithmetic; pass
    ``noise_span_counts`` to run the same search on the counts the mask really uses."""

    def lengths(tokens_length: int) -> tuple[int, int]:
        num_noise_tokens, num_noise_spans = counts(tokens_length, noise_density, mean_noise_span_length)
        num_nonnoise_tokens = tokens_length - num_noise_tokens
        return num_nonnoise_tokens + num_noise_spans + 1, num_noise_tokens + num_noise_spans + 1

    tokens_length = inputs_length - 1
    while lengths(tokens_length + 1)[0] <= inputs_length:
        tokens_length += 1
    inputs_length, targets_length = lengths(tokens_length)
    if noise_density == 0.5 and targets_length > inputs_length:
        tokens_length -= 1
        targets_length -= 1
    return tokens_length, targets_length


def random_segmentation(num_items: int, num_segments: int, rng: np.random.Generator) -> np.ndarray:
    """Split ``num_items`` into ``num_segments`` positive lengths, uniformly at random.

    As in T5: shuffle a 0/1 vector with ``num_segments - 1`` ones over the
    ``num_items - 1`` gaps; each one marks the first item of a new segment.
    """
    first_in_segment = np.zeros(num_items, dtype=np.int64)
    first_in_segment[1:] = rng.permutation(np.arange(num_items - 1) < num_segments - 1)
    segment_id = np.cumsum(first_in_segment)
    return np.bincount(segment_id, minlength=num_segments)


def random_spans_noise_mask(
    length: int, noise_density: float, mean_noise_span_length: float, rng: np.random.Generator
) -> np.ndarray:
    """Bool mask of ``length``: noise spans interleaved with non-noise spans, starting
    with non-noise (T5 with ``random_roll=False``)."""
    num_noise_tokens, num_noise_spans = noise_span_counts(length, noise_density, mean_noise_span_length)
    num_nonnoise_tokens = length - num_noise_tokens
    noise_span_lengths = random_segmentation(num_noise_tokens, num_noise_spans, rng)
    nonnoise_span_lengths = random_segmentation(num_nonnoise_tokens, num_noise_spans, rng)
    interleaved_span_lengths = np.stack([nonnoise_span_lengths, noise_span_lengths], axis=1).reshape(-1)
    span_starts = np.cumsum(interleaved_span_lengths)[:-1]
    span_start_indicator = np.zeros(length, dtype=np.int64)
    span_start_indicator[span_starts] = 1
    span_num = np.cumsum(span_start_indicator)
    return span_num % 2 == 1


def noise_span_to_unique_sentinel(tokens: np.ndarray, noise_mask: np.ndarray, vocab: Vocab) -> np.ndarray:
    """Replace each run of noise tokens by one sentinel, numbered from 0 in order."""
    prev_token_is_noise = np.concatenate([[False], noise_mask[:-1]])
    first_noise_tokens = noise_mask & ~prev_token_is_noise
    subsequent_noise_tokens = noise_mask & prev_token_is_noise
    sentinel = vocab.first_sentinel_id + 1 - np.cumsum(first_noise_tokens)
    tokens = np.where(first_noise_tokens, sentinel, tokens)
    return tokens[~subsequent_noise_tokens]


def nonnoise_span_to_unique_sentinel(tokens: np.ndarray, noise_mask: np.ndarray, vocab: Vocab) -> np.ndarray:
    return noise_span_to_unique_sentinel(tokens, ~noise_mask, vocab)


def span_corrupt_example(
    tokens: np.ndarray,
    noise_density: float,
    mean_noise_span_length: float,
    vocab: Vocab,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(inputs, targets, noise_mask) for one raw chunk; inputs and targets end in EOS."""
    tokens = np.asarray(tokens, dtype=np.int64)
    noise_mask = random_spans_noise_mask(len(tokens), noise_density, mean_noise_span_length, rng)
    inputs = noise_span_to_unique_sentinel(tokens, noise_mask, vocab)
    targets = nonnoise_span_to_unique_sentinel(tokens, noise_mask, vocab)
    eos = np.array([vocab.eos_id], dtype=np.int64)
    return np.concatenate([inputs, eos]), np.concatenate([targets, eos]), noise_mask


def span_corrupt_batch(
    originals: np.ndarray,
    noise_density: float,
    mean_noise_span_length: float,
    vocab: Vocab,
    rng: np.random.Generator,
    pad_to: int | None = None,
) -> dict[str, np.ndarray]:
    """Loop ``span_corrupt_example`` over the rows of ``originals`` (B, N) and stack;
    the same field names as the torch transform."""
    inputs, targets, masks = [], [], []
    for row in np.asarray(originals):
        i, t, m = span_corrupt_example(row, noise_density, mean_noise_span_length, vocab, rng)
        if pad_to is not None and len(i) < pad_to:
            i = np.concatenate([i, np.full(pad_to - len(i), vocab.pad_id, dtype=np.int64)])
        inputs.append(i)
        targets.append(t)
        masks.append(m)
    targets_arr = np.stack(targets)
    decoder_input = np.concatenate(
        [np.full((len(targets), 1), vocab.pad_id, dtype=np.int64), targets_arr[:, :-1]], axis=1
    )
    return {
        "encoder_input": np.stack(inputs),
        "decoder_target": targets_arr,
        "decoder_input": decoder_input,
        "noise_mask": np.stack(masks),
    }
