"""``t5gemma``: a modern encoder-decoder — rotary positions, grouped-query attention,
GeGLU, Gemma's RMSNorm with pre- and post-norms, embeddings scaled by ``sqrt(d_model)``,
tied embeddings — whose weights map one-to-one onto Hugging Face's
``T5GemmaForConditionalGeneration`` (``spactor.architectures.t5gemma_hf``). Module paths
are T5Gemma's own, so the conversion is a prefix (``model.``):

    token_embedding                          HF model.{encoder,decoder}.embed_tokens (one tensor) = lm_head
    encoder.layers.N.pre_self_attn_layernorm HF model.encoder.layers.N.pre_self_attn_layernorm
    encoder.layers.N.self_attn.{q,k,v,o}_proj, post_self_attn_layernorm, pre_feedforward_layernorm,
    encoder.layers.N.mlp.{gate,up,down}_proj, post_feedforward_layernorm
    encoder.norm, decoder.norm
    decoder.layers.N.cross_attn.{q,k,v,o}_proj, pre_cross_attn_layernorm, post_cross_attn_layernorm

Unlike T5 there is no learned position bias: positions are RoPE on q and k, so every
attention runs through ``spactor.architectures.attention`` (SDPA's fused kernels, no
``(L, L)`` tensor when nothing is masked): the encoder's self-attention takes no mask
when its batch has no padding, the decoder's is ``is_causal``, cross-attention is masked
only where the encoder input is padded (a ``(B, 1, 1, L)`` key mask). Optional T5Gemma
features that force a slower path — attention-logit soft-capping (the eager math),
sliding-window layers (a dense band mask), attention dropout — are off by default and
announced once when a model is built with them.

Sizes (``model.size``; every dimension can be overridden). The encoder layer has exactly
T5.1.0's matmul parameters (so FLOPs per token) at the same width and depth — GQA's
smaller k/v projections are given to a GeGLU ``d_ff``; the decoder's cross-attention has
GQA too, so a decoder layer is a few percent smaller. Parameters at T5's 32,128-row
vocabulary (``count_parameters``; T5.1.0 in brackets):

    size   d_model  layers(enc/dec)  heads  kv_heads  head_dim  d_ff   parameters
    tiny        64       2 / 2           4         2        16   128    2.23M  (2.29M)
    small      512       6 / 6           8         4        64  1536    58.9M  (60.5M)
    base       768      12 / 12         12         6        64  2304     216M   (223M)
    large     1024      24 / 24         16         8        64  3072     713M   (738M)

(``tiny`` is for CPU tests, not FLOP-matched: its ``d_ff`` is kept off the sequence
lengths the tests probe, so an ``(L, d_ff)`` tensor never passes for an ``(L, L)`` one.) The attention scale is ``query_pre_attn_scalar**-0.5``
(None: ``head_dim``, the usual ``1/sqrt(head_dim)``).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from spactor.architectures.attention import (
    AttentionSpec,
    BuiltMask,
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
from spactor.architectures.base import DECODE, ENCODE, BlockRole, EncoderInputs
from spactor.architectures.kernels import check_attention
from spactor.architectures.layers import compute_dtype, model_field_rule
from spactor.checks import CheckContext, ModelShape, check_fields, hf_directory, positive, positive_int
from spactor.config import ConfigError

# (d_model, num_layers, num_heads, num_kv_heads, d_ff); head_dim = d_model // num_heads.
T5GEMMA_SIZES: dict[str, tuple[int, int, int, int, int]] = {
    "tiny": (64, 2, 4, 2, 128),
    "small": (512, 6, 8, 4, 1536),
    "base": (768, 12, 12, 6, 2304),
    "large": (1024, 24, 16, 8, 3072),
}
T5GEMMA_DIMS = ("d_model", "num_layers", "num_decoder_layers", "num_heads", "num_kv_heads", "head_dim", "d_ff")


@dataclass
class T5GemmaConfig:
    """t5gemma architecture knobs; ``None`` dimensions come from the ``size`` preset."""

    size: str = "base"  # tiny | small | base | large (see the module doc)
    d_model: int | None = None
    num_layers: int | None = None  # the encoder's
    num_decoder_layers: int | None = None  # None: num_layers
    num_heads: int | None = None
    num_kv_heads: int | None = None  # < num_heads: grouped-query attention; must divide num_heads
    head_dim: int | None = None  # None: d_model // num_heads
    d_ff: int | None = None
    rope_theta: float = 10000.0
    norm_eps: float = 1e-6  # HF rms_norm_eps
    query_pre_attn_scalar: float | None = None  # scores scaled by its -0.5 power; None: head_dim
    attn_logit_softcapping: float | None = None  # T5Gemma's 50.0: forces the eager attention math
    final_logit_softcapping: float | None = None  # T5Gemma's 30.0: tanh-capped logits
    sliding_window: int | None = None  # None: every layer full; N: T5Gemma's alternation (even layers slide)
    attention: str = "sdpa"  # sdpa | eager | flex
    dropout: float = 0.0  # embedding, residual and feed-forward dropout (HF dropout_rate)
    attention_dropout: float = 0.0  # attention-probability dropout (keeps SDPA off flash on some devices)
    init_std: float = 0.02  # std of every weight matrix and the embedding (HF initializer_range)
    vocab_size: int | None = None  # None: the tokenizer's size, given at build time
    init_from: str | None = None  # "hf:PATH": start from a T5GemmaForConditionalGeneration directory

    def check(self, where: str, ctx: CheckContext) -> None:
        check_fields(where, self, model_field_rule)
        check_rotary_config(where, self, T5GEMMA_SIZES, T5GEMMA_DIMS)
        for name in ("query_pre_attn_scalar", "attn_logit_softcapping", "final_logit_softcapping"):
            if getattr(self, name) is not None:
                positive(f"{where}.{name}", getattr(self, name))
        if self.sliding_window is not None:
            positive_int(f"{where}.sliding_window", self.sliding_window)
        try:
            resolve_t5gemma_dims(self)
        except ValueError as e:
            raise ConfigError(f"{where}: {e}") from None
        hf_directory(f"{where}.init_from", self.init_from, "T5Gemma")

    def hidden_size(self) -> int:
        return int(resolve_t5gemma_dims(self)["d_model"])

    def shape(self) -> ModelShape:
        """The dimensions the RTD generator and head are sized from."""
        return t5gemma_shape(self.size, resolve_t5gemma_dims(self))


def t5gemma_shape(size: str | None, dims: dict[str, Any]) -> ModelShape:
    return ModelShape(
        size=size,
        d_model=int(dims["d_model"]),
        d_ff=int(dims["d_ff"]),
        num_layers=int(dims["num_layers"]),
        num_heads=int(dims["num_heads"]),
        d_kv=int(dims["head_dim"]),
    )


def resolve_t5gemma_dims(cfg: T5GemmaConfig) -> dict[str, Any]:
    """The preset of ``cfg.size`` with ``cfg``'s overrides, checked for consistency:
    ``d_model, num_layers, num_decoder_layers, num_heads, num_kv_heads, head_dim, d_ff``."""
    dims = preset_dims("t5gemma", cfg, T5GEMMA_SIZES, T5GEMMA_DIMS)
    dims.setdefault("num_decoder_layers", dims["num_layers"])
    resolve_rotary_heads(dims, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim)
    check_attention(cfg.attention, cfg.attention_dropout)
    if not 0.0 <= cfg.dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {cfg.dropout}")
    if cfg.attn_logit_softcapping is not None and cfg.attention == "flex":
        raise ValueError("attn_logit_softcapping has no flex path; set attention sdpa or eager")
    return dims


def slow_paths(cfg: T5GemmaConfig) -> list[str]:
    """The configured features that keep attention off SDPA's fused, mask-free kernels."""
    slow = []
    if cfg.attn_logit_softcapping is not None:
        slow.append(f"attn_logit_softcapping={cfg.attn_logit_softcapping} runs the eager attention math")
    if cfg.sliding_window is not None:
        slow.append(f"sliding_window={cfg.sliding_window} gives half the layers a dense band mask")
    if cfg.attention_dropout > 0:
        slow.append(f"attention_dropout={cfg.attention_dropout} rules out the flash kernel on some devices")
    if cfg.attention == "flex":
        slow.append("attention=flex compiles a FlexAttention kernel (SDPA's fused kernels need no mask here)")
    if cfg.attention == "eager":
        slow.append("attention=eager materialises every score matrix")
    return slow


