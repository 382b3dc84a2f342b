"""``llama``: a Llama-style decoder-only model (RoPE, RMSNorm, SwiGLU, grouped-query
attention, tied or untied embeddings) whose weights map one-to-one onto Hugging Face's
``LlamaForCausalLM`` (``spactor.architectures.llama_hf``):

    token_embedding                       HF model.embed_tokens
    layers.N.attn_norm                    HF model.layers.N.input_layernorm
    layers.N.attn.{q,k,v,o}_proj          HF model.layers.N.self_attn.{q,k,v,o}_proj
    layers.N.ffn_norm                     HF model.layers.N.post_attention_layernorm
    layers.N.ffn.{gate,up,down}_proj      HF model.layers.N.mlp.{gate,up,down}_proj
    final_norm                            HF model.norm
    lm_head (untied only)                 HF lm_head

It offers the decoder-only passes (``CAUSAL_LM``, ``PREFIX_LM``): ``causal(ids,
attention_mask=None, prefix_length=None)`` gives the final-norm hidden states, each
position attending to itself and what comes before it, and with ``prefix_length`` to
its row's whole prefix as well.

Sizes (``model.size``; every dimension can be overridden). Parameters at T5's 32,128-row
vocabulary, counted by ``count_parameters`` on the built model:

    size   d_model  layers  heads  kv_heads  head_dim  d_ff  tied  parameters
    tiny        64       2      4         2        16   192   no        4.2M
    small      768      12     12         4        64  2048   no        125M
    base      1024      24     16         8        64  2816   no        349M
    1b        2048      16     32         8        64  8192   yes      1.04B

(``tiny`` is for CPU tests; ``1b`` has Llama 3.2 1B's shape.)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from spactor.architectures.attention import (
    AttentionSpec,
    GatedFeedForward,
    MaskSpec,
    RotaryEmbedding,
    SelfAttention,
    build_mask,
    check_rotary_config,
    init_normal,
    preset_dims,
    resolve_rotary_heads,
)
from spactor.architectures.base import CAUSAL_LM, PREFIX_LM
from spactor.architectures.kernels import check_attention
from spactor.architectures.layers import RMSNorm, compute_dtype, model_field_rule
from spactor.checks import CheckContext, check_fields, hf_directory
from spactor.config import ConfigError

# (d_model, num_layers, num_heads, num_kv_heads, d_ff, tie_embeddings); head_dim = d_model // num_heads.
LLAMA_SIZES: dict[str, tuple[int, int, int, int, int, bool]] = {
    "tiny": (64, 2, 4, 2, 192, False),
    "small": (768, 12, 12, 4, 2048, False),
    "base": (1024, 24, 16, 8, 2816, False),
    "1b": (2048, 16, 32, 8, 8192, True),
}
LLAMA_DIMS = ("d_model", "num_layers", "num_heads", "num_kv_heads", "d_ff", "head_dim")


@dataclass
class LlamaConfig:
    """Llama architecture knobs; ``None`` dimensions come from the ``size`` preset."""

    size: str = "base"  # tiny | small | base | 1b (see the module doc)
    d_model: int | None = None
    num_layers: int | None = None
    num_heads: int | None = None
    num_kv_heads: int | None = None  # < num_heads: grouped-query attention; must divide num_heads
    head_dim: int | None = None  # None: d_model // num_heads
    d_ff: int | None = None
    rope_theta: float = 10000.0  # RoPE base (Llama 2: 1e4; Llama 3: 5e5)
    norm_eps: float = 1e-5  # RMSNorm epsilon (HF rms_norm_eps)
    tie_embeddings: bool | None = None  # None: the size's default (1b tied, the others untied)
    attention: str = "sdpa"  # sdpa | eager | flex
    dropout: float = 0.0  # attention-probability and residual dropout
    init_std: float = 0.02  # std of every weight matrix and the embedding (HF initializer_range)
    vocab_size: int | None = None  # None: the tokenizer's size, given at build time
    init_from: str | None = None  # "hf:PATH": start from a LlamaForCausalLM directory

    def check(self, where: str, ctx: CheckContext) -> None:
        check_fields(where, self, model_field_rule)
        check_rotary_config(where, self, LLAMA_SIZES, LLAMA_DIMS)
        try:
            resolve_llama_dims(self)
        except ValueError as e:
            raise ConfigError(f"{where}: {e}") from None
        hf_directory(f"{where}.init_from", self.init_from, "Llama")

    def hidden_size(self) -> int:
        return int(resolve_llama_dims(self)["d_model"])


def resolve_llama_dims(cfg: LlamaConfig) -> dict[str, Any]:
    """The preset of ``cfg.size`` with ``cfg``'s overrides, checked for consistency:
    ``d_model, num_layers, num_heads, num_kv_heads, head_dim, d_ff, tie_embeddings``."""
    dims = preset_dims("llama", cfg, LLAMA_SIZES, LLAMA_DIMS)
    tied = LLAMA_SIZES[cfg.size][5]
    resolve_rotary_heads(dims, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim)
    check_attention(cfg.attention, cfg.dropout)
    dims["tie_embeddings"] = tied if cfg.tie_embeddings is None else bool(cfg.tie_embeddings)
    return dims


class LlamaBlock(nn.Module):
    """Pre-norm self-attention (RoPE, GQA) then pre-norm SwiGLU, each with a residual."""

    def __init__(self, spec: AttentionSpec, d_ff: int, eps: float, dropout: float) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(spec.d_model, eps)
        self.attn = SelfAttention(spec)
        self.ffn_norm = RMSNorm(spec.d_model, eps)
        self.ffn = GatedFeedForward(spec.d_model, d_ff, "silu")
        self.dropout = nn.Dropout(dropout)

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: Any = None, is_causal: bool = False
    ) -> torch.Tensor:
        x = x + self.dropout(self.attn(self.attn_norm(x), (cos, sin), mask, is_causal))
        return x + self.dropout(self.ffn(self.ffn_norm(x)))


class LlamaModel(nn.Module):
    """Decoder-only Llama implementing the ``CAUSAL_LM`` / ``PREFIX_LM`` passes of
    :class:`spactor.architectures.base.Architecture`."""

    CAPABILITIES = frozenset({CAUSAL_LM, PREFIX_LM})
    has_decoder = False  # no cross-attention decoder (``DECODE``)

    def __init__(self, cfg: LlamaConfig, vocab_size: int) -> None:
        super().__init__()
        dims = resolve_llama_dims(cfg)
        self.config = cfg
        self.dims = dims
        self.hidden_size: int = dims["d_model"]
        self.vocab_size: int = vocab_size
        self.tie_embeddings: bool = dims["tie_embeddings"]
        self.spec = AttentionSpec(
            d_model=dims["d_model"],
            num_heads=dims["num_heads"],
            num_kv_heads=dims["num_kv_heads"],
            head_dim=dims["head_dim"],
            backend=cfg.attention,
            dropout=cfg.dropout,
        )
        self.token_embedding = nn.Embedding(vocab_size, dims["d_model"])
        self.rotary = RotaryEmbedding(dims["head_dim"], cfg.rope_theta)
        self.layers = nn.ModuleList(
            LlamaBlock(self.spec, dims["d_ff"], cfg.norm_eps, cfg.dropout) for _ in range(dims["num_layers"])
        )
        self.final_norm = RMSNorm(dims["d_model"], cfg.norm_eps)
        self.lm_head = None if self.tie_embeddings else nn.Linear(dims["d_model"], vocab_size, bias=False)
        self.dropout = nn.Dropout(cfg.dropout)
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """Every matrix and the embedding ~ N(0, init_std²), norms 1 (Hugging Face's Llama
        init). Also the re-init after ``to_empty()`` from a meta-device build."""
        init_normal(self, self.token_embedding, self.config.init_std, RMSNorm)

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self.token_embedding(ids)

    def causal(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        prefix_length: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Hidden states ``(B, L, d_model)`` after the final norm. ``attention_mask``:
        ``(B, L)`` bool, True = real token (None: no padding, or right padding only, which
        causal attention never reaches from a real token). ``prefix_length``: ``(B,)``
        long, the bidirectional prefix of each row."""
        x = self.embed(input_ids)
        length = x.shape[1]
        spec = MaskSpec(causal=True, key_keep=attention_mask, prefix_length=prefix_length)
        built = build_mask(self.spec.backend, spec, length, length, x.device)
        # Once per forward, shared by every block: one compiled graph serves them all.
        cos, sin = self.rotary(length, x.device, compute_dtype(x))
        x = self.dropout(x)
        for block in self.layers:
            x = block(x, cos, sin, built.mask, built.is_causal)
        return self.final_norm(x)

    def lm_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        weight = self.token_embedding.weight if self.lm_head is None else self.lm_head.weight
        return F.linear(hidden, weight)

    def blocks(self) -> list[nn.Module]:
        return list(self.layers)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        prefix_length: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Vocabulary logits ``(B, L, V)``: position t predicts token t + 1."""
        return self.lm_logits(self.causal(input_ids, attention_mask, prefix_length))


def llama_analytic_flops(
    cfg: LlamaConfig, vocab_size: int, encoder_length: int, decoder_length: int
) -> float:
    """Forward FLOPs of one sequence (``spactor.architectures.base.AnalyticFlops``): one
    causal sequence of ``encoder_length + decoder_length`` tokens — q/o projections at
    ``num_heads``, k/v at ``num_kv_heads`` (GQA), attention over the full ``(L, L)`` score
    matrix of every query head (the causal half included, as the kernels compute it in
    blocks), SwiGLU's three matrices, the LM head on every position. RoPE is elementwise."""
    dims = resolve_llama_dims(cfg)
    d, d_ff, head_dim = dims["d_model"], dims["d_ff"], dims["head_dim"]
    q_width, kv_width = dims["num_heads"] * head_dim, dims["num_kv_heads"] * head_dim
    vocab = cfg.vocab_size if cfg.vocab_size is not None else vocab_size
    length = encoder_length + decoder_length
    layer = length * (2 * d * q_width + 2 * d * kv_width + 3 * d * d_ff) + 2 * length * length * q_width
    return 2.0 * (dims["num_layers"] * layer + length * d * vocab)
