"""T5 span corruption, vectorised over the batch in torch.

The algorithm is T5's ``random_spans_noise_mask`` followed by
``noise_span_to_unique_sentinel`` (inputs) and ``nonnoise_span_to_unique_sentinel``
(targets); ``tests/reference_t5.py`` is the per-example numpy version the
tests hold this one to.

For a raw chunk of ``N`` tokens:

* ``num_noise = round(N * density)`` clamped to ``[1, N - 1]``;
* ``num_spans = max(1, round(num_noise / mean_noise_span_length))`` (both in float32,
  rounded half to even, as T5's in-graph ``tf.round``);
* the noise and the non-noise tokens are each split into ``num_spans`` positive parts by
  a uniformly random composition, and the parts are interleaved starting with non-noise;
* each noise span becomes one sentinel in the encoder input, each non-noise span one
  sentinel in the target (``<extra_id_k>``, k counting from 0 in order), and both get EOS.

The counts depend only on ``N``, so every example of a batch has the same encoder and
target length (512 / 114 for N = 568 at 0.15 / 3.0) and the whole batch is corrupted with
a handful of tensor ops on the batch's device, without host syncs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from spactor.architectures.base import DECODE, ENCODE
from spactor.data.chunking import noise_span_counts, span_corruption_lengths
from spactor.checks import CheckContext, fail
from spactor.objectives.noise import row_rand
from spactor.objectives.base import (
    Batch,
    ObjectiveContext,
    SharedForward,
    Vocab,
    check_objective_fields,
    unpadded_key,
    unpadded_marker,
)
from spactor.objectives.token_loss import TokenTargetLoss
from spactor.registry import OBJECTIVES

CONFIG_PATH = "objectives.span_corruption"


@dataclass
class SpanCorruptionConfig:
    noise_density: float = 0.15
    mean_noise_span_length: float = 3.0
    weight: float = 1.0  # knob: λ for this loss; the runner applies it
    # T5's z-loss coefficient (Mesh TF / T5X: 1e-4): z_loss · logsumexp(logits)² per
    # target token, logged as loss/<name>_z and weighted by λ like the cross-entropy.
    z_loss: float = 0.0

    def check(self, where: str, ctx: CheckContext) -> None:
        check_objective_fields(where, self)
        check_sentinel_budget(where, ctx.input_length, self.noise_density, self.mean_noise_span_length,
                              ctx.num_sentinels)


@dataclass(frozen=True)
class SpanCounts:
    """How a raw chunk of ``length`` tokens is split; the same for every example."""

    length: int
    num_noise: int
    num_spans: int

    @property
    def num_nonnoise(self) -> int:
        return self.length - self.num_noise

    @property
    def encoder_length(self) -> int:
        """Non-noise tokens + one sentinel per noise span + EOS (before padding)."""
        return self.num_nonnoise + self.num_spans + 1

    @property
    def target_length(self) -> int:
        """Noise tokens + one sentinel per span + EOS."""
        return self.num_noise + self.num_spans + 1


def span_counts(length: int, noise_density: float, mean_noise_span_length: float) -> SpanCounts:
    """T5's counting rule for a raw chunk of ``length`` tokens: the float32, half-to-even
    arithmetic of ``random_spans_noise_mask``, with spactor's cap that keeps every span
    non-empty (``spactor.data.chunking.noise_span_counts`` holds the one implementation)."""
    if length < 2:
        raise ValueError(f"{CONFIG_PATH}: span corruption needs at least 2 tokens per chunk, got {length}")
    num_noise, num_spans = noise_span_counts(length, noise_density, mean_noise_span_length)
    return SpanCounts(length, num_noise, num_spans)


def check_sentinels(counts: SpanCounts, vocab: Vocab, name: str = "span_corruption") -> None:
    """Refuse a chunk that needs more sentinels than the vocabulary has, rather than
    running sentinel ids down into ordinary tokens."""
    if counts.num_spans > vocab.num_sentinels:
        raise ValueError(
            f"objectives.{name}: a raw chunk of {counts.length} tokens gives {counts.num_spans} noise spans "
            f"({counts.num_noise} noise tokens), an encoder input of {counts.encoder_length} tokens, but the "
            f"vocabulary has only {vocab.num_sentinels} sentinels. Use a shorter input_length (at most ~1809 "
            f"tokens at noise_density 0.15, mean_noise_span_length 3.0), a lower noise_density or a longer "
            f"mean_noise_span_length."
        )


def max_raw_length(input_length: int, noise_density: float, mean_noise_span_length: float) -> int:
    """Raw chunk length for an encoder input of ``input_length`` tokens: T5's
    ``random_spans_helper`` (the longest chunk that fits, one shorter at density 0.5
    when the target would be longer than the input), from
    ``spactor.data.chunking.span_corruption_lengths`` so that data and objective agree."""
    if input_length < 3:  # a 2-token chunk, the shortest there is, corrupts to 3
        raise ValueError(f"{CONFIG_PATH}: input_length {input_length} is too short for span corruption")
    return span_corruption_lengths(input_length, noise_density, mean_noise_span_length)[0]


def check_sentinel_budget(where: str, input_length: int, density: float, mu: float, sentinels: int) -> None:
    """Refuse inputs that need more noise spans than there are sentinels (and inputs too
    short to corrupt), with the numbers and the longest input_length that would fit."""
    settings = f"{where}: noise_density {density}, mean_noise_span_length {mu}"

    def spans(length: int) -> int | None:
        """Noise spans of the raw chunk an input of ``length`` tokens is cut from."""
        try:
            return span_counts(max_raw_length(length, density, mu), density, mu).num_spans
        except ValueError:
            return None  # too short to corrupt at all

    def raw_spans(length: int) -> int:
        return span_counts(length, density, mu).num_spans

    # Spans only grow with the chunk, which is (about) as long as the input or longer:
    # for an absurd length, answer without walking up to the raw chunk length.
    if input_length > HUGE_INPUT and raw_spans(input_length) > sentinels:
        needed = raw_spans(input_length)
    else:
        needed = spans(input_length)
        if needed is None:
            fail(
                "data.input_length",
                input_length,
                f"too short for span corruption ({settings}): the shortest corrupted input is 3 tokens",
            )
        if needed <= sentinels:
            return
    longest = _longest_fitting(input_length, spans, raw_spans, sentinels)
    fail(
        "data.input_length",
        input_length,
        f"span corruption ({settings}) would need at least {needed} noise spans per chunk, but there are "
        f"only {sentinels} sentinels; use data.input_length <= {longest}, a lower noise_density or a "
        f"longer mean_noise_span_length",
    )


HUGE_INPUT = 1 << 16


def _bisect_last(lo: int, hi: int, fits: Callable[[int], bool]) -> int:
    """Largest n in [lo, hi) with ``fits(n)``, for a monotone ``fits`` true at ``lo`` and
    false at ``hi``."""
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid
    return lo


def _longest_fitting(
    upper: int, spans: Callable[[int], int | None], raw_spans: Callable[[int], int], sentinels: int
) -> int:
    """Largest input length < ``upper`` whose chunk needs <= ``sentinels`` spans (the
    count never decreases with the length). ``raw_spans`` (cheap: spans of a chunk of
    exactly n tokens) first bounds the search, so it stays fast for huge ``upper``."""
    if (spans(2) or 0) > sentinels:
        return 0
    bound = upper
    if raw_spans(upper) > sentinels:
        bound = _bisect_last(2, upper, lambda n: raw_spans(n) <= sentinels) + 1
    if (spans(bound) or 0) <= sentinels:
        return bound  # degenerate settings (raw chunk shorter than the input): a safe answer
    return _bisect_last(2, bound, lambda n: (spans(n) or 0) <= sentinels)


# -- the vectorised transform ------------------------------------------------------------


def _random_composition(
    batch_size: int, total: int, parts: int, generator: torch.Generator, device: torch.device
) -> torch.Tensor:
    """``(batch_size, parts)`` positive ints summing to ``total``, each row uniform over
    all compositions: a uniformly random choice of ``parts - 1`` of the ``total - 1`` gaps
    between items (what T5 gets by shuffling a 0/1 vector)."""
    if parts == 1:
        return torch.full((batch_size, 1), total, dtype=torch.long, device=device)
    # float64 keys: ties (which topk would break by position) are then ~never an issue.
    keys = row_rand((batch_size, total - 1), generator=generator, device=device, dtype=torch.float64)
    cuts = keys.topk(parts - 1, dim=1, sorted=False).indices.sort(dim=1).values + 1
    first = torch.zeros(batch_size, 1, dtype=torch.long, device=device)
    last = torch.full((batch_size, 1), total, dtype=torch.long, device=device)
    return torch.cat([first, cuts, last], dim=1).diff(dim=1)


def random_span_index(
    batch_size: int, counts: SpanCounts, generator: torch.Generator, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """``(batch_size, length)`` index of the span each position falls in: even = non-noise,
    odd = noise; span ``2k`` / ``2k + 1`` is the k-th non-noise / noise span."""
    device = torch.device(device)
    noise = _random_composition(batch_size, counts.num_noise, counts.num_spans, generator, device)
    nonnoise = _random_composition(batch_size, counts.num_nonnoise, counts.num_spans, generator, device)
    lengths = torch.stack([nonnoise, noise], dim=2).reshape(batch_size, 2 * counts.num_spans)
    # Spans 1..2S-1 start at the running sums; all starts are distinct and inside (0, N).
    starts = lengths.cumsum(dim=1)[:, :-1]
    indicator = torch.zeros(batch_size, counts.length, dtype=torch.long, device=device)
    indicator.scatter_(1, starts, 1)
    return indicator.cumsum(dim=1)


def random_spans_noise_mask(
    batch_size: int,
    length: int,
    noise_density: float,
    mean_noise_span_length: float,
    generator: torch.Generator,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """T5's ``random_spans_noise_mask`` for a whole batch: ``(batch_size, length)`` bool."""
    counts = span_counts(length, noise_density, mean_noise_span_length)
    return random_span_index(batch_size, counts, generator, device) % 2 == 1