class GemmaRMSNorm(nn.Module):
    """Gemma's RMSNorm: ``x / rms(x) * (1 + weight)``, all in fp32 and cast back to the
    input's dtype (Gemma multiplies before the cast, Llama after); the weight starts at 0."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.zeros(dim))

    def reset_parameters(self) -> None:
        nn.init.zeros_(self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return (x32 * (1.0 + self.weight.float())).type_as(x)


class GemmaMLP(GatedFeedForward):
    """GeGLU with T5Gemma's dropout between the gate product and the down projection."""

    def __init__(self, d_model: int, d_ff: int, dropout: float) -> None:
        super().__init__(d_model, d_ff, "gelu_tanh")
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.dropout(F.gelu(self.gate_proj(x), approximate="tanh") * self.up_proj(x)))


class T5GemmaEncoderLayer(nn.Module):
    """Pre- and post-normed self-attention (RoPE, GQA) then GeGLU, each with a residual."""

    def __init__(self, spec: AttentionSpec, d_ff: int, eps: float, dropout: float) -> None:
        super().__init__()
        d = spec.d_model
        self.pre_self_attn_layernorm = GemmaRMSNorm(d, eps)
        self.self_attn = SelfAttention(spec)
        self.post_self_attn_layernorm = GemmaRMSNorm(d, eps)
        self.pre_feedforward_layernorm = GemmaRMSNorm(d, eps)
        self.mlp = GemmaMLP(d, d_ff, dropout)
        self.post_feedforward_layernorm = GemmaRMSNorm(d, eps)
        self.dropout = nn.Dropout(dropout)

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: Any = None, is_causal: bool = False
    ) -> torch.Tensor:
        h = self.self_attn(self.pre_self_attn_layernorm(x), (cos, sin), mask, is_causal)
        x = x + self.dropout(self.post_self_attn_layernorm(h))
        h = self.mlp(self.pre_feedforward_layernorm(x))
        return x + self.dropout(self.post_feedforward_layernorm(h))


