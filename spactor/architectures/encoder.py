"""Encoder-only transformer: ELECTRA/BERT's discriminator (architecture ``encoder``), and
the body the RTD generator (``spactor.architectures.generator``) reuses.

Two block layouts, chosen by ``norm``:

* ``layernorm`` — BERT/ELECTRA as published: embeddings (+ learned absolute positions)
  → LayerNorm → dropout, then post-LN blocks ``x = LN(x + Attn(x))``,
  ``x = LN(x + W2 GELU(W1 x))``, every Linear with a bias, scores scaled by 1/sqrt(d_kv),
  LayerNorm eps 1e-12, all weights N(0, 0.02). No segment (token-type) embeddings: spactor
  feeds packed single-segment chunks.
* ``rmsnorm`` — a T5 encoder stack (``layers.EncoderBlock``): pre-RMSNorm, ReLU FFN, no
  biases, no score scaling (folded into q's init), a final RMSNorm, Mesh-TF init with
  embedding std 1.

``positions`` is independent of the layout: ``learned`` absolute embeddings (up to
``max_positions``) added to the token embeddings, or T5's bucketed ``relative`` bias (one
table per stack, bidirectional). The usual pairs are layernorm+learned (ELECTRA) and
rmsnorm+relative (T5); the others work too.

The MLM head is BERT/ELECTRA's: dense → GELU → LayerNorm → projection tied to the token
embedding, plus a per-token bias. With the rmsnorm layout (embedding std 1) the tied
projection is scaled by d_model^-0.5, as T5 v1.0 does, so initial logits stay O(1).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from spactor.architectures.base import CLASSIFICATION, ENCODE, MLM_BASELINE, ArchitectureSpec, EncoderInputs
from spactor.architectures.kernels import FlexBias, check_attention
from spactor.architectures.layers import (
    Attention,
    BlockSpec,
    EncoderBlock,
    FeedForward,
    RelativePositionBias,
    RMSNorm,
    attention_bias,
    compute_dtype,
    model_field_rule,
)
from spactor.checks import CheckContext, ModelShape, check_fields, fail, one_of, positive_int
from spactor.config import ConfigError
from spactor.registry import ARCHITECTURES

# (d_model, num_heads, num_layers, d_ff); "small" is ELECTRA-Small, base/large are BERT's.
ENCODER_SIZES: dict[str, tuple[int, int, int, int]] = {
    "tiny": (64, 4, 2, 256),
    "small": (256, 4, 12, 1024),
    "base": (768, 12, 12, 3072),
    "large": (1024, 16, 24, 4096),
}
NORMS = ("layernorm", "rmsnorm")
POSITIONS = ("learned", "relative")
LAYER_NORM_EPS = 1e-12  # BERT/ELECTRA
BERT_INIT_STD = 0.02


@dataclass
class EncoderConfig:
    """Encoder-only discriminator; ``None`` dimensions come from the ``size`` preset."""

    size: str = "base"  # tiny | small (ELECTRA-Small) | base | large
    d_model: int | None = None
    num_heads: int | None = None
    num_layers: int | None = None
    d_ff: int | None = None
    d_kv: int | None = None  # None: d_model // num_heads
    positions: str = "learned"  # learned (absolute, BERT/ELECTRA) | relative (T5 buckets)
    max_positions: int = 512  # rows of the learned position table
    norm: str = "layernorm"  # layernorm (post-LN BERT/ELECTRA) | rmsnorm (pre-norm T5)
    dropout: float = 0.1
    attention: str = "sdpa"  # sdpa | eager | flex (FlexAttention; needs dropout 0)
    vocab_size: int | None = None  # None: the tokenizer's size, given at build time

    def check(self, where: str, ctx: CheckContext) -> None:
        check_fields(where, self, model_field_rule)
        one_of(f"{where}.size", self.size, list(ENCODER_SIZES))
        one_of(f"{where}.positions", self.positions, list(POSITIONS))
        one_of(f"{where}.norm", self.norm, list(NORMS))
        for name in ("d_model", "num_heads", "num_layers", "d_ff", "d_kv"):
            if getattr(self, name) is not None:
                positive_int(f"{where}.{name}", getattr(self, name))
        try:
            spec = resolve_encoder_spec(self)
        except ValueError as e:
            raise ConfigError(f"{where}: {e}") from None
        if spec.positions == "learned" and spec.max_positions < ctx.input_length:
            fail(
                f"{where}.max_positions",
                spec.max_positions,
                "the learned position table needs a row per position: at least data.input_length "
                f"({ctx.input_length})",
            )

    def hidden_size(self) -> int:
        return int(resolve_encoder_spec(self).d_model)

    def shape(self) -> ModelShape:
        """The dimensions the RTD generator and head are sized from."""
        return resolve_encoder_spec(self).shape(self.size)


@dataclass(frozen=True)
class EncoderSpec:
    """Resolved shape and layout of one encoder-only stack."""

    d_model: int
    num_heads: int
    num_layers: int
    d_ff: int
    d_kv: int
    norm: str = "layernorm"
    positions: str = "learned"
    max_positions: int = 512
    dropout: float = 0.0
    attention: str = "sdpa"
    relative_buckets: int = 32
    relative_max_distance: int = 128

    def __post_init__(self) -> None:
        for name in ("d_model", "num_heads", "num_layers", "d_ff", "d_kv", "max_positions"):
            value = getattr(self, name)
            if int(value) != value or value < 1:
                raise ValueError(f"encoder {name} must be a positive integer, got {value!r}")
        if self.norm not in NORMS:
            raise ValueError(f"unknown encoder norm '{self.norm}'; valid: {', '.join(NORMS)}")
        if self.positions not in POSITIONS:
            raise ValueError(f"unknown encoder positions '{self.positions}'; valid: {', '.join(POSITIONS)}")
        check_attention(self.attention, self.dropout)

    @property
    def t5_style(self) -> bool:
        return self.norm == "rmsnorm"

    @property
    def embedding_std(self) -> float:
        """Token/position embedding init: T5's 1.0 (pre-norm absorbs it) or BERT's 0.02."""
        return 1.0 if self.t5_style else BERT_INIT_STD

    def dense_std(self, fan_in: int) -> float:
        """Init std of an extra dense layer (projections, heads) in this layout."""
        return fan_in**-0.5 if self.t5_style else BERT_INIT_STD

    def shape(self, size: str | None) -> ModelShape:
        return ModelShape(size, self.d_model, self.d_ff, self.num_layers, self.num_heads, self.d_kv)

    def block_spec(self) -> BlockSpec:
        """The ``layers.BlockSpec`` of the rmsnorm (T5) layout: v1.0 ReLU FFN (the
        layernorm layout takes its attention dimensions from it too)."""
        return BlockSpec(
            self.d_model, self.d_ff, self.num_heads, self.d_kv, "relu", self.dropout, self.attention
        )


def resolve_encoder_spec(cfg: EncoderConfig) -> EncoderSpec:
    if cfg.size not in ENCODER_SIZES:
        raise ValueError(f"unknown encoder size '{cfg.size}'; valid: {', '.join(ENCODER_SIZES)}")
    d_model, num_heads, num_layers, d_ff = ENCODER_SIZES[cfg.size]
    dims: dict[str, Any] = {
        "d_model": d_model,
        "num_heads": num_heads,
        "num_layers": num_layers,
        "d_ff": d_ff,
    }
    for name in (*dims, "d_kv"):
        value = getattr(cfg, name)
        if value is not None:
            dims[name] = value
    if dims.get("d_kv") is None:
        if dims["d_model"] % dims["num_heads"]:
            raise ValueError(
                f"encoder d_model {dims['d_model']} is not divisible by num_heads {dims['num_heads']}; set d_kv"
            )
        dims["d_kv"] = dims["d_model"] // dims["num_heads"]
    return EncoderSpec(
        **dims,
        norm=cfg.norm,
        positions=cfg.positions,
        max_positions=cfg.max_positions,
        dropout=cfg.dropout,
        attention=cfg.attention,
    )


# -- the BERT/ELECTRA (layernorm) block ----------------------------------------------------


class PostLNBlock(nn.Module):
    """BERT/ELECTRA block: residual then LayerNorm, around attention and a GELU FFN."""

    def __init__(self, spec: EncoderSpec) -> None:
        super().__init__()
        # d_kv ** -0.5 equals SDPA's own default 1/sqrt(d_kv) in fp32 for every d_kv <= 4096
        self.self_attn = Attention(spec.block_spec(), bias=True, scale=spec.d_kv**-0.5)
        self.self_attn_norm = nn.LayerNorm(spec.d_model, eps=LAYER_NORM_EPS)
        self.ffn_in = nn.Linear(spec.d_model, spec.d_ff)
        self.ffn_out = nn.Linear(spec.d_ff, spec.d_model)
        self.ffn_norm = nn.LayerNorm(spec.d_model, eps=LAYER_NORM_EPS)
        self.dropout = nn.Dropout(spec.dropout)

    def forward(self, x: torch.Tensor, bias: torch.Tensor | FlexBias | None) -> torch.Tensor:
        x = self.self_attn_norm(x + self.dropout(self.self_attn(x, bias)))
        return self.ffn_norm(x + self.dropout(self.ffn_out(F.gelu(self.ffn_in(x)))))


# -- the stack -----------------------------------------------------------------------------


class EncoderBody(nn.Module):
    """Positions, blocks and norms of an encoder-only stack. Input: token embeddings
    ``(B, L, d_model)``; output: hidden states ``(B, L, d_model)``. The token embedding
    lives outside, so it can be shared (ELECTRA's generator/discriminator)."""

    def __init__(self, spec: EncoderSpec) -> None:
        super().__init__()
        self.spec = spec
        learned, relative = spec.positions == "learned", spec.positions == "relative"
        self.position_embedding = nn.Embedding(spec.max_positions, spec.d_model) if learned else None
        self.rel_bias = (
            RelativePositionBias(spec.num_heads, True, spec.relative_buckets, spec.relative_max_distance)
            if relative
            else None
        )
        if spec.t5_style:
            self.embed_norm = None
            self.blocks = nn.ModuleList(EncoderBlock(spec.block_spec()) for _ in range(spec.num_layers))
            self.final_norm = RMSNorm(spec.d_model)
        else:
            self.embed_norm = nn.LayerNorm(spec.d_model, eps=LAYER_NORM_EPS)
            self.blocks = nn.ModuleList(PostLNBlock(spec) for _ in range(spec.num_layers))
            self.final_norm = None  # post-LN: every block already ends with a LayerNorm
        self.dropout = nn.Dropout(spec.dropout)

    def attention_bias(
        self, length: int, attention_mask: torch.Tensor | None, dtype: torch.dtype
    ) -> torch.Tensor | FlexBias | None:
        """One bias for every layer, in ``dtype``: relative bias and/or key padding."""
        return attention_bias(self.spec.attention, dtype, length, length, self.rel_bias, attention_mask)

    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        length = x.shape[1]
        if self.position_embedding is not None:
            if length > self.spec.max_positions:
                raise ValueError(
                    f"sequence of {length} tokens is longer than the {self.spec.max_positions} learned positions; "
                    f"raise max_positions or use positions: relative"
                )
            x = x + self.position_embedding.weight[:length]
        if self.embed_norm is not None:
            x = self.embed_norm(x)
        x = self.dropout(x)
        bias = self.attention_bias(length, attention_mask, compute_dtype(x))
        for block in self.blocks:
            x = block(x, bias)
        if self.final_norm is not None:
            x = self.dropout(self.final_norm(x))
        return x

    @torch.no_grad()
    def init_weights(self) -> None:
        spec = self.spec
        if self.position_embedding is not None:
            nn.init.normal_(self.position_embedding.weight, std=spec.embedding_std)
        for module in self.modules():
            if spec.t5_style:
                init_t5_module(module, spec)
            else:
                init_bert_module(module)


def init_bert_module(module: nn.Module) -> None:
    """BERT/ELECTRA init for one module (not its children): N(0, 0.02), zero biases."""
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, std=BERT_INIT_STD)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, std=BERT_INIT_STD)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def init_t5_module(module: nn.Module, spec: EncoderSpec) -> None:
    """Mesh-TF T5 init for one ``layers`` module (as ``T5Model.init_weights``)."""
    d, d_kv, h, d_ff = spec.d_model, spec.d_kv, spec.num_heads, spec.d_ff
    if isinstance(module, RMSNorm):
        module.reset_parameters()
    elif isinstance(module, RelativePositionBias):
        nn.init.normal_(module.embedding.weight, std=d**-0.5)
    elif isinstance(module, FeedForward):
        for wi in (module.wi_0, module.wi_1) if module.gated else (module.wi,):
            nn.init.normal_(wi.weight, std=d**-0.5)
        nn.init.normal_(module.wo.weight, std=d_ff**-0.5)
    elif isinstance(module, Attention):
        nn.init.normal_(module.q.weight, std=(d * d_kv) ** -0.5)  # absorbs the missing 1/sqrt(d_kv)
        nn.init.normal_(module.k.weight, std=d**-0.5)
        nn.init.normal_(module.v.weight, std=d**-0.5)
        nn.init.normal_(module.o.weight, std=(h * d_kv) ** -0.5)


