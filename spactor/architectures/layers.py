"""T5 building blocks: RMSNorm, relative position bias, attention, feed-forward, blocks.

Everything here follows the original T5 (Mesh TensorFlow) model, not the "standard"
transformer: no bias in any Linear, no mean subtraction in the norm, no 1/sqrt(d_kv)
score scaling (it is folded into q's initialisation, see ``spactor.architectures.t5``),
and positions enter only through a learned, bucketed relative bias added to the scores.

Masks travel as one *additive* float tensor per attention (position bias with masked
entries replaced by ``finfo.min``), built once per stack and handed to every layer, so
per-block ``torch.compile`` sees the same signature in every block.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

ATTENTION_BACKENDS = ("sdpa", "eager")
FFN_KINDS = ("relu", "gated-gelu")


@dataclass(frozen=True)
class BlockSpec:
    """Shape and behaviour of one transformer block (shared by every block of a stack)."""

    d_model: int
    d_ff: int
    num_heads: int
    d_kv: int
    ffn: str = "relu"  # "relu" (T5 v1.0) | "gated-gelu" (T5 v1.1)
    dropout: float = 0.0
    attention: str = "sdpa"  # "sdpa" | "eager"

    def __post_init__(self) -> None:
        if self.ffn not in FFN_KINDS:
            raise ValueError(f"unknown ffn '{self.ffn}'; valid: {', '.join(FFN_KINDS)}")
        if self.attention not in ATTENTION_BACKENDS:
            raise ValueError(f"unknown attention '{self.attention}'; valid: {', '.join(ATTENTION_BACKENDS)}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")


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


def mask_bias(bias: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Replace the entries of ``bias`` where ``keep`` is False by ``finfo(dtype).min``.

    ``where`` rather than ``+ min`` so a masked entry is exactly ``min`` and can never
    overflow to ``-inf``: a fully masked row then softmaxes to uniform, not NaN.
    """
    return torch.where(keep, bias, torch.finfo(bias.dtype).min)


def padding_bias(attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``(B, L)`` bool mask (True = real token) → additive ``(B, 1, 1, L)`` key bias."""
    zero = torch.zeros((), dtype=dtype, device=attention_mask.device)
    return mask_bias(zero, attention_mask[:, None, None, :])


def _bias_as(bias: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    # Under autocast q is bf16 while the bias is fp32; fp32's min rounds to -inf in bf16,
    # so clamp to the target dtype's range before casting.
    if bias.dtype == dtype:
        return bias
    return bias.clamp(min=torch.finfo(dtype).min).to(dtype)


def sdpa_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None, dropout_p: float
) -> torch.Tensor:
    """Fused attention, ``scale=1.0`` because T5 does not scale scores by 1/sqrt(d_kv)."""
    attn_mask = None if bias is None else _bias_as(bias, q.dtype)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, scale=1.0)


def eager_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None, dropout_p: float
) -> torch.Tensor:
    """Reference attention: explicit scores, softmax in fp32 (as T5/HF), no scaling."""
    scores = (q @ k.transpose(-2, -1)).float()
    if bias is not None:
        scores = scores + bias.float()
    probs = scores.softmax(dim=-1).to(v.dtype)
    probs = F.dropout(probs, p=dropout_p, training=dropout_p > 0.0)
    return probs @ v


class Attention(nn.Module):
    """Multi-head attention with q/k/v/o projections of inner size ``num_heads * d_kv``."""

    def __init__(self, spec: BlockSpec) -> None:
        super().__init__()
        self.num_heads = spec.num_heads
        self.d_kv = spec.d_kv
        self.dropout = spec.dropout
        self.backend = spec.attention
        inner = spec.num_heads * spec.d_kv
        self.q = nn.Linear(spec.d_model, inner, bias=False)
        self.k = nn.Linear(spec.d_model, inner, bias=False)
        self.v = nn.Linear(spec.d_model, inner, bias=False)
        self.o = nn.Linear(inner, spec.d_model, bias=False)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, _ = x.shape
        return x.view(batch, length, self.num_heads, self.d_kv).transpose(1, 2)

    def forward(
        self, x: torch.Tensor, bias: torch.Tensor | None = None, kv: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``x`` (B, Lq, d) attends to ``kv`` (B, Lk, d; defaults to ``x``).

        ``bias`` is additive, broadcastable to ``(B, H, Lq, Lk)``, with masking folded in.
        """
        source = x if kv is None else kv
        q, k, v = self._heads(self.q(x)), self._heads(self.k(source)), self._heads(self.v(source))
        dropout_p = self.dropout if self.training else 0.0
        attend = sdpa_attention if self.backend == "sdpa" else eager_attention
        out = attend(q, k, v, bias, dropout_p)
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

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
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
        self_bias: torch.Tensor | None,
        encoder_hidden: torch.Tensor,
        cross_bias: torch.Tensor | None,
    ) -> torch.Tensor:
        x = x + self.dropout(self.self_attn(self.self_attn_norm(x), self_bias))
        x = x + self.dropout(self.cross_attn(self.cross_attn_norm(x), cross_bias, kv=encoder_hidden))
        return x + self.dropout(self.ffn(self.ffn_norm(x)))
