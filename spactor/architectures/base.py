"""The small protocol objectives and the runner use to talk to a model.

Objectives never import a concrete architecture; they see only this surface.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, ClassVar, Protocol, runtime_checkable

import torch
from torch import nn

# --------------------------------------------------------------------------- capabilities
# What a model can do, as the passes it offers. An architecture class declares the set it
# has in ``CAPABILITIES``; an objective declares what it needs in ``NEEDS`` (alternatives,
# any one of which suffices), and the config check refuses a pairing that cannot work.
ENCODE = "encode"  # a bidirectional encoder pass: ``encode(ids, attention_mask)``
DECODE = "decode"  # a decoder with cross-attention to encoder states: ``decode(...)``
CAUSAL_LM = "causal_lm"  # a decoder-only causal pass: ``causal(ids, attention_mask)``
PREFIX_LM = "prefix_lm"  # a decoder-only pass bidirectional over a prefix: ``causal(..., prefix_length=)``
CAPABILITY_NAMES: tuple[str, ...] = (ENCODE, DECODE, CAUSAL_LM, PREFIX_LM)


def capabilities_of(model_or_class: Any) -> frozenset[str]:
    """The capabilities a model (or its class) declares; a class without the declaration
    is taken by the passes it has (an out-of-tree model written before it existed)."""
    declared = getattr(model_or_class, "CAPABILITIES", None)
    if declared is not None:
        return frozenset(declared)
    found = {ENCODE} if hasattr(model_or_class, "encode") else set()
    if getattr(model_or_class, "has_decoder", False):
        found.add(DECODE)
    return frozenset(found)


def satisfies(capabilities: Iterable[str], needs: Iterable[Iterable[str]]) -> bool:
    """Whether ``capabilities`` meets one of the alternative capability sets ``needs``
    (an empty ``needs``: the objective needs no model pass)."""
    have = set(capabilities)
    alternatives = [set(alt) for alt in needs]
    return not alternatives or any(alt <= have for alt in alternatives)


@runtime_checkable
class Architecture(Protocol):
    """What every model in ``ARCHITECTURES`` exposes.

    * ``embed(ids)``: token embeddings ``(B, L, d_model)`` — the shared token embedder.
    * ``encode(input_ids, attention_mask=None, inputs_embeds=None)``: encoder hidden
      states ``(B, L, d_model)`` after the final norm. ``attention_mask`` is bool
      ``(B, L)``, True = real token.
    * ``decode(decoder_input_ids, encoder_hidden, encoder_mask=None)``: decoder hidden
      states ``(B, T, d_model)`` after the final norm (encoder-only models raise).
    * ``lm_logits(hidden)``: vocabulary logits for hidden states of any leading shape
      (handles v1.0's tied head and d_model^-0.5 scaling).
    * ``token_embedding``: the ``nn.Embedding`` that ``embed`` reads (for sharing).
    * ``causal(input_ids, attention_mask=None, prefix_length=None)``: decoder-only models
      (``CAUSAL_LM``): hidden states ``(B, L, d_model)`` after the final norm, each
      position attending to itself and earlier ones; with ``prefix_length`` (``(B,)``
      long, ``PREFIX_LM``) positions ``< prefix_length[b]`` attend to the whole prefix.
    * ``CAPABILITIES``: the passes above the model offers (``ENCODE``, ``DECODE``,
      ``CAUSAL_LM``, ``PREFIX_LM``).
    * ``hidden_size``, ``vocab_size``, ``has_decoder``; optionally ``model_shape`` (a
      :class:`spactor.checks.ModelShape`: what the RTD generator and head are sized from).
    * ``blocks()``: the repeated transformer blocks, for FSDP wrapping, activation
      checkpointing and per-block compile.
    """

    CAPABILITIES: ClassVar[frozenset[str]]
    hidden_size: int
    vocab_size: int
    has_decoder: bool
    token_embedding: nn.Embedding

    def embed(self, ids: torch.Tensor) -> torch.Tensor: ...

    def encode(
        self,
        input_ids: torch.Tensor | None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
    ) -> torch.Tensor: ...

    def decode(
        self,
        decoder_input_ids: torch.Tensor,
        encoder_hidden: torch.Tensor,
        encoder_mask: torch.Tensor | None = None,
    ) -> torch.Tensor: ...

    def lm_logits(self, hidden: torch.Tensor) -> torch.Tensor: ...

    def blocks(self) -> list[nn.Module]: ...


class EncoderInputs:
    """``embed`` and ``encode`` for models whose encoder stack reads token embeddings
    (``self.token_embedding``, ``self.encoder``): shared by T5 and the encoder-only model."""

    token_embedding: nn.Embedding
    encoder: nn.Module

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self.token_embedding(ids)

    def encode(
        self,
        input_ids: torch.Tensor | None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("encode() needs exactly one of input_ids and inputs_embeds")
        x = self.embed(input_ids) if inputs_embeds is None else inputs_embeds
        return self.encoder(x, attention_mask)
