"""T5 v1.0 / v1.1 encoder-decoder (registered as architecture ``t5`` by ``t5_plugin``).

Module names follow Hugging Face's where it is cheap (``q/k/v/o``, ``wi``/``wi_0``/
``wi_1``/``wo``) so weight conversion is a renaming of the block paths:

    token_embedding                          HF shared
    encoder.rel_bias.embedding               HF encoder.block.0.layer.0.SelfAttention.relative_attention_bias
    encoder.blocks.N.self_attn.{q,k,v,o}     HF encoder.block.N.layer.0.SelfAttention.*
    encoder.blocks.N.self_attn_norm          HF encoder.block.N.layer.0.layer_norm
    encoder.blocks.N.ffn.*, ffn_norm         HF encoder.block.N.layer.1.DenseReluDense.*, layer_norm
    encoder.final_norm                       HF encoder.final_layer_norm
    decoder.blocks.N.cross_attn{,_norm}      HF decoder.block.N.layer.1.EncDecAttention / layer_norm
    lm_head (untied: v1.1 by default)        HF lm_head
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from spactor.architectures.base import DECODE, ENCODE, BlockRole, EncoderInputs
from spactor.architectures.kernels import check_attention
from spactor.architectures.layers import (
    Attention,
    BlockSpec,
    DecoderBlock,
    EncoderBlock,
    FeedForward,
    RelativePositionBias,
    RMSNorm,
    attention_bias,
    compute_dtype,
    model_field_rule,
)
from spactor.checks import CheckContext, ModelShape, check_fields, hf_directory, one_of, positive_int
from spactor.config import ConfigError

# (d_model, d_ff, num_heads, num_layers, d_kv); num_decoder_layers defaults to num_layers.
T5_SIZES: dict[str, dict[str, tuple[int, int, int, int, int]]] = {
    "1.0": {
        "tiny": (64, 256, 4, 2, 16),
        "small": (512, 2048, 8, 6, 64),
        "base": (768, 3072, 12, 12, 64),
        "large": (1024, 4096, 16, 24, 64),
    },
    "1.1": {
        "tiny": (64, 128, 4, 2, 16),
        "small": (512, 1024, 6, 8, 64),
        "base": (768, 2048, 12, 12, 64),
        "large": (1024, 2816, 16, 24, 64),
    },
}
_DIM_FIELDS = ("d_model", "d_ff", "num_heads", "num_layers", "d_kv")


@dataclass
class T5Config:
    """T5 architecture knobs; ``None`` dimensions come from the ``size`` preset."""

    version: str = "1.0"  # "1.0": ReLU FFN, tied head | "1.1": gated-GELU FFN, untied head (tie_embeddings)
    size: str = "base"  # tiny | small | base | large
    d_model: int | None = None
    d_ff: int | None = None
    num_heads: int | None = None
    num_layers: int | None = None
    num_decoder_layers: int | None = None
    d_kv: int | None = None
    dropout: float = 0.0
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    attention: str = "sdpa"  # sdpa | eager | flex (FlexAttention; needs dropout 0)
    init_std: float = 1.0  # T5's initializer factor: multiplies every init std
    vocab_size: int | None = None  # None: the tokenizer's size, given at build time
    init_from: str | None = None  # "hf:PATH": start from HF T5 weights (config.json + model.safetensors)
    # None: the version's head (1.0 tied, 1.1 untied). true: the lm head is the token
    # embedding, output scaled by d_model**-0.5 (HF's tie_word_embeddings: true, which
    # transformers 5 also gives a v1.1 built from a default config); false: its own lm_head.
    tie_embeddings: bool | None = None

    def check(self, where: str, ctx: CheckContext) -> None:
        check_fields(where, self, model_field_rule)
        one_of(f"{where}.version", str(self.version), list(T5_SIZES))
        one_of(f"{where}.size", self.size, list(T5_SIZES[str(self.version)]))
        for name in T5_DIMS:
            if getattr(self, name) is not None:
                positive_int(f"{where}.{name}", getattr(self, name))
        try:
            resolve_t5_dims(self)
        except ValueError as e:
            raise ConfigError(f"{where}: {e}") from None
        hf_directory(f"{where}.init_from", self.init_from, "T5")

    def hidden_size(self) -> int:
        return int(resolve_t5_dims(self)["d_model"])

    def shape(self) -> ModelShape:
        """The dimensions the RTD generator and head are sized from."""
        return t5_shape(self.size, resolve_t5_dims(self))


T5_DIMS = ("d_model", "d_ff", "num_heads", "num_layers", "num_decoder_layers", "d_kv")


def t5_shape(size: str | None, dims: dict[str, Any]) -> ModelShape:
    return ModelShape(
        size=size,
        d_model=int(dims["d_model"]),
        d_ff=int(dims["d_ff"]),
        num_layers=int(dims["num_layers"]),
        num_heads=int(dims["num_heads"]),
        d_kv=int(dims["d_kv"]),
    )


def _version(cfg: T5Config) -> str:
    # YAML `version: 1.0` arrives as the float 1.0; accept it.
    version = str(cfg.version)
    if version not in T5_SIZES:
        raise ValueError(f"unknown T5 version '{cfg.version}'; valid: {', '.join(T5_SIZES)}")
    return version


def resolve_t5_dims(cfg: T5Config) -> dict[str, Any]:
    """Fill the ``None`` dimensions of ``cfg`` from its size preset.

    Returns ``d_model, d_ff, num_heads, num_layers, num_decoder_layers, d_kv`` plus the
    version-dependent ``ffn`` ("relu" | "gated-gelu") and ``tie_embeddings``.
    """
    version = _version(cfg)
    presets = T5_SIZES[version]
    if cfg.size not in presets:
        raise ValueError(f"unknown T5 size '{cfg.size}'; valid: {', '.join(presets)}")
    dims: dict[str, Any] = dict(zip(_DIM_FIELDS, presets[cfg.size]))
    for name in (*_DIM_FIELDS, "num_decoder_layers"):
        value = getattr(cfg, name)
        if value is not None:
            if int(value) != value or value < 1:
                raise ValueError(f"T5 {name} must be a positive integer, got {value!r}")
            dims[name] = int(value)
    dims.setdefault("num_decoder_layers", dims["num_layers"])
    check_attention(cfg.attention, cfg.dropout)
    dims["ffn"] = "relu" if version == "1.0" else "gated-gelu"
    dims["tie_embeddings"] = version == "1.0" if cfg.tie_embeddings is None else bool(cfg.tie_embeddings)
    return dims


class T5EncoderStack(nn.Module):
    """Encoder blocks sharing one bidirectional relative-bias table, then a final norm."""

    def __init__(self, spec: BlockSpec, num_layers: int, num_buckets: int, max_distance: int) -> None:
        super().__init__()
        self.backend = spec.attention
        self.rel_bias = RelativePositionBias(spec.num_heads, True, num_buckets, max_distance)
        self.blocks = nn.ModuleList(EncoderBlock(spec) for _ in range(num_layers))
        self.final_norm = RMSNorm(spec.d_model)
        self.dropout = nn.Dropout(spec.dropout)

    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        length = x.shape[1]
        # Built once per forward in the compute dtype and shared by every layer (T5
        # shares the position bias the same way).
        bias = attention_bias(self.backend, compute_dtype(x), length, length, self.rel_bias, attention_mask)
        x = self.dropout(x)
        for block in self.blocks:
            x = block(x, bias)
        return self.dropout(self.final_norm(x))


class T5DecoderStack(nn.Module):
    """Decoder blocks sharing one causal relative-bias table, then a final norm."""

    def __init__(self, spec: BlockSpec, num_layers: int, num_buckets: int, max_distance: int) -> None:
        super().__init__()
        self.backend = spec.attention
        self.rel_bias = RelativePositionBias(spec.num_heads, False, num_buckets, max_distance)
        self.blocks = nn.ModuleList(DecoderBlock(spec) for _ in range(num_layers))
        self.final_norm = RMSNorm(spec.d_model)
        self.dropout = nn.Dropout(spec.dropout)

    def forward(
        self, x: torch.Tensor, encoder_hidden: torch.Tensor, encoder_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        length, dtype = x.shape[1], compute_dtype(x)
        # (1, H, T, T): causal and relative; no batch dimension.
        self_bias = attention_bias(self.backend, dtype, length, length, self.rel_bias, causal=True)
        # Cross-attention has no position bias: only the encoder padding, if any.
        cross_bias = attention_bias(
            self.backend, dtype, length, encoder_hidden.shape[1], key_keep=encoder_mask
        )
        x = self.dropout(x)
        for block in self.blocks:
            x = block(x, self_bias, encoder_hidden, cross_bias)
        return self.dropout(self.final_norm(x))


class T5Model(EncoderInputs, nn.Module):
    """T5 encoder-decoder implementing :class:`spactor.architectures.base.Architecture`."""

    CAPABILITIES = frozenset({ENCODE, DECODE})
    has_decoder = True

    def __init__(self, cfg: T5Config, vocab_size: int) -> None:
        super().__init__()
        dims = resolve_t5_dims(cfg)
        self.config = cfg
        self.dims = dims
        self.hidden_size: int = dims["d_model"]
        self.model_shape: ModelShape = t5_shape(cfg.size, dims)  # what the RTD generator is sized from
        self.vocab_size: int = vocab_size
        self.tie_embeddings: bool = dims["tie_embeddings"]
        self.init_std = cfg.init_std
        spec = BlockSpec(
            d_model=dims["d_model"],
            d_ff=dims["d_ff"],
            num_heads=dims["num_heads"],
            d_kv=dims["d_kv"],
            ffn=dims["ffn"],
            dropout=cfg.dropout,
            attention=cfg.attention,
        )
        self.spec = spec
        buckets, distance = cfg.relative_attention_num_buckets, cfg.relative_attention_max_distance
        self.token_embedding = nn.Embedding(vocab_size, spec.d_model)
        self.encoder = T5EncoderStack(spec, dims["num_layers"], buckets, distance)
        self.decoder = T5DecoderStack(spec, dims["num_decoder_layers"], buckets, distance)
        self.lm_head = None if self.tie_embeddings else nn.Linear(spec.d_model, vocab_size, bias=False)
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """Mesh-TF T5 initialisation, every std multiplied by ``init_std``.

        Also the re-init after ``to_empty()`` when the model was built on ``meta``.
        Unlike Hugging Face (std 1.0, a known bug: initial logits with variance
        ~d_model), the untied v1.1 ``lm_head`` gets d_model^-0.5 like Mesh TF / T5X's
        dense default.
        """
        f, spec = self.init_std, self.spec
        d, d_kv, h, d_ff = spec.d_model, spec.d_kv, spec.num_heads, spec.d_ff
        nn.init.normal_(self.token_embedding.weight, std=f * 1.0)
        if self.lm_head is not None:
            nn.init.normal_(self.lm_head.weight, std=f * d**-0.5)
        for module in self.modules():
            if isinstance(module, RMSNorm):
                module.reset_parameters()
            elif isinstance(module, RelativePositionBias):
                nn.init.normal_(module.embedding.weight, std=f * d**-0.5)
            elif isinstance(module, FeedForward):
                for wi in (module.wi_0, module.wi_1) if module.gated else (module.wi,):
                    nn.init.normal_(wi.weight, std=f * d**-0.5)
                nn.init.normal_(module.wo.weight, std=f * d_ff**-0.5)
            elif isinstance(module, Attention):
                # q absorbs the missing 1/sqrt(d_kv) score scaling.
                nn.init.normal_(module.q.weight, std=f * (d * d_kv) ** -0.5)
                nn.init.normal_(module.k.weight, std=f * d**-0.5)
                nn.init.normal_(module.v.weight, std=f * d**-0.5)
                nn.init.normal_(module.o.weight, std=f * (h * d_kv) ** -0.5)

    def decode(
        self,
        decoder_input_ids: torch.Tensor,
        encoder_hidden: torch.Tensor,
        encoder_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return self.decoder(self.embed(decoder_input_ids), encoder_hidden, encoder_mask)

    def lm_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.lm_head is not None:
            return self.lm_head(hidden)
        # Tied head: the embedding's std is 1, so rescale to keep logits O(1) (Mesh TF).
        return F.linear(hidden * self.hidden_size**-0.5, self.token_embedding.weight)

    def blocks(self) -> list[nn.Module]:
        return [*self.encoder.blocks, *self.decoder.blocks]

    def forward(
        self,
        input_ids: torch.Tensor,
        decoder_input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        encoder_hidden = self.encode(input_ids, attention_mask)
        return self.lm_logits(self.decode(decoder_input_ids, encoder_hidden, attention_mask))


def t5_block_roles(model: T5Model) -> list[BlockRole]:
    """The memory estimate's view of T5's blocks: the encoder's run over the encoder
    input; the decoder's over the targets, their cross-attention (and its key and value
    projections) reading the encoder's tokens."""
    cross = ("cross_attn", "cross_attn.k", "cross_attn.v")
    return [BlockRole(b) for b in model.encoder.blocks] + [BlockRole(b, True, cross) for b in model.decoder.blocks]


