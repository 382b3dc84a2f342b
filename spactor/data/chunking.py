"""Chunk lengths for span corruption, and packing documents into fixed-length chunks.

Span corruption turns a raw chunk of ``raw_length`` tokens into an encoder input of
``input_length`` tokens (non-noise tokens + one sentinel per noise span + EOS) and a
target (one sentinel per span + noise tokens + EOS). The counts depend only on the
length, so choosing ``raw_length`` right gives every batch the same fixed shapes with no
padding — T5's ``random_spans_helper``; 512 → 568 raw tokens, 114 target tokens.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np


def noise_span_counts(length: int, noise_density: float, mean_noise_span_length: float) -> tuple[int, int]:
    """``(num_noise_tokens, num_noise_spans)`` that T5's ``random_spans_noise_mask``
    uses for a chunk of ``length`` tokens: noise clamped to [1, length-1], at least one
    span. This is the one implementation of the counting rule; the span-corruption
    objective, the raw-length rule below and the validation all call it.

    The arithmetic is the mask's: float32 products and quotients rounded half to even
    (``tf.round``), so where ``length * noise_density`` is a .5 in float32 but not in
    float64 (190 at 0.15: 28.500002 vs 28.499999) the count is T5's (29, not 28).

    One deliberate cap T5 lacks: at most ``num_noise`` noise spans and ``length -
    num_noise`` non-noise ones. T5 would build empty segments there (density above
    about μ/(μ+1), or μ < 1), merging spans so that the length changes per example.
    """
    f32 = np.float32
    num_noise = int(np.round(f32(length) * f32(noise_density)))
    num_noise = min(max(num_noise, 1), length - 1)
    num_spans = max(int(np.round(f32(num_noise) / f32(mean_noise_span_length))), 1)
    return num_noise, min(num_spans, num_noise, length - num_noise)


def corrupted_lengths(
    raw_length: int, noise_density: float, mean_noise_span_length: float
) -> tuple[int, int]:
    """``(input_length, target_length)`` after corrupting ``raw_length`` tokens, each with
    one EOS: inputs keep the non-noise tokens and one sentinel per span, targets hold
    one sentinel per span and the noise tokens."""
    num_noise, num_spans = noise_span_counts(raw_length, noise_density, mean_noise_span_length)
    return raw_length - num_noise + num_spans + 1, num_noise + num_spans + 1


def span_corruption_lengths(
    input_length: int, noise_density: float = 0.15, mean_noise_span_length: float = 3.0
) -> tuple[int, int]:
    """``(raw_length, target_length)``: the longest raw chunk whose corrupted input fits
    in ``input_length`` tokens, and the target length it then has (T5's
    ``random_spans_helper``, including its rule at density 0.5).

    128 → (141, 29), 512 → (568, 114), 1024 → (1137, 229) at density 0.15, μ = 3;
    256 → (382, 256), 512 → (766, 512) at 0.5, μ = 3; 1024 → (1818, 1024) at 0.5, μ = 8.

    Differs from T5's helper only where that helper's own float64 counts are not the
    ones its mask uses (a float32 .5, or zero noise tokens at tiny lengths or densities):
    here the counts are always the mask's, so the returned lengths are the real shapes.
    One case of that, deliberate: at density 0.5 and μ 1 the raw chunk is one token
    longer than T5's (511 vs 510 for 512; every input length divisible by 4). There T5's
    counts give more noise spans than non-noise tokens (256 and 255 at 511), a mask it
    cannot build; spactor's span cap makes it 255 spans, 511 inputs and 512 targets.
    """
    if input_length < 3:  # the shortest corruptible chunk (2 tokens) becomes 3 inputs
        raise ValueError(f"input_length must be >= 3, got {input_length}")
    if not 0.0 < noise_density < 1.0:
        raise ValueError(f"noise_density must be in (0, 1), got {noise_density}")
    if not mean_noise_span_length > 0.0:
        raise ValueError(f"mean_noise_span_length must be > 0, got {mean_noise_span_length}")
    # Corrupted length grows by at most one per raw token, and input_length - 1 raw
    # tokens always fit (at most one sentinel per noise token, plus EOS): start there
    # and extend while the next length still fits.
    raw_length = input_length - 1
    while corrupted_lengths(raw_length + 1, noise_density, mean_noise_span_length)[0] <= input_length:
        raw_length += 1
    target_length = corrupted_lengths(raw_length, noise_density, mean_noise_span_length)[1]
    # T5's special case: at density 0.5 the target can come out one longer than the
    # input; drop one raw token so both match the (likely round) input length. T5 then
    # takes the target one shorter; it is recounted here, because dropping a non-noise
    # token can leave it as it was or shorten the input instead (e.g. 9 at μ = 2), and
    # the shapes returned must be the ones the mask produces.
    if noise_density == 0.5 and target_length > input_length:
        raw_length -= 1
        target_length = corrupted_lengths(raw_length, noise_density, mean_noise_span_length)[1]
    return raw_length, target_length


def raw_chunk_length(
    input_length: int, noise_density: float = 0.15, mean_noise_span_length: float = 3.0
) -> int:
    """Raw tokens per chunk so that span corruption yields exactly ``input_length``."""
    return span_corruption_lengths(input_length, noise_density, mean_noise_span_length)[0]


# --------------------------------------------------------------------------- packing


class Packer:
    """Concatenates token lists and cuts the stream into chunks of exactly ``length``.

    Whatever does not fill a chunk stays in ``carry`` and starts the next one; nothing
    is padded or dropped. ``carry`` (< ``length`` tokens between ``add`` calls that drain
    it) is the only state, so a loader can checkpoint it.
    """

    def __init__(self, length: int, carry: Iterable[int] = ()) -> None:
        if length < 1:
            raise ValueError(f"chunk length must be >= 1, got {length}")
        self.length = length
        self.carry: list[int] = list(carry)

    def add(self, tokens: Iterable[int]) -> None:
        self.carry.extend(tokens)

    def take_chunks(self) -> list[list[int]]:
        """Remove and return every full chunk currently buffered."""
        n = len(self.carry) // self.length
        chunks = [self.carry[i * self.length : (i + 1) * self.length] for i in range(n)]
        del self.carry[: n * self.length]
        return chunks


def pack_documents(docs: Iterable[list[int]], length: int, eos_id: int | None) -> Iterator[list[int]]:
    """Append ``eos_id`` to every document (``None``: nothing, T5's
    ``reduce_concat_tokens``), concatenate, cut into ``length``-token chunks; a final
    partial chunk is dropped (streams never end in training)."""
    packer = Packer(length)
    separator = () if eos_id is None else (eos_id,)
    for doc in docs:
        packer.add(doc)
        packer.add(separator)
        yield from packer.take_chunks()