def _compact(values: torch.Tensor, keep: torch.Tensor, width: int) -> torch.Tensor:
    """Left-pack ``values[keep]`` row by row into ``(B, width)``; every row keeps exactly
    ``width`` items. Scatter instead of boolean indexing so no host sync is needed."""
    dest = keep.long().cumsum(dim=1) - 1
    dest = torch.where(keep, dest, width)  # dropped items go to a spare column
    out = values.new_zeros(values.shape[0], width + 1)
    out.scatter_(1, dest, values)
    return out[:, :width]


def span_corrupt(
    original: torch.Tensor,
    noise_density: float,
    mean_noise_span_length: float,
    vocab: Vocab,
    generator: torch.Generator,
    pad_to: int | None = None,
    name: str = "span_corruption",
) -> Batch:
    """Corrupt a batch of raw chunks ``(B, N)``.

    Returns ``encoder_input`` ``(B, L)`` (right-padded with ``pad_id`` up to ``pad_to``),
    ``decoder_target`` ``(B, T)``, ``decoder_input`` ``(B, T)`` (target shifted right,
    ``pad_id`` as the start token) and ``noise_mask`` ``(B, N)``. All randomness comes from
    ``generator``, which must live on ``original``'s device.
    """
    if original.dim() != 2:
        raise ValueError(
            f"objectives.{name}: expected raw chunks of shape (B, N), got {tuple(original.shape)}"
        )
    batch_size, length = original.shape
    counts = span_counts(length, noise_density, mean_noise_span_length)
    check_sentinels(counts, vocab, name)
    if pad_to is not None and counts.encoder_length > pad_to:
        raise ValueError(
            f"objectives.{name}: a raw chunk of {length} tokens corrupts to {counts.encoder_length} encoder "
            f"tokens, more than input_length {pad_to}; the data pipeline should cut chunks of at most "
            f"{max_raw_length(pad_to, noise_density, mean_noise_span_length)} tokens"
        )
    device = original.device

    span_index = random_span_index(batch_size, counts, generator, device)
    noise = span_index % 2 == 1
    span_start = torch.ones_like(noise)
    span_start[:, 1:] = span_index[:, 1:] != span_index[:, :-1]
    # Non-noise span k and the noise span k after it share sentinel k (T5 numbers both
    # kinds of span from 0 in order, and they alternate starting with non-noise).
    sentinel = vocab.first_sentinel_id - torch.div(span_index, 2, rounding_mode="floor")
    sentinel = sentinel.to(original.dtype)

    # Encoder: keep non-noise tokens, the first token of each noise span becomes its sentinel.
    enc = _compact(
        torch.where(noise, sentinel, original), ~noise | span_start, counts.num_nonnoise + counts.num_spans
    )
    # Target: the mirror image.
    tgt = _compact(
        torch.where(noise, original, sentinel), noise | span_start, counts.num_noise + counts.num_spans
    )

    eos = torch.full((batch_size, 1), vocab.eos_id, dtype=original.dtype, device=device)
    enc = torch.cat([enc, eos], dim=1)
    tgt = torch.cat([tgt, eos], dim=1)
    if pad_to is not None and pad_to > enc.shape[1]:
        enc = F.pad(enc, (0, pad_to - enc.shape[1]), value=vocab.pad_id)
    dec_in = F.pad(tgt[:, :-1], (1, 0), value=vocab.pad_id)
    return {"encoder_input": enc, "decoder_target": tgt, "decoder_input": dec_in, "noise_mask": noise}