def t5_analytic_flops(cfg: T5Config, vocab_size: int, encoder_length: int, decoder_length: int) -> float:
    """Forward FLOPs of one sequence (``spactor.architectures.base.AnalyticFlops``):
    encoder self-attention and FFN over the input, decoder self- and cross-attention and
    FFN over the targets (cross-attention's k/v projected from the encoder's tokens), the
    LM head on every target. The relative bias is a lookup, the tied head's rescaling
    elementwise: neither counts."""
    dims = resolve_t5_dims(cfg)
    d, d_ff, inner = dims["d_model"], dims["d_ff"], dims["num_heads"] * dims["d_kv"]
    vocab = cfg.vocab_size if cfg.vocab_size is not None else vocab_size
    ffn = (2 if dims["ffn"] == "relu" else 3) * d * d_ff  # wi, wo | wi_0, wi_1, wo: per token
    le, ld = encoder_length, decoder_length

    def attention(queries: int, keys: int) -> int:  # q kᵀ and p v, every head
        return 2 * queries * keys * inner

    encoder = le * (4 * d * inner + ffn) + attention(le, le)
    decoder = (ld * (4 * d * inner + 2 * d * inner + ffn) + le * 2 * d * inner
               + attention(ld, ld) + attention(ld, le))
    head = ld * d * vocab
    return 2.0 * (dims["num_layers"] * encoder + dims["num_decoder_layers"] * decoder + head)


def count_parameters(model: nn.Module) -> int:
    """Number of unique parameters (a tied weight counts once); works on ``meta``."""
    seen: set[int] = set()
    total = 0
    for param in model.parameters():
        if id(param) not in seen:
            seen.add(id(param))
            total += param.numel()
    return total
