"""An attention stack for modern decoder models: rotary positions, grouped-query
attention, gated feed-forwards, and masks passed as a *description*.

T5's layers (``spactor.architectures.layers``) keep their own additive bias (their
numerics are pinned by the Hugging Face parity tests). What is here serves models whose
positions are applied to q/k (RoPE) rather than added to the scores. Both hand their
q/k/v and mask to the one dispatch, :func:`spactor.architectures.kernels.attend`.

**Masks.** A stack describes what its attention may see with :class:`MaskSpec`
(causal or not; key padding; a bidirectional prefix per row) and builds the form its
backend needs once per forward (:func:`build_mask`), so every block gets the same
arguments (one compiled graph for all blocks):

* ``sdpa``: no mask tensor at all when it can be avoided, so PyTorch's fused kernels
  (flash, memory-efficient) run: ``is_causal=True`` for a causal batch without padding
  or prefix, nothing for a bidirectional batch without padding; a dense boolean
  ``(B, 1, Lq, Lk)`` mask only for a prefix or key padding.
* ``eager``: the reference; the same boolean mask, materialised (causal included).
* ``flex``: a ``BlockMask`` from the same description (``mask_mod``), so
  FlexAttention skips fully masked blocks.

Deciding "no padding" needs no data-dependent check (a host sync): the caller describes
the batch (``key_keep=None`` when it knows its rows are unpadded, as packed chunks are;
decoder-only layouts pad on the right, which causal attention never reaches from a real
token).

**Positions.** :class:`RotaryEmbedding` is a part with no parameters and no buffers
(nothing to restore after a meta-device build): it computes ``(cos, sin)`` for a length
once per forward in fp32, as Llama's reference does, and :func:`apply_rotary` rotates
q and k by halves (``rotate_half``, the Hugging Face / Llama layout).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from spactor.architectures.kernels import ATTENTION_BACKENDS, attend, check_attention, flex_block_mask
from spactor.checks import one_of, positive, positive_int
from spactor.overrides import overridable

GATED_ACTIVATIONS = ("silu", "gelu_tanh")  # SwiGLU (Llama) | GeGLU (T5 v1.1, Gemma)


# --------------------------------------------------------------------------- masks


@dataclass(frozen=True)
class MaskSpec:
    """What attention may see, described rather than materialised.

    ``causal``: a query sees keys at its own position and before. ``key_keep``: ``(B, Lk)``
    bool, True = a real key (None: no padding). ``prefix_length``: ``(B,)`` long; with
    ``causal``, queries ``< prefix_length[b]`` see the whole prefix (prefix-LM: the prefix
    is bidirectional, the rest causal). ``window``: a sliding window, as Hugging Face's
    Gemma masks draw it: causal, the last ``window`` keys up to the query's own
    (``q - k < window``); bidirectional, keys at most ``window`` away (``|q - k| <= window``).
    """

    causal: bool = False
    key_keep: torch.Tensor | None = None
    prefix_length: torch.Tensor | None = None
    window: int | None = None

    @property
    def is_plain(self) -> bool:
        """No tensor needed: only causality (or nothing) to apply."""
        return self.key_keep is None and self.prefix_length is None and self.window is None

    def dense(self, query_length: int, key_length: int, device: torch.device) -> torch.Tensor | None:
        """The boolean mask ``(B or 1, 1, Lq, Lk)`` (True = may attend), or None when nothing
        is masked. Every query keeps its own position so no row is empty (a padded query
        then attends to itself, not to NaN)."""
        if not self.causal and self.is_plain:
            return None
        if query_length != key_length and not self.causal and self.prefix_length is None and self.window is None:
            # Cross-attention over padded keys: a (B, 1, 1, Lk) mask SDPA broadcasts, no
            # (Lq, Lk) tensor; no query is left without a key (a row is never all padding).
            return self.key_keep.bool()[:, None, None, :]  # type: ignore[union-attr]
        q = torch.arange(query_length, device=device)[:, None]
        k = torch.arange(key_length, device=device)[None, :]
        allowed = (k <= q) if self.causal else torch.ones(query_length, key_length, dtype=torch.bool, device=device)
        allowed = allowed[None, None]  # (1, 1, Lq, Lk)
        if self.causal and self.prefix_length is not None:
            allowed = allowed | (k < self.prefix_length.to(device)[:, None, None, None])
        if self.window is not None:
            allowed = allowed & ((q - k < self.window) if self.causal else ((q - k).abs() <= self.window))
        if self.key_keep is not None:
            allowed = (allowed & self.key_keep.bool()[:, None, None, :]) | (k == q)
        return allowed


@dataclass(frozen=True)
class BuiltMask:
    """A :class:`MaskSpec` in the form one backend takes: ``mask`` (a bool tensor, a
    ``BlockMask`` for flex, or None) and ``is_causal`` (sdpa's flag, used only with no mask)."""

    mask: Any = None
    is_causal: bool = False


@overridable  # a FLOP tracer asks for flex's dense form (spactor.train.flops.traceable)
def build_mask(backend: str, spec: MaskSpec, query_length: int, key_length: int, device: torch.device) -> BuiltMask:
    """The cheapest form of ``spec`` that ``backend`` can run (see the module doc)."""
    if backend == "sdpa":
        # is_causal aligns to the top-left when Lq != Lk; only square (self-)attention uses it.
        if spec.is_plain and (not spec.causal or query_length == key_length):
            return BuiltMask(None, spec.causal)
        return BuiltMask(spec.dense(query_length, key_length, device))
    if backend == "eager":
        return BuiltMask(spec.dense(query_length, key_length, device))
    if backend == "flex":
        if not spec.causal and spec.is_plain:
            return BuiltMask()
        return BuiltMask(_flex_block_mask(spec, query_length, key_length, device))
    raise ValueError(f"unknown attention '{backend}'; valid: {', '.join(ATTENTION_BACKENDS)}")


def _flex_block_mask(spec: MaskSpec, query_length: int, key_length: int, device: torch.device) -> Any:
    causal, keep, prefix, window = spec.causal, spec.key_keep, spec.prefix_length, spec.window
    square = query_length == key_length

    def mask_mod(b: torch.Tensor, h: torch.Tensor, q_idx: torch.Tensor, kv_idx: torch.Tensor) -> torch.Tensor:
        allowed = q_idx >= kv_idx if causal else q_idx >= 0
        if causal and prefix is not None:
            allowed = allowed | (kv_idx < prefix[b])
        if window is not None:
            allowed = allowed & ((q_idx - kv_idx < window) if causal else ((q_idx - kv_idx).abs() <= window))
        if keep is not None:
            allowed = allowed & keep[b, kv_idx]
            if square:  # a padded query keeps itself (no empty row); cross-attention has real keys
                allowed = allowed | (q_idx == kv_idx)
        return allowed

    batch = None
    for t in (keep, prefix):
        if t is not None:
            batch = t.shape[0]
    return flex_block_mask(mask_mod, batch, query_length, key_length, device)


# --------------------------------------------------------------------------- config


def check_rotary_config(where: str, cfg: Any, sizes: dict[str, Any], dims: tuple[str, ...]) -> None:
    """The checks every rotary stack's config shares: a known ``size``, positive explicit
    dimensions (``dims``), a positive ``rope_theta`` and ``norm_eps``."""
    one_of(f"{where}.size", cfg.size, list(sizes))
    for name in dims:
        if getattr(cfg, name) is not None:
            positive_int(f"{where}.{name}", getattr(cfg, name))
    positive(f"{where}.rope_theta", cfg.rope_theta)
    positive(f"{where}.norm_eps", cfg.norm_eps)


def preset_dims(arch: str, cfg: Any, sizes: dict[str, tuple[Any, ...]], dims: tuple[str, ...]) -> dict[str, Any]:
    """``d_model, num_layers, num_heads, num_kv_heads, d_ff`` of the ``cfg.size`` preset
    (the first five entries of ``sizes[cfg.size]``) with ``cfg``'s explicit ``dims`` over
    them; ValueError for an unknown size or a dimension that is not a positive integer."""
    if cfg.size not in sizes:
        raise ValueError(f"unknown {arch} size '{cfg.size}'; valid: {', '.join(sizes)}")
    d_model, layers, heads, kv_heads, d_ff = sizes[cfg.size][:5]
    out: dict[str, Any] = {
        "d_model": d_model, "num_layers": layers, "num_heads": heads, "num_kv_heads": kv_heads, "d_ff": d_ff,
    }  # fmt: skip
    for name in dims:
        value = getattr(cfg, name)
        if value is not None:
            if isinstance(value, bool) or int(value) != value or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
            out[name] = int(value)
    return out


# --------------------------------------------------------------------------- positions


def resolve_rotary_heads(dims: dict[str, Any], num_heads: int | None, num_kv_heads: int | None,
                         head_dim: int | None) -> None:
    """Complete ``dims`` (``d_model``, ``num_heads``, ``num_kv_heads`` and maybe
    ``head_dim`` from a size preset and its overrides) for grouped-query attention with
    rotary positions, checked: the configured head counts (``num_heads`` given without
    ``num_kv_heads`` is plain multi-head), k/v heads dividing the query heads, and an even
    ``head_dim`` (``d_model / num_heads`` unless set). ``ValueError`` naming the rule."""
    if num_heads is not None and num_kv_heads is None:
        dims["num_kv_heads"] = dims["num_heads"]  # a head count without kv heads: plain multi-head
    if dims["num_heads"] % dims["num_kv_heads"]:
        raise ValueError(f"num_kv_heads ({dims['num_kv_heads']}) must divide num_heads ({dims['num_heads']})")
    if head_dim is None:
        if dims["d_model"] % dims["num_heads"]:
            raise ValueError(
                f"num_heads ({dims['num_heads']}) must divide d_model ({dims['d_model']}), or set head_dim"
            )
        dims["head_dim"] = dims["d_model"] // dims["num_heads"]
    if dims["head_dim"] % 2:
        raise ValueError(f"head_dim ({dims['head_dim']}) must be even for rotary positions")


class RotaryEmbedding(nn.Module):
    """RoPE (Su et al., 2021) in Llama's layout: frequencies ``theta^(-2i/d)`` for the
    first ``d/2`` dimensions, repeated for the second half (``rotate_half``)."""

    def __init__(self, head_dim: int, theta: float = 10000.0) -> None:
        super().__init__()
        if head_dim % 2:
            raise ValueError(f"rotary embeddings need an even head dimension, got {head_dim}")
        if not theta > 0:
            raise ValueError(f"rope theta must be > 0, got {theta}")
        self.head_dim = head_dim
        self.theta = float(theta)

    def forward(self, length: int, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """``(cos, sin)``, each ``(length, head_dim)`` in ``dtype``; computed in fp32 (no
        autocast: bf16 angles at position 4096 are off by whole radians)."""
        no_autocast = torch.amp.is_autocast_available(device.type)
        with torch.autocast(device.type, enabled=False) if no_autocast else contextlib.nullcontext():
            exponent = torch.arange(0, self.head_dim, 2, dtype=torch.int64, device=device).float() / self.head_dim
            inv_freq = 1.0 / (self.theta**exponent)
            positions = torch.arange(length, device=device, dtype=torch.float32)
            freqs = positions[:, None] * inv_freq[None, :]
            angles = torch.cat([freqs, freqs], dim=-1)
            return angles.cos().to(dtype), angles.sin().to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    first, second = x.chunk(2, dim=-1)
    return torch.cat([-second, first], dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` ``(B, H, L, d)`` by the angles of positions ``0..L-1``."""
    return x * cos + rotate_half(x) * sin


# --------------------------------------------------------------------------- attention


@dataclass(frozen=True)
class AttentionSpec:
    """One self-attention layer: ``num_kv_heads`` < ``num_heads`` is grouped-query
    attention (each k/v head serves ``num_heads // num_kv_heads`` query heads);
    ``scale`` None is ``head_dim**-0.5``."""

    d_model: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    backend: str = "sdpa"
    dropout: float = 0.0
    scale: float | None = None
    bias: bool = False
    softcap: float | None = None

    def __post_init__(self) -> None:
        for name in ("d_model", "num_heads", "num_kv_heads", "head_dim"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_kv_heads ({self.num_kv_heads}) must divide num_heads ({self.num_heads})")
        check_attention(self.backend, self.dropout)
        if self.softcap is not None and not self.softcap > 0:
            raise ValueError(f"softcap must be > 0, got {self.softcap}")
        if self.softcap is not None and self.backend == "flex":
            raise ValueError("attention soft-capping has no flex path; use attention sdpa or eager")

    @property
    def softmax_scale(self) -> float:
        return self.head_dim**-0.5 if self.scale is None else float(self.scale)


class SelfAttention(nn.Module):
    """Multi-head / grouped-query self-attention with optional rotary positions.

    Projections are named as in Hugging Face's Llama (``q_proj``, ``k_proj``, ``v_proj``,
    ``o_proj``) so weight conversion is a renaming."""

    def __init__(self, spec: AttentionSpec) -> None:
        super().__init__()
        self.spec = spec
        self.num_heads = spec.num_heads
        self.num_kv_heads = spec.num_kv_heads
        self.d_kv = spec.head_dim  # the names the memory estimate reads
        self.backend = spec.backend
        self.q_proj = nn.Linear(spec.d_model, spec.num_heads * spec.head_dim, bias=spec.bias)
        self.k_proj = nn.Linear(spec.d_model, spec.num_kv_heads * spec.head_dim, bias=spec.bias)
        self.v_proj = nn.Linear(spec.d_model, spec.num_kv_heads * spec.head_dim, bias=spec.bias)
        self.o_proj = nn.Linear(spec.num_heads * spec.head_dim, spec.d_model, bias=spec.bias)

    def _heads(self, x: torch.Tensor, heads: int) -> torch.Tensor:
        batch, length, _ = x.shape
        return x.view(batch, length, heads, self.spec.head_dim).transpose(1, 2)

    def forward(
        self,
        x: torch.Tensor,
        rotary: tuple[torch.Tensor, torch.Tensor] | None,
        mask: Any = None,
        is_causal: bool = False,
        source: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``mask``/``is_causal``: a :class:`BuiltMask`'s fields for this layer's backend
        (passed apart so a compiled block sees plain tensors and a constant). ``source``:
        the states keys and values are projected from (cross-attention; None: ``x``)."""
        kv_input = x if source is None else source
        q = self._heads(self.q_proj(x), self.num_heads)
        k = self._heads(self.k_proj(kv_input), self.num_kv_heads)
        v = self._heads(self.v_proj(kv_input), self.num_kv_heads)
        if rotary is not None:
            cos, sin = rotary
            q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        dropout_p = self.spec.dropout if self.training else 0.0
        out = attend(
            q, k, v, mask, self.spec.backend, self.spec.softmax_scale, dropout_p, is_causal,
            groups=self.num_heads // self.num_kv_heads, softcap=self.spec.softcap,
        )
        batch, _, length, _ = out.shape
        return self.o_proj(out.transpose(1, 2).reshape(batch, length, self.num_heads * self.spec.head_dim))


@torch.no_grad()
def init_normal(model: nn.Module, embedding: nn.Embedding, std: float, norm: type[nn.Module]) -> None:
    """Hugging Face's init of the modern decoder families (Llama, T5Gemma): the embedding
    and every linear ~ N(0, std²), biases 0, each ``norm`` its own ``reset_parameters``.
    Also the re-init after ``to_empty()`` from a meta-device build."""
    nn.init.normal_(embedding.weight, std=std)
    for module in model.modules():
        if isinstance(module, norm):
            module.reset_parameters()  # type: ignore[operator]
        elif isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)


# --------------------------------------------------------------------------- feed-forward


class GatedFeedForward(nn.Module):
    """``down(act(gate(x)) * up(x))``: SwiGLU (``silu``, Llama) or GeGLU (``gelu_tanh``).
    Names as in Hugging Face's Llama MLP."""

    def __init__(self, d_model: int, d_ff: int, activation: str = "silu", bias: bool = False) -> None:
        super().__init__()
        if activation not in GATED_ACTIVATIONS:
            raise ValueError(f"unknown gated activation '{activation}'; valid: {', '.join(GATED_ACTIVATIONS)}")
        self.activation = activation
        self.gate_proj = nn.Linear(d_model, d_ff, bias=bias)
        self.up_proj = nn.Linear(d_model, d_ff, bias=bias)
        self.down_proj = nn.Linear(d_ff, d_model, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = self.gate_proj(x)
        gate = F.silu(gate) if self.activation == "silu" else F.gelu(gate, approximate="tanh")
        return self.down_proj(gate * self.up_proj(x))