def reconstruct(
    encoder_input: torch.Tensor | Sequence[int], decoder_target: torch.Tensor | Sequence[int], vocab: Vocab
) -> torch.Tensor:
    """Undo span corruption for one example: put each sentinel's span from the target
    back into the input. Returns the original chunk as a 1-D LongTensor.

    Raw chunks carry no padding, so trailing pads are stripped and then the one EOS the
    corruption appended; EOS tokens inside the chunk (document boundaries) stay.
    """

    def body(ids: torch.Tensor | Sequence[int]) -> list[int]:
        seq = [int(t) for t in (ids.tolist() if isinstance(ids, torch.Tensor) else ids)]
        while seq and seq[-1] == vocab.pad_id:
            seq.pop()
        if not seq or seq[-1] != vocab.eos_id:
            raise ValueError("reconstruct: sequence does not end with EOS (before padding)")
        return seq[:-1]

    def is_sentinel(t: int) -> bool:
        return vocab.last_sentinel_id <= t <= vocab.first_sentinel_id

    spans: dict[int, list[int]] = {}
    current: list[int] | None = None
    for t in body(decoder_target):
        if is_sentinel(t):
            current = spans.setdefault(t, [])
        elif current is None:
            raise ValueError("reconstruct: target does not start with a sentinel")
        else:
            current.append(t)

    out: list[int] = []
    for t in body(encoder_input):
        if is_sentinel(t):
            if t not in spans:
                raise ValueError(f"reconstruct: sentinel {t} in the input has no span in the target")
            out.extend(spans[t])
        else:
            out.append(t)
    return torch.tensor(out, dtype=torch.long)