class MLMHead(nn.Module):
    """BERT/ELECTRA MLM head: dense → GELU → LayerNorm → tied projection + bias."""

    def __init__(self, spec: EncoderSpec, vocab_size: int) -> None:
        super().__init__()
        self.spec = spec
        self.dense = nn.Linear(spec.d_model, spec.d_model)
        self.norm = nn.LayerNorm(spec.d_model, eps=LAYER_NORM_EPS)
        self.bias = nn.Parameter(torch.zeros(vocab_size))
        # T5-style embeddings have std 1: scale like T5 v1.0's tied head.
        self.scale = spec.d_model**-0.5 if spec.t5_style else 1.0

    def forward(self, hidden: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
        x = self.norm(F.gelu(self.dense(hidden)))
        return F.linear(x * self.scale, embedding, self.bias)

    @torch.no_grad()
    def reset_parameters(self) -> None:
        nn.init.normal_(self.dense.weight, std=self.spec.dense_std(self.spec.d_model))
        nn.init.zeros_(self.dense.bias)
        nn.init.ones_(self.norm.weight)
        nn.init.zeros_(self.norm.bias)
        nn.init.zeros_(self.bias)


class EncoderModel(EncoderInputs, nn.Module):
    """Encoder-only model implementing :class:`spactor.architectures.base.Architecture`."""

    CAPABILITIES = frozenset({ENCODE})
    has_decoder = False

    def __init__(self, cfg: EncoderConfig, vocab_size: int) -> None:
        super().__init__()
        spec = resolve_encoder_spec(cfg)
        self.config = cfg
        self.spec = spec
        self.hidden_size: int = spec.d_model
        self.model_shape: ModelShape = spec.shape(cfg.size)  # what the RTD generator is sized from
        self.vocab_size: int = vocab_size
        self.token_embedding = nn.Embedding(vocab_size, spec.d_model)
        self.encoder = EncoderBody(spec)
        self.mlm_head = MLMHead(spec, vocab_size)
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """Also the re-init after ``to_empty()`` when built on ``meta``."""
        nn.init.normal_(self.token_embedding.weight, std=self.spec.embedding_std)
        self.encoder.init_weights()
        self.mlm_head.reset_parameters()

    def decode(
        self,
        decoder_input_ids: torch.Tensor,
        encoder_hidden: torch.Tensor,
        encoder_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        raise RuntimeError(
            "architecture 'encoder' is encoder-only and has no decoder; objectives that decode "
            "(span_corruption) need an encoder-decoder model such as model.arch=t5"
        )

    def lm_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.mlm_head(hidden, self.token_embedding.weight)

    def blocks(self) -> list[nn.Module]:
        return list(self.encoder.blocks)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.encode(input_ids, attention_mask)


def encoder_analytic_flops(
    cfg: EncoderConfig, vocab_size: int, encoder_length: int, decoder_length: int
) -> float:
    """Forward FLOPs of one sequence (``spactor.architectures.base.AnalyticFlops``) of the
    encoder and its MLM head on every position: q/k/v/o, attention over the full score
    matrix, the two FFN matrices (both layouts), the head's dense layer and tied
    projection. Biases, learned positions and norms are elementwise."""
    if decoder_length:
        raise ValueError(f"architecture 'encoder' has no decoder, but decoder_length is {decoder_length}")
    spec = resolve_encoder_spec(cfg)
    d, inner, length = spec.d_model, spec.num_heads * spec.d_kv, encoder_length
    vocab = cfg.vocab_size if cfg.vocab_size is not None else vocab_size
    layer = length * (4 * d * inner + 2 * d * spec.d_ff) + 2 * length * length * inner
    return 2.0 * (spec.num_layers * layer + length * (d * d + d * vocab))


# BERT-style MLM is the FLOPs baseline; fine-tuning puts a classification head on the
# mean-pooled output; every block runs over the input (the default memory roles).
ENCODER_SPEC = ArchitectureSpec(
    baseline=MLM_BASELINE,
    stacks=("encoder",),
    finetune=(CLASSIFICATION,),
    analytic_flops=encoder_analytic_flops,  # type: ignore[arg-type]
)


@ARCHITECTURES.register("encoder", EncoderConfig, spec=ENCODER_SPEC)
def build_encoder(cfg: EncoderConfig, vocab_size: int) -> EncoderModel:
    """Encoder-only discriminator (ELECTRA/BERT layout, or T5-style), with an MLM head."""
    return EncoderModel(cfg, cfg.vocab_size if cfg.vocab_size is not None else vocab_size)
