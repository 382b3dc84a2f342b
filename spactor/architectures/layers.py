"""T5 building blocks: RMSNorm, relative position bias, attention, feed-forward, blocks.

Everything here follows the original T5 (Mesh TensorFlow) model, not the "standard"
transformer: no bias in any Linear, no mean subtraction in the norm, no 1/sqrt(d_kv)
score scaling (it is folded into q's initialisation, see ``spactor.architectures.t5``),
and positions enter only through a learned, bucketed relative bias added to the scores.

The attention bias is built once per stack (:func:`attention_bias`) and handed to every
layer, so per-block ``torch.compile`` sees the same signature in every block:

* ``sdpa`` / ``eager``: one *additive* tensor in the compute dtype (the dtype q/k/v have
  under autocast or bf16 parameters), masked entries ``finfo(dtype).min``. Its shape is
  what the masks need and no more: ``(1, H, Lq, Lk)`` for a position bias (causal folded
  in), ``(B, 1, 1, Lk)`` for key padding alone, ``(B, H, Lq, Lk)`` only when a position
  bias meets key padding (SDPA takes a single ``attn_mask``; building that sum once per
  stack in the compute dtype costs one tensor, where casting an fp32 one in every layer
  cost a copy per layer kept for backward).
* ``flex``: a :class:`FlexBias` — the stack's ``(num_buckets, H)`` table and a
  ``(Lq + Lk - 1,)`` bucket id per relative offset, looked up in a ``score_mod``, and
  padding / causality as a ``BlockMask``. No ``(., ., Lq, Lk)`` float tensor exists.

Which kernel runs is :func:`spactor.architectures.kernels.attend`'s choice, the same
dispatch the rotary stacks (``spactor.architectures.attention``) use.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from spactor.architectures.kernels import (
    ATTENTION_BACKENDS,
    FlexBias,
    attend,
    check_attention,
    dense_bias,
    flex_block_mask,
    mask_bias,
)
from spactor.checks import one_of, positive, positive_int, unit_interval

FFN_KINDS = ("relu", "gated-gelu")


def model_field_rule(key: str, name: str, value: Any) -> None:
    """Config-time ranges of the fields the architectures built from these layers share
    (``T5Config``, ``EncoderConfig``), by field name (``spactor.checks.check_fields``)."""
    if value is None or isinstance(value, bool):
        return
    if name.endswith("dropout"):
        unit_interval(key, value)
    elif name in (
        "vocab_size",
        "relative_attention_num_buckets",
        "relative_attention_max_distance",
        "max_positions",
    ):
        positive_int(key, value)
    elif name == "init_std":
        positive(key, value)
    elif name == "attention":
        one_of(key, value, ATTENTION_BACKENDS)


@dataclass(frozen=True)
class BlockSpec:
    """Shape and behaviour of one transformer block (shared by every block of a stack)."""

    d_model: int
    d_ff: int
    num_heads: int
    d_kv: int
    ffn: str = "relu"  # "relu" (T5 v1.0) | "gated-gelu" (T5 v1.1)
    dropout: float = 0.0
    attention: str = "sdpa"  # "sdpa" | "eager" | "flex"

    def __post_init__(self) -> None:
        if self.ffn not in FFN_KINDS:
            raise ValueError(f"unknown ffn '{self.ffn}'; valid: {', '.join(FFN_KINDS)}")
        check_attention(self.attention, self.dropout)


class RMSNorm(nn.Module):
    """T5's LayerNorm: scale only, no bias, no mean subtraction.

    The variance is computed in fp32 (bf16 squares lose too much), and the result is
    cast to the weight's dtype before the multiply, as T5 does, so bf16 weights give a
    bf16 output.
    """

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def reset_parameters(self) -> None:
        nn.init.ones_(self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(self.weight.dtype)


def relative_position_bucket(
    relative_position: torch.Tensor,
    bidirectional: bool,
    num_buckets: int = 32,
    max_distance: int = 128,
) -> torch.Tensor:
    """Map ``key_pos - query_pos`` to T5's log-spaced buckets in ``[0, num_buckets)``.

    Bidirectional: half the buckets for keys before the query, half (offset by
    ``num_buckets // 2``) for keys after it. Causal: only the past is distinguished; all
    future offsets share bucket 0 (they are masked anyway). Within a side, the first
    half of the buckets are exact distances, the rest cover ``[max_exact, max_distance)``
    logarithmically, and everything beyond ``max_distance`` lands in the last bucket.
    """
    exact_limit = num_buckets // (4 if bidirectional else 2)
    if exact_limit < 1:
        raise ValueError(f"num_buckets ({num_buckets}) too small: need >= {4 if bidirectional else 2}")
    if max_distance <= exact_limit:
        raise ValueError(f"max_distance ({max_distance}) must exceed the exact range ({exact_limit})")
    buckets = torch.zeros_like(relative_position)
    if bidirectional:
        num_buckets //= 2
        buckets = buckets + (relative_position > 0).long() * num_buckets
        distance = relative_position.abs()
    else:
        distance = (-relative_position).clamp(min=0)
    max_exact = num_buckets // 2
    # clamp(min=1) only keeps log() finite for the small distances that torch.where drops.
    log_ratio = torch.log(distance.clamp(min=1).float() / max_exact) / math.log(max_distance / max_exact)
    large = max_exact + (log_ratio * (num_buckets - max_exact)).long()
    large = large.clamp(max=num_buckets - 1)
    return buckets + torch.where(distance < max_exact, distance, large)


class RelativePositionBias(nn.Module):
    """One learned ``(num_buckets, num_heads)`` table per stack, shared by all its layers."""

    def __init__(
        self, num_heads: int, bidirectional: bool, num_buckets: int = 32, max_distance: int = 128
    ) -> None:
        super().__init__()
        self.bidirectional = bidirectional
        self.num_buckets = num_buckets
        self.max_distance = max_distance
        self.embedding = nn.Embedding(num_buckets, num_heads)

    def forward(self, query_length: int, key_length: int) -> torch.Tensor:
        """Additive score bias of shape ``(1, H, query_length, key_length)``."""
        device = self.embedding.weight.device
        query_pos = torch.arange(query_length, device=device)[:, None]
        key_pos = torch.arange(key_length, device=device)[None, :]
        buckets = relative_position_bucket(
            key_pos - query_pos, self.bidirectional, self.num_buckets, self.max_distance
        )
        return self.embedding(buckets).permute(2, 0, 1).unsqueeze(0)

    def offset_buckets(self, query_length: int, key_length: int) -> torch.Tensor:
        """Bucket of every relative offset ``key_pos - query_pos`` from ``-(query_length - 1)``
        to ``key_length - 1``, as a ``(query_length + key_length - 1,)`` long tensor: entry
        ``key_pos - query_pos + query_length - 1`` (what flex's ``score_mod`` indexes)."""
        offsets = torch.arange(1 - query_length, key_length, device=self.embedding.weight.device)
        return relative_position_bucket(offsets, self.bidirectional, self.num_buckets, self.max_distance)


def padding_bias(attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``(B, L)`` bool mask (True = real token) → additive ``(B, 1, 1, L)`` key bias."""
    zero = torch.zeros((), dtype=dtype, device=attention_mask.device)
    return mask_bias(zero, attention_mask[:, None, None, :])


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype attention's q/k/v will have for the residual stream ``x``: autocast's
    when it is on (a Linear's output), else ``x``'s own (bf16 parameters under FSDP)."""
    if torch.amp.is_autocast_available(x.device.type) and torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    return x.dtype


def attention_bias(
    backend: str,
    dtype: torch.dtype,
    query_length: int,
    key_length: int,
    rel_bias: RelativePositionBias | None = None,
    key_keep: torch.Tensor | None = None,
    causal: bool = False,
) -> torch.Tensor | FlexBias | None:
    """The bias every layer of a stack gets, built once per forward: a dense additive
    tensor in ``dtype`` for ``sdpa``/``eager``, a :class:`FlexBias` for ``flex``.
    ``key_keep``: ``(B, Lk)`` bool, True = real key."""
    if key_keep is not None:
        key_keep = key_keep.bool()
    if backend != "flex":
        position = None if rel_bias is None else rel_bias(query_length, key_length)
        return dense_bias(position, key_keep, causal, dtype, query_length, key_length)
    device = key_keep.device if key_keep is not None else None
    table = offsets = None
    if rel_bias is not None:
        table = rel_bias.embedding.weight
        offsets = rel_bias.offset_buckets(query_length, key_length)
        device = table.device
    block_mask = None
    if key_keep is not None or causal:
        block_mask = _block_mask(key_keep, causal, query_length, key_length, device)
    return FlexBias(query_length, key_length, table, offsets, key_keep, causal, block_mask)


def _block_mask(
    key_keep: torch.Tensor | None, causal: bool, query_length: int, key_length: int, device: Any
) -> Any:
    def mask_mod(b: torch.Tensor, h: torch.Tensor, q_idx: torch.Tensor, kv_idx: torch.Tensor) -> torch.Tensor:
        if key_keep is None:
            return q_idx >= kv_idx
        if causal:
            return (q_idx >= kv_idx) & key_keep[b, kv_idx]
        return key_keep[b, kv_idx]

    batch = None if key_keep is None else key_keep.shape[0]
    return flex_block_mask(mask_mod, batch, query_length, key_length, device)


class Attention(nn.Module):
    """Multi-head attention with q/k/v/o projections of inner size ``num_heads * d_kv``.

    T5's by default: no biases and unscaled scores (the 1/sqrt(d_kv) is in q's init).
    BERT/ELECTRA's (``spactor.architectures.encoder``): ``bias=True``,
    ``scale=d_kv ** -0.5``. Positions and masks arrive as the stack's ``bias``."""

    def __init__(self, spec: BlockSpec, bias: bool = False, scale: float = 1.0) -> None:
        super().__init__()
        self.num_heads = spec.num_heads
        self.d_kv = spec.d_kv
        self.dropout = spec.dropout
        self.backend = spec.attention
        self.scale = scale
        inner = spec.num_heads * spec.d_kv
        self.q = nn.Linear(spec.d_model, inner, bias=bias)
        self.k = nn.Linear(spec.d_model, inner, bias=bias)
        self.v = nn.Linear(spec.d_model, inner, bias=bias)
        self.o = nn.Linear(inner, spec.d_model, bias=bias)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, _ = x.shape
        return x.view(batch, length, self.num_heads, self.d_kv).transpose(1, 2)

    def forward(
        self, x: torch.Tensor, bias: torch.Tensor | FlexBias | None = None, kv: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``x`` (B, Lq, d) attends to ``kv`` (B, Lk, d; defaults to ``x``).

        ``bias``: from :func:`attention_bias` for this layer's backend — additive,
        broadcastable to ``(B, H, Lq, Lk)`` with masking folded in, or a ``FlexBias``.
        """
        source = x if kv is None else kv
        q, k, v = self._heads(self.q(x)), self._heads(self.k(source)), self._heads(self.v(source))
        dropout_p = self.dropout if self.training else 0.0
        out = attend(q, k, v, bias, self.backend, scale=self.scale, dropout_p=dropout_p)
        batch, _, length, _ = out.shape
        return self.o(out.transpose(1, 2).reshape(batch, length, self.num_heads * self.d_kv))


class FeedForward(nn.Module):
    """``relu``: wo(ReLU(wi x)) (v1.0); ``gated-gelu``: wo(GELU_tanh(wi_0 x) * wi_1 x) (v1.1)."""

    def __init__(self, spec: BlockSpec) -> None:
        super().__init__()
        self.gated = spec.ffn == "gated-gelu"
        if self.gated:
            self.wi_0 = nn.Linear(spec.d_model, spec.d_ff, bias=False)
            self.wi_1 = nn.Linear(spec.d_model, spec.d_ff, bias=False)
        else:
            self.wi = nn.Linear(spec.d_model, spec.d_ff, bias=False)
        self.wo = nn.Linear(spec.d_ff, spec.d_model, bias=False)
        self.dropout = nn.Dropout(spec.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gated:
            hidden = F.gelu(self.wi_0(x), approximate="tanh") * self.wi_1(x)
        else:
            hidden = F.relu(self.wi(x))
        return self.wo(self.dropout(hidden))


class EncoderBlock(nn.Module):
    """Pre-norm self-attention then pre-norm FFN, each with a residual."""

    def __init__(self, spec: BlockSpec) -> None:
        super().__init__()
        self.self_attn_norm = RMSNorm(spec.d_model)
        self.self_attn = Attention(spec)
        self.ffn_norm = RMSNorm(spec.d_model)
        self.ffn = FeedForward(spec)
        self.dropout = nn.Dropout(spec.dropout)

    def forward(self, x: torch.Tensor, bias: torch.Tensor | FlexBias | None) -> torch.Tensor:
        x = x + self.dropout(self.self_attn(self.self_attn_norm(x), bias))
        return x + self.dropout(self.ffn(self.ffn_norm(x)))


class DecoderBlock(nn.Module):
    """Causal self-attention, cross-attention (no position bias), FFN; all pre-norm."""

    def __init__(self, spec: BlockSpec) -> None:
        super().__init__()
        self.self_attn_norm = RMSNorm(spec.d_model)
        self.self_attn = Attention(spec)
        self.cross_attn_norm = RMSNorm(spec.d_model)
        self.cross_attn = Attention(spec)
        self.ffn_norm = RMSNorm(spec.d_model)
        self.ffn = FeedForward(spec)
        self.dropout = nn.Dropout(spec.dropout)

    def forward(
        self,
        x: torch.Tensor,
        self_bias: torch.Tensor | FlexBias | None,
        encoder_hidden: torch.Tensor,
        cross_bias: torch.Tensor | FlexBias | None,
    ) -> torch.Tensor:
        x = x + self.dropout(self.self_attn(self.self_attn_norm(x), self_bias))
        x = x + self.dropout(self.cross_attn(self.cross_attn_norm(x), cross_bias, kv=encoder_hidden))
        return x + self.dropout(self.ffn(self.ffn_norm(x)))