# -- the objective -------------------------------------------------------------------------


class DecoderTargetLoss(TokenTargetLoss):
    """The decoder side every encoder-decoder objective shares (span corruption, prefix-LM,
    UL2): teacher-forced token cross-entropy on ``decoder_target`` with T5's z-loss, on the
    shared decoder pass. The base of an objective whose config has ``z_loss``."""

    # An encoder pass, then a decoder with cross-attention (decoder-only subclasses
    # declare their own alternatives).
    NEEDS = (frozenset({ENCODE, DECODE}),)

    TARGET = "decoder_target"

    def pass_hidden(self, forward: SharedForward) -> torch.Tensor:
        return forward.decode()


class SpanCorruption(DecoderTargetLoss):
    """T5 span corruption: corrupts ``original`` into encoder input / decoder target and
    trains the decoder with teacher forcing (loss summed over target tokens)."""

    ROW_LOCAL_NOISE = True

    KNOBS = ("weight",)
    REQUIRES = ("original",)
    PROVIDES = ("encoder_input", "decoder_input", "decoder_target", "noise_mask")
    NEEDS = (frozenset({ENCODE, DECODE}),)

    def __init__(self, cfg: SpanCorruptionConfig, ctx: ObjectiveContext) -> None:
        super().__init__(cfg, ctx)
        # The config-time rules (ranges, and the sentinel budget at this input length), so
        # a directly built objective fails at build time, not at the first batch.
        cfg.check(f"objectives.{ctx.name}", ctx.check_context())
        self.input_length = ctx.input_length
        self.chunk_length = self.raw_length(ctx.input_length)
        self.counts = span_counts(self.chunk_length, cfg.noise_density, cfg.mean_noise_span_length)

    def raw_length(self, input_length: int) -> int:
        return max_raw_length(input_length, self.cfg.noise_density, self.cfg.mean_noise_span_length)

    @torch.no_grad()
    def transform(self, batch: Batch, rng: torch.Generator) -> Batch:
        # A curriculum's data may deliver a longer chunk (UL2 in another stage): use our own part.
        corrupted = span_corrupt(
            batch["original"][..., : self.chunk_length],
            self.cfg.noise_density,
            self.cfg.mean_noise_span_length,
            self.vocab,
            rng,
            pad_to=self.input_length,
            name=self.name,
        )
        out = {**batch, **corrupted}
        encoder = corrupted["encoder_input"]
        # Packed raw chunks hold no pad, so the input is unpadded when the corruption fills
        # input_length (512 from 568 raw tokens): say so, and the encoder runs mask-free.
        if span_counts(batch["original"][..., : self.chunk_length].shape[-1], self.cfg.noise_density,
                       self.cfg.mean_noise_span_length).encoder_length == encoder.shape[1]:
            out[unpadded_key("encoder_input")] = unpadded_marker(encoder.shape[0], encoder.device)
        else:
            out.pop(unpadded_key("encoder_input"), None)
        return out

    def preview_fields(self, batch: Batch) -> dict[str, torch.Tensor]:
        return {"noise_mask": batch["noise_mask"]}


@OBJECTIVES.register("span_corruption", SpanCorruptionConfig)
def build_span_corruption(cfg: SpanCorruptionConfig, ctx: ObjectiveContext) -> SpanCorruption:
    """T5 span corruption (random_spans_noise_mask + sentinels), decoder loss."""
    return SpanCorruption(cfg, ctx)