class T5GemmaDecoderLayer(T5GemmaEncoderLayer):
    """The encoder layer with pre- and post-normed cross-attention (no RoPE) between its
    self-attention and its feed-forward."""

    def __init__(self, spec: AttentionSpec, d_ff: int, eps: float, dropout: float) -> None:
        super().__init__(spec, d_ff, eps, dropout)
        self.cross_attn = SelfAttention(spec)
        self.pre_cross_attn_layernorm = GemmaRMSNorm(spec.d_model, eps)
        self.post_cross_attn_layernorm = GemmaRMSNorm(spec.d_model, eps)

    def forward(  # type: ignore[override]
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        mask: Any,
        is_causal: bool,
        encoder_hidden: torch.Tensor,
        cross_mask: Any = None,
    ) -> torch.Tensor:
        h = self.self_attn(self.pre_self_attn_layernorm(x), (cos, sin), mask, is_causal)
        x = x + self.dropout(self.post_self_attn_layernorm(h))
        h = self.cross_attn(self.pre_cross_attn_layernorm(x), None, cross_mask, False, source=encoder_hidden)
        x = x + self.dropout(self.post_cross_attn_layernorm(h))
        h = self.mlp(self.pre_feedforward_layernorm(x))
        return x + self.dropout(self.post_feedforward_layernorm(h))


def _sliding(cfg: T5GemmaConfig, index: int) -> bool:
    """T5Gemma's default layer pattern: layer ``i`` slides when ``i + 1`` is odd."""
    return cfg.sliding_window is not None and (index + 1) % 2 == 1


