"""Prefix language modelling (T5's ``prefix_lm``; UL2's S-denoiser), vectorised in torch.

A raw chunk of ``N`` tokens is split once per example: the encoder reads the prefix, the
decoder predicts the rest. The prefix length ``P`` is uniform over
``[min_prefix, N - 1]`` with ``min_prefix = min(N - 1, max(1, round((1 - 2d)(N - 1))))``
for a noise density ``d`` in ``(0, 0.5]``: T5's ``random_prefix_noise_mask``, whose
rounding is in float32 and half to even (``tf.math.round``), as here. At ``d = 0.5``
``P`` is uniform in ``[1, N)``; for smaller ``d`` the suffix averages about ``d·N``
tokens (UL2's S-denoiser, r = 0.25, predicts about a quarter).

The chunk is ``N = input_length - 1`` tokens, as T5's ``split_tokens_to_inputs_length``
cuts it (room for the EOS the inputs get): prefix 1..``N - 1``, so the encoder input
(prefix + EOS) is at most ``input_length - 1`` tokens and UL2's mode token fits in front.
Both sides get EOS, as T5's ``denoise`` appends it. Shapes do not depend on ``P``: encoder
input and target are both padded to ``input_length``, so a whole batch is split with a
few tensor ops and no host sync.

One deliberate difference: T5's ``prefix_lm`` cuts each document on its own
(``select_random_chunk`` + ``split_tokens``: a document's last piece is shorter and
padded); spactor packs documents into full chunks, as for every objective, so a chunk can
span a document boundary. UL2's own S-denoiser (its appendix code) runs T5's
``prefix_lm`` after ``reduce_concat_tokens``, on packed text, as here.

The decoder loss is span corruption's (:class:`DecoderTargetLoss`): the same teacher-forced,
summed token cross-entropy, one code path for every encoder-decoder objective.

On a decoder-only model (``PREFIX_LM``) the factory builds :class:`PrefixLMDecoder`
instead: one sequence, bidirectional attention over the prefix, the next-token loss on
the rest (``causal_lm``'s loss).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from spactor.architectures.base import DECODE, ENCODE, PREFIX_LM
from spactor.checks import CheckContext
from spactor.config import ConfigError
from spactor.objectives.noise import row_rand
from spactor.objectives.base import Batch, ObjectiveContext, Vocab, check_objective_fields
from spactor.objectives.causal_lm import LM_INPUT, LM_TARGET, PREFIX_LENGTH, CausalTargetLoss, decoder_layout
from spactor.objectives.span_corruption import DecoderTargetLoss
from spactor.registry import OBJECTIVES


@dataclass
class PrefixLMConfig:
    # Expected share of the chunk the decoder predicts; 0.5 (T5's prefix_lm) puts the
    # split point uniformly anywhere.
    noise_density: float = 0.5
    weight: float = 1.0  # knob: λ for this loss; the runner applies it
    z_loss: float = 0.0  # T5's z-loss on the decoder's cross-entropy (see span_corruption)

    def check(self, where: str, ctx: CheckContext) -> None:
        check_prefix_density(where, self.noise_density)
        check_objective_fields(where, self)


def check_prefix_density(where: str, noise_density: float) -> None:
    if not 0.0 < noise_density <= 0.5:
        raise ConfigError(
            f"{where}.noise_density must be in (0, 0.5] for a prefix-LM split, got {noise_density}"
        )


def prefix_chunk_length(input_length: int) -> int:
    """Raw tokens a prefix-LM example is cut from: one less than the encoder input, T5's
    ``split_tokens_to_inputs_length`` (it leaves room for EOS)."""
    return input_length - 1


def min_prefix_length(length: int, noise_density: float) -> int:
    """Shortest prefix a chunk of ``length`` tokens is split at (see the module doc).

    T5's arithmetic: the Python float ``1 - 2d`` becomes a float32 constant, the product
    with ``float32(length - 1)`` is float32 and ``tf.math.round`` rounds half to even.
    float64 would differ by one for 205 of the lengths 2..4096 at d = 0.45 (16: 1.5 in
    float32, 1.4999999999999996 in float64)."""
    longest = length - 1
    scaled = np.float32(1.0 - 2.0 * noise_density) * np.float32(longest)
    return min(longest, max(1, int(np.round(scaled))))


def random_prefix_lengths(
    batch_size: int, length: int, noise_density: float, generator: torch.Generator, device: torch.device
) -> torch.Tensor:
    """``(batch_size,)`` prefix lengths, uniform over ``[min_prefix_length, length - 1]``."""
    if length < 2:
        raise ValueError(f"a prefix-LM split needs at least 2 tokens per chunk, got {length}")
    low = min_prefix_length(length, noise_density)
    choices = length - low  # the number of allowed prefix lengths
    u = row_rand((batch_size,), generator=generator, device=device, dtype=torch.float64)
    return low + (u * choices).long().clamp_(max=choices - 1)


def prefix_split(original: torch.Tensor, prefix_length: torch.Tensor, vocab: Vocab) -> Batch:
    """Split raw chunks ``(B, N)`` at ``prefix_length`` ``(B,)``.

    Returns ``encoder_input`` ``(B, N)`` (prefix, EOS, pad), ``decoder_target`` ``(B, N)``
    (suffix, EOS, pad), ``decoder_input`` (target shifted right, ``pad_id`` first) and
    ``noise_mask`` ``(B, N)`` (True on the suffix, the tokens the decoder predicts).
    """
    batch_size, length = original.shape
    position = torch.arange(length, device=original.device).expand(batch_size, length)
    split = prefix_length[:, None]
    eos = torch.full_like(original, vocab.eos_id)
    pad = torch.full_like(original, vocab.pad_id)
    encoder = torch.where(position < split, original, torch.where(position == split, eos, pad))
    suffix_length = length - split
    shifted = original.gather(1, (position + split).clamp(max=length - 1))
    target = torch.where(position < suffix_length, shifted, torch.where(position == suffix_length, eos, pad))
    decoder_input = torch.cat([pad[:, :1], target[:, :-1]], dim=1)
    return {
        "encoder_input": encoder,
        "decoder_target": target,
        "decoder_input": decoder_input,
        "noise_mask": position >= split,
    }


class PrefixLM(DecoderTargetLoss):
    """The encoder reads a random prefix of the chunk, the decoder predicts the rest."""

    ROW_LOCAL_NOISE = True

    KNOBS = ("weight",)
    REQUIRES = ("original",)
    PROVIDES = ("encoder_input", "decoder_input", "decoder_target", "noise_mask", "prefix_length")
    # An encoder-decoder, or a decoder-only model with a prefix-bidirectional pass
    # (built as :class:`PrefixLMDecoder`).
    NEEDS = (frozenset({ENCODE, DECODE}), frozenset({PREFIX_LM}))

    def __init__(self, cfg: PrefixLMConfig, ctx: ObjectiveContext) -> None:
        super().__init__(cfg, ctx)
        cfg.check(f"objectives.{ctx.name}", ctx.check_context())
        if ctx.input_length < 3:
            raise ConfigError(f"objectives.{ctx.name}: input_length {ctx.input_length} is too short to split")
        self.input_length = ctx.input_length
        self.chunk_length = prefix_chunk_length(ctx.input_length)

    def raw_length(self, input_length: int) -> int:
        return prefix_chunk_length(input_length)

    @torch.no_grad()
    def transform(self, batch: Batch, rng: torch.Generator) -> Batch:
        # A curriculum's data may deliver a longer chunk (UL2 in another stage): use our own part.
        original = batch["original"][..., : self.chunk_length]
        if original.dim() != 2 or original.shape[1] != self.chunk_length:
            raise ValueError(
                f"objectives.{self.name}: expected raw chunks (B, >= {self.chunk_length}), got {tuple(original.shape)}"
            )
        prefix = random_prefix_lengths(original.shape[0], original.shape[1], self.cfg.noise_density, rng,
                                       original.device)
        out = prefix_split(original, prefix, self.vocab)
        # Encoder and target to the input length (one pad column: the chunk is one shorter).
        width, pad = self.input_length - self.chunk_length, self.vocab.pad_id
        encoder = F.pad(out["encoder_input"], (0, width), value=pad)
        target = F.pad(out["decoder_target"], (0, width), value=pad)
        decoder_input = F.pad(target[:, :-1], (1, 0), value=pad)
        return {**batch, **out, "encoder_input": encoder, "decoder_target": target,
                "decoder_input": decoder_input, "prefix_length": prefix}

    def preview_fields(self, batch: Batch) -> dict[str, torch.Tensor]:
        return {"prefix_length": batch["prefix_length"]}


class PrefixLMDecoder(CausalTargetLoss, PrefixLM):
    """Prefix LM on a decoder-only model (``PREFIX_LM``): the chunk is one sequence, the
    model attends bidirectionally over its random prefix (``prefix_length``) and causally
    after it, and the loss is the next-token loss on the rest. The data delivers
    ``input_length + 1`` tokens: ``lm_input`` is the first ``input_length``, and position
    ``t`` predicts token ``t + 1`` when that token is past the prefix. The split point
    follows the same distribution as the encoder-decoder form's."""

    PROVIDES = (LM_INPUT, LM_TARGET, "noise_mask", PREFIX_LENGTH)
    prefix_view = PREFIX_LENGTH

    def raw_length(self, input_length: int) -> int:
        return input_length + 1

    @torch.no_grad()
    def transform(self, batch: Batch, rng: torch.Generator) -> Batch:
        original = batch["original"][..., : self.input_length + 1]
        if original.dim() != 2:
            raise ValueError(f"objectives.{self.name}: expected raw chunks (B, N), got {tuple(original.shape)}")
        batch_size, length = original.shape
        prefix = random_prefix_lengths(batch_size, length, self.cfg.noise_density, rng, original.device)
        position = torch.arange(length, device=original.device).expand(batch_size, length)
        predicted = position[:, 1:] >= prefix[:, None]  # target t (token t + 1) is past the prefix
        target = torch.where(predicted, original[:, 1:], torch.full_like(original[:, 1:], self.vocab.pad_id))
        return {
            **batch,
            LM_INPUT: original[:, :-1],
            LM_TARGET: target,
            "noise_mask": position >= prefix[:, None],
            PREFIX_LENGTH: prefix,
        }


@OBJECTIVES.register("prefix_lm", PrefixLMConfig)
def build_prefix_lm(cfg: PrefixLMConfig, ctx: ObjectiveContext) -> PrefixLM:
    """Prefix LM (T5's prefix_lm): encoder gets a uniform-length prefix, decoder the rest;
    on a decoder-only model, one sequence bidirectional over the prefix."""
    if decoder_layout(ctx.name, ctx.model):
        return PrefixLMDecoder(cfg, ctx)
    return PrefixLM(cfg, ctx)
