"""The small protocol objectives and the runner use to talk to a model.

Objectives never import a concrete architecture; they see only this surface.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
from torch import nn


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
    * ``hidden_size``, ``vocab_size``, ``has_decoder``; optionally ``model_shape`` (a
      :class:`spactor.checks.ModelShape`: what the RTD generator and head are sized from).
    * ``blocks()``: the repeated transformer blocks, for FSDP wrapping, activation
      checkpointing and per-block compile.
    """

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