class _Stack(nn.Module):
    """What the encoder and decoder share: embedding scaling, RoPE, per-layer masks."""

    layers: nn.ModuleList

    def __init__(self, cfg: T5GemmaConfig, spec: AttentionSpec) -> None:
        super().__init__()
        self.cfg = cfg
        self.backend = spec.backend
        self.rotary = RotaryEmbedding(spec.head_dim, cfg.rope_theta)
        self.norm = GemmaRMSNorm(spec.d_model, cfg.norm_eps)
        self.dropout = nn.Dropout(cfg.dropout)
        # sqrt(d_model) rounded to each dtype, as HF multiplies by a tensor of the states'
        # dtype (a Python float per dtype: no tensor built per forward, nothing for compile).
        scale = spec.d_model**0.5
        self.normalizer = {
            dtype: float(torch.tensor(scale, dtype=dtype, device="cpu")) for dtype in (torch.float32, torch.bfloat16, torch.float16)
        }

    def scaled(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(x * self.normalizer.get(x.dtype, self.normalizer[torch.float32]))

    def masks(self, spec: MaskSpec, length: int, device: torch.device) -> list[BuiltMask]:
        """Each layer's mask: full layers share one, sliding layers another."""
        full = build_mask(self.backend, spec, length, length, device)
        if self.cfg.sliding_window is None:
            return [full] * len(self.layers)
        window = MaskSpec(spec.causal, spec.key_keep, spec.prefix_length, self.cfg.sliding_window)
        band = build_mask(self.backend, window, length, length, device)
        return [band if _sliding(self.cfg, i) else full for i in range(len(self.layers))]


class T5GemmaEncoder(_Stack):
    def __init__(self, cfg: T5GemmaConfig, spec: AttentionSpec, num_layers: int, d_ff: int) -> None:
        super().__init__(cfg, spec)
        self.layers = nn.ModuleList(
            T5GemmaEncoderLayer(spec, d_ff, cfg.norm_eps, cfg.dropout) for _ in range(num_layers)
        )

    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``x``: token embeddings; ``attention_mask`` ``(B, L)`` bool, True = real token
        (None: no padding, and no mask: SDPA's fused kernels)."""
        length = x.shape[1]
        masks = self.masks(MaskSpec(causal=False, key_keep=attention_mask), length, x.device)
        x = self.scaled(x)
        cos, sin = self.rotary(length, x.device, compute_dtype(x))
        for layer, built in zip(self.layers, masks):
            x = layer(x, cos, sin, built.mask, built.is_causal)
        return self.dropout(self.norm(x))


class T5GemmaDecoder(_Stack):
    def __init__(self, cfg: T5GemmaConfig, spec: AttentionSpec, num_layers: int, d_ff: int) -> None:
        super().__init__(cfg, spec)
        self.layers = nn.ModuleList(
            T5GemmaDecoderLayer(spec, d_ff, cfg.norm_eps, cfg.dropout) for _ in range(num_layers)
        )

    def forward(
        self, x: torch.Tensor, encoder_hidden: torch.Tensor, encoder_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        length = x.shape[1]
        # Decoder inputs pad on the right: causal attention never reaches a pad from a real token.
        masks = self.masks(MaskSpec(causal=True), length, x.device)
        cross = build_mask(self.backend, MaskSpec(key_keep=encoder_mask), length, encoder_hidden.shape[1], x.device)
        x = self.scaled(x)
        cos, sin = self.rotary(length, x.device, compute_dtype(x))
        for layer, built in zip(self.layers, masks):
            x = layer(x, cos, sin, built.mask, built.is_causal, encoder_hidden, cross.mask)
        return self.dropout(self.norm(x))


_ANNOUNCED: set[tuple[str, ...]] = set()


class T5GemmaModel(EncoderInputs, nn.Module):
    """T5Gemma encoder-decoder implementing :class:`spactor.architectures.base.Architecture`."""

    CAPABILITIES = frozenset({ENCODE, DECODE})
    has_decoder = True

    def __init__(self, cfg: T5GemmaConfig, vocab_size: int) -> None:
        super().__init__()
        dims = resolve_t5gemma_dims(cfg)
        self.config = cfg
        self.dims = dims
        self.hidden_size: int = dims["d_model"]
        self.vocab_size: int = vocab_size
        self.model_shape: ModelShape = t5gemma_shape(cfg.size, dims)
        scalar = dims["head_dim"] if cfg.query_pre_attn_scalar is None else cfg.query_pre_attn_scalar
        self.spec = AttentionSpec(
            d_model=dims["d_model"],
            num_heads=dims["num_heads"],
            num_kv_heads=dims["num_kv_heads"],
            head_dim=dims["head_dim"],
            backend=cfg.attention,
            dropout=cfg.attention_dropout,
            scale=float(scalar) ** -0.5,
            softcap=cfg.attn_logit_softcapping,
        )
        self.token_embedding = nn.Embedding(vocab_size, dims["d_model"])
        self.encoder = T5GemmaEncoder(cfg, self.spec, dims["num_layers"], dims["d_ff"])
        self.decoder = T5GemmaDecoder(cfg, self.spec, dims["num_decoder_layers"], dims["d_ff"])
        self.init_weights()
        slow = tuple(slow_paths(cfg))
        if slow and slow not in _ANNOUNCED:  # once per process and configuration, not per build
            _ANNOUNCED.add(slow)
            print("note: t5gemma off the fused attention path: " + "; ".join(slow), file=sys.stderr, flush=True)

    @torch.no_grad()
    def init_weights(self) -> None:
        """Every matrix and the embedding ~ N(0, init_std²), norm weights 0 (scale 1):
        Hugging Face's T5Gemma init. Also the re-init after ``to_empty()`` from a meta build."""
        init_normal(self, self.token_embedding, self.config.init_std, GemmaRMSNorm)

    def decode(
        self,
        decoder_input_ids: torch.Tensor,
        encoder_hidden: torch.Tensor,
        encoder_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return self.decoder(self.embed(decoder_input_ids), encoder_hidden, encoder_mask)

    def lm_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """The tied head (no rescaling: the stacks scale the embedding instead), soft-capped
        when ``final_logit_softcapping`` is set."""
        logits = F.linear(hidden, self.token_embedding.weight)
        cap = self.config.final_logit_softcapping
        return logits if cap is None else torch.tanh(logits / cap) * cap

    def blocks(self) -> list[nn.Module]:
        return [*self.encoder.layers, *self.decoder.layers]

    def forward(
        self,
        input_ids: torch.Tensor,
        decoder_input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        encoder_hidden = self.encode(input_ids, attention_mask)
        return self.lm_logits(self.decode(decoder_input_ids, encoder_hidden, attention_mask))


def t5gemma_block_roles(model: T5GemmaModel) -> list[BlockRole]:
    """The memory estimate's view: encoder layers over the encoder input; decoder layers
    over the targets, their cross-attention (and its key and value projections) reading
    the encoder's tokens."""
    cross = ("cross_attn", "cross_attn.k_proj", "cross_attn.v_proj")
    return [BlockRole(b) for b in model.encoder.layers] + [BlockRole(b, True, cross) for b in model.decoder.layers]


def t5gemma_analytic_flops(
    cfg: T5GemmaConfig, vocab_size: int, encoder_length: int, decoder_length: int
) -> float:
    """Forward FLOPs of one sequence (``spactor.architectures.base.AnalyticFlops``): as
    T5's, with q/o projections at ``num_heads`` and k/v at ``num_kv_heads`` (GQA, in the
    cross-attention too), GeGLU's three matrices, and the tied head on every target.
    Attention is counted over the full score matrix of every query head: a causal or
    sliding-window mask computes the same blocks. Embedding scaling, RoPE and logit
    soft-capping are elementwise."""
    dims = resolve_t5gemma_dims(cfg)
    d, d_ff, head_dim = dims["d_model"], dims["d_ff"], dims["head_dim"]
    q_width, kv_width = dims["num_heads"] * head_dim, dims["num_kv_heads"] * head_dim
    vocab = cfg.vocab_size if cfg.vocab_size is not None else vocab_size
    le, ld = encoder_length, decoder_length
    projections = 2 * d * q_width + 2 * d * kv_width  # q, o + k, v: per token
    ffn = 3 * d * d_ff
    encoder = le * (projections + ffn) + 2 * le * le * q_width
    decoder = (ld * (projections + 2 * d * q_width + ffn) + le * 2 * d * kv_width
               + 2 * ld * ld * q_width + 2 * ld * le * q_width)
    return 2.0 * (dims["num_layers"] * encoder + dims["num_decoder_layers"] * decoder + ld * d * vocab)
