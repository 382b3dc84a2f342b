"""The RTD generator: a small encoder-only MLM that fills [M] positions (ELECTRA, SpacTor).

Built by the ``rtd`` objective next to the discriminator D from its own block,
``objectives.rtd.generator: {arch: encoder, sizing: spactor, ...}``: ``arch`` names
an entry of the ``GENERATORS`` registry, the other keys are that entry's config
(:class:`EncoderGeneratorConfig` for ``encoder``), so a differently shaped generator is a
new entry, not new ``rtd`` fields. A generator talks to D only through D's token embedding
(an ``nn.Embedding`` of width ``embedding_dim`` = D's hidden size). What the objective
asks of one (a factory ``(cfg, embedding, hidden_size=, input_length=,
embedding_sharing=)`` returning it; a factory that also takes ``model_shape=`` gets D's
dimensions, a :class:`~spactor.checks.ModelShape` or None): ``token_embedding`` (the embedding it reads),
``masked_logits(ids, attention, (rows, cols))`` → ``(B, K, V)``, ``logits_all(ids,
attention)`` → ``(B, L, V)`` and ``blocks()``; its entry's
:class:`~spactor.architectures.base.GeneratorSpec` gives its sharing modes and the loader
of a trained one (the objective imports nothing from this module).

Embedding sharing (``embedding_sharing``):

* ``shared`` — G reads D's ``token_embedding`` (the same Parameter; ELECTRA, SpacTor). G
  does not register it, so it appears once in the state dict (under D) and once in the
  optimizer.
* ``none`` — G owns its embedding.
* ``gdes`` — DeBERTa-v3 gradient-disentangled sharing: G owns E_G; the rtd objective
  feeds D ``stop_grad(E_G[ids]) + E_D[ids]``, D's own embedding playing E_Δ.

Sizes: the ``encoder`` generator's unset dimensions follow D by its ``sizing`` rule
(SpacTor's Table 5 proportions, or ELECTRA's width fractions; :func:`sized_by_rule`), so
a recipe keeps the paper's generator-to-discriminator proportions at every ``model.size``.

In every mode G's embedding has D's width, so a generator trained with one mode loads into
another. Where G's width ``d_model`` differs, a Linear projects in (embedding → G) and out
(G → embedding).

Output logits are a projection to the vocabulary tied to the embedding G reads (D's when
shared: the paper's W^G is then the shared embedder), plus a per-token bias. ``head``
says what comes before it:

* ``linear`` — nothing (SpacTor's Eq. 3); a Linear ``proj_out`` only where G's width
  differs from the embedding's.
* ``electra`` — ELECTRA's ``get_token_logits``: dense (G's width → the embedding's, with
  bias) → GELU (erf) → LayerNorm (eps 1e-12), which also takes ``proj_out``'s place.

With the T5 layout (``norm: rmsnorm``, embedding std 1) the tied projection is scaled by
``embedding_dim^-0.5`` as T5 v1.0 does; BERT-style embeddings (std 0.02) are not scaled.
So match G's ``norm`` to D's.

``masked_logits`` computes the vocabulary projection only at the masked positions
(``n_masked × V``); ``logits_all`` computes ``B × L × V`` (the paper's cost, for
comparisons).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
import torch.nn.functional as F
from torch import nn
from torch.distributed.checkpoint.metadata import TensorStorageMetadata

from spactor.checks import ModelShape, fail, is_int, is_number, one_of
from spactor.architectures.base import SHARING_MODES, GeneratorSpec
from spactor.architectures.dcp_read import read_dcp_locally
from spactor.checkpoint_layout import (
    DISCRIMINATOR_KEY,
    OBJECTIVES_KEY,
    checkpoints_dir,
    dcp_dir,
    has_weights,
    is_dcp_dir,
    manifest_step,
    objective_key,
    step_dir_of,
    step_dirs,
)
from spactor.architectures.encoder import NORMS, POSITIONS, EncoderBody, EncoderSpec
from spactor.config import ConfigError
from spactor.registry import GENERATORS

HEADS = ("linear", "electra")  # what precedes the tied output projection
ELECTRA_LAYER_NORM_EPS = 1e-12  # tf.contrib.layers.layer_norm's, which ELECTRA uses
EMBEDDING_KEY = "embedding.weight"  # G's own embedding in its state dict (none, gdes)
DISCRIMINATOR_EMBEDDING_KEY = f"{DISCRIMINATOR_KEY}token_embedding.weight"  # D's, inside a run's ``model``
ELECTRA_HEAD_KEY = "head_dense.weight"  # present exactly when a generator has head: electra


@dataclass(frozen=True)
class GeneratorConfig(EncoderSpec):
    """The built generator: its encoder stack's :class:`EncoderSpec` (one shape and layout
    dataclass for D's encoder and G's) with the generator's defaults, plus how it shares
    D's embedding and which output head it has."""

    num_layers: int = 4
    d_model: int = 768
    num_heads: int = 12
    d_ff: int = 1024
    d_kv: int = 64
    norm: str = "rmsnorm"  # rmsnorm (T5 blocks) | layernorm (BERT/ELECTRA blocks)
    positions: str = "relative"  # relative | learned
    embedding_sharing: str = "shared"  # shared | none | gdes
    head: str = "linear"  # linear (SpacTor Eq. 3) | electra (dense → GELU → LayerNorm first)


# How a generator is sized from its discriminator D when the block leaves a dimension
# unset (``sizing``); an explicit value always wins.
SIZINGS = ("spactor", "electra")
# SpacTor (Table 5): G is as wide as D (it reads D's embedder with no projection) and has
# D's heads; its depth is a fraction of D's encoder and its d_ff a multiple of D's width:
# D's size -> (layers / D's encoder layers, d_ff / D's d_model). Base: 12 -> 4 layers,
# d_ff 1024; Large: 24 -> 6 layers, d_ff 2048. The paper ran only these two; smaller sizes
# keep Base's proportions (and so does a size not listed here). The d_ff is D's width
# times the multiple (not D's d_ff), so a v1.1 D (gated, smaller d_ff) gets the same G.
SPACTOR_PROPORTIONS: dict[str, tuple[float, float]] = {
    "tiny": (1 / 3, 4 / 3),
    "small": (1 / 3, 4 / 3),
    "base": (1 / 3, 4 / 3),
    "large": (1 / 4, 2.0),
}
# ELECTRA (Clark et al., 2020, Table 6): G has D's depth; its width, heads and d_ff are
# D's times this multiplier: 1/4 at Small and Large, 1/3 at Base. Tiny follows Small; a
# size not listed, Base.
ELECTRA_FRACTIONS: dict[str, float] = {"tiny": 1 / 4, "small": 1 / 4, "base": 1 / 3, "large": 1 / 4}
FF_MULTIPLE = 8  # a derived d_ff is rounded to a multiple of this (Base's 1024 and Large's 2048 are)


def assumed_shape(hidden_size: int) -> ModelShape:
    """The D a generator is sized against when D's architecture does not describe its
    shape: Base's proportions at D's width (12 layers, d_ff 4·width, heads of 64)."""
    d_kv = min(64, hidden_size)
    return ModelShape(None, hidden_size, 4 * hidden_size, 12, max(1, hidden_size // d_kv), d_kv)


def sized_by_rule(sizing: str, shape: ModelShape) -> ModelShape:
    """A generator's dimensions by ``sizing`` beside a D of ``shape``, before the block's
    explicit values are applied (see :data:`SPACTOR_PROPORTIONS`, :data:`ELECTRA_FRACTIONS`):
    the one shape dataclass, :class:`~spactor.checks.ModelShape`, with no size preset."""
    if sizing == "electra":
        fraction = ELECTRA_FRACTIONS.get(shape.size or "", ELECTRA_FRACTIONS["base"])
        width = max(1, round(shape.d_model * fraction))
        heads = max(1, round(shape.num_heads * fraction))
        d_ff = max(1, round(shape.d_ff * fraction))
        return ModelShape(None, width, d_ff, shape.num_layers, heads, max(1, width // heads))
    if sizing != "spactor":
        raise ConfigError(f"unknown generator sizing '{sizing}'; valid: {', '.join(SIZINGS)}")
    layer_fraction, ff_multiple = SPACTOR_PROPORTIONS.get(shape.size or "", SPACTOR_PROPORTIONS["base"])
    layers = max(1, round(shape.num_layers * layer_fraction))
    d_ff = max(FF_MULTIPLE, round(shape.d_model * ff_multiple / FF_MULTIPLE) * FF_MULTIPLE)
    return ModelShape(None, shape.d_model, d_ff, layers, shape.num_heads, shape.d_kv)


@dataclass
class EncoderGeneratorConfig:
    """``objectives.rtd.generator: {arch: encoder, ...}``: the generator's shape. Unset
    (null) dimensions come from the discriminator D by the ``sizing`` rule, so a recipe
    keeps the paper's proportions at every ``model.size``; a value set here wins."""

    # spactor: SpacTor's Table 5 (Base: 4 layers, D's width, d_ff 1024; Large: 6, 2048;
    # smaller sizes Base's proportions) | electra: ELECTRA's (D's depth; width, heads and
    # d_ff x 1/4 at Small/Large, 1/3 at Base). See SPACTOR_PROPORTIONS / ELECTRA_FRACTIONS.
    sizing: str = "spactor"
    layers: int | None = None  # None: by sizing (SpacTor: 4 at Base, 6 at Large)
    d_model: int | None = None  # None: by sizing (SpacTor: D's width)
    heads: int | None = None  # None: by sizing, or d_model // d_kv where d_model/d_kv are set
    d_ff: int | None = None  # None: by sizing (SpacTor: 1024 at Base, 2048 at Large)
    d_kv: int | None = None  # None: by sizing (SpacTor: D's)
    # ELECTRA's `generator_hidden_size`: the width as a fraction of D's. When set it
    # replaces d_model/heads/d_ff with width = fraction·D, heads of ~d_kv dims, d_ff =
    # 4·width (the layout runs saved before `sizing` existed use; `sizing: electra` is the
    # per-size rule).
    hidden_fraction: float | None = None
    norm: str = "rmsnorm"  # rmsnorm (T5 blocks) | layernorm (ELECTRA blocks); match D
    positions: str = "relative"  # relative | learned
    dropout: float = 0.0
    head: str = "linear"  # linear (SpacTor Eq. 3) | electra (ELECTRA: dense → GELU → LayerNorm)

    def check(self, where: str, ctx: Any) -> None:
        """One-line ConfigError for the first bad value; ``where`` is the block's key
        (``objectives.rtd.generator``). With ``ctx.hidden_size`` (D's width; None or no
        ctx: not known yet) also what depends on D (``ctx.model_shape``: its dimensions)."""
        one_of(f"{where}.sizing", self.sizing, list(SIZINGS))
        for key in ("layers", "d_model", "heads", "d_ff", "d_kv"):
            value = getattr(self, key)
            if value is not None and not (is_int(value) and value > 0):
                fail(f"{where}.{key}", value, "must be a positive integer")
        fraction = self.hidden_fraction
        if fraction is not None and not (is_number(fraction) and 0 < fraction <= 1):
            fail(f"{where}.hidden_fraction", fraction, "must be in (0, 1]")
        if not (is_number(self.dropout) and 0 <= self.dropout < 1):
            fail(f"{where}.dropout", self.dropout, "must be in [0, 1)")
        for key, valid in (("norm", NORMS), ("positions", POSITIONS), ("head", HEADS)):
            if getattr(self, key) not in valid:
                fail(f"{where}.{key}", getattr(self, key), f"must be one of {', '.join(valid)}")
        hidden_size = getattr(ctx, "hidden_size", None)
        if hidden_size is None:
            return
        if self.d_model is not None and self.d_model > hidden_size:
            fail(
                f"{where}.d_model",
                self.d_model,
                f"wider than the discriminator (hidden size {hidden_size}): a generator as strong as D "
                "collapses the detection task; use about 1/4-1/3 of D",
            )
        shape = getattr(ctx, "model_shape", None)
        self.dimensions(hidden_size, getattr(ctx, "input_length", 1), "shared", shape, where)

    def dimensions(
        self,
        hidden_size: int,
        input_length: int,
        embedding_sharing: str,
        model_shape: ModelShape | None = None,
        where: str = "objectives.rtd.generator",
    ) -> GeneratorConfig:
        """The built generator's :class:`GeneratorConfig` beside a D of ``hidden_size``
        (``model_shape``: D's dimensions; None: :func:`assumed_shape`). A ConfigError
        names ``where``'s key when the set values do not fit together."""
        shape = model_shape if model_shape is not None else assumed_shape(hidden_size)
        rule = sized_by_rule(self.sizing, shape)
        layers = self.layers or rule.num_layers
        if self.hidden_fraction is not None:
            if not 0 < self.hidden_fraction <= 1:
                raise ConfigError(f"generator hidden_fraction must be in (0, 1], got {self.hidden_fraction}")
            d_model = max(1, round(hidden_size * self.hidden_fraction))
            heads = max(1, round(d_model / (self.d_kv or shape.d_kv)))
            d_kv, d_ff = d_model // heads, 4 * d_model
        elif self.d_model is None and self.heads is None and self.d_kv is None:
            d_model, heads, d_kv, d_ff = rule.d_model, rule.num_heads, rule.d_kv, self.d_ff or rule.d_ff
        else:
            d_model, d_kv, heads = self.d_model or rule.d_model, self.d_kv or rule.d_kv, self.heads
            if heads is None:
                if d_model % d_kv:
                    fail(
                        f"{where}.d_model" if self.d_model else f"{where}.d_kv",
                        self.d_model or self.d_kv or d_kv,
                        f"the generator width {d_model} is not a multiple of d_kv {d_kv}; set {where}.heads",
                    )
                heads = d_model // d_kv
            d_ff = self.d_ff or rule.d_ff
        return GeneratorConfig(
            num_layers=layers,
            d_model=d_model,
            num_heads=heads,
            d_ff=d_ff,
            d_kv=d_kv,
            norm=self.norm,
            positions=self.positions,
            max_positions=input_length,
            dropout=self.dropout,
            embedding_sharing=embedding_sharing,
            head=self.head,
        )


class Generator(nn.Module):
    """Encoder-only MLM generator; see the module docstring for sharing and the head."""

    def __init__(self, cfg: GeneratorConfig, embedding: nn.Embedding) -> None:
        """``embedding``: D's token embedding (read when shared, else only its shape)."""
        super().__init__()
        if cfg.embedding_sharing not in SHARING_MODES:
            raise ValueError(
                f"unknown embedding_sharing '{cfg.embedding_sharing}'; valid: {', '.join(SHARING_MODES)}"
            )
        if cfg.head not in HEADS:
            raise ValueError(f"unknown generator head '{cfg.head}'; valid: {', '.join(HEADS)}")
        self.config = cfg
        self.spec: EncoderSpec = cfg  # the encoder stack's shape and layout
        self.sharing = cfg.embedding_sharing
        self.vocab_size, self.embedding_dim = embedding.num_embeddings, embedding.embedding_dim
        if self.sharing == "shared":
            # A tuple keeps nn.Module from registering D's embedding as G's submodule. The
            # module (not its Parameter) is kept so a later re-wrap of D (FSDP) is seen.
            self._borrowed: tuple[nn.Embedding, ...] = (embedding,)
            self.embedding = None
        else:
            self._borrowed = ()
            self.embedding = nn.Embedding(self.vocab_size, self.embedding_dim)
        width_differs = self.embedding_dim != cfg.d_model
        bias = not self.spec.t5_style
        self.proj_in = nn.Linear(self.embedding_dim, cfg.d_model, bias=bias) if width_differs else None
        self.body = EncoderBody(self.spec)
        electra_head = cfg.head == "electra"
        self.proj_out: nn.Linear | None = None
        self.head_dense: nn.Linear | None = None
        self.head_norm: nn.LayerNorm | None = None
        if electra_head:  # its dense maps G's width to the embedding's: no proj_out
            self.head_dense = nn.Linear(cfg.d_model, self.embedding_dim)
            self.head_norm = nn.LayerNorm(self.embedding_dim, eps=ELECTRA_LAYER_NORM_EPS)
        elif width_differs:
            self.proj_out = nn.Linear(cfg.d_model, self.embedding_dim, bias=bias)
        self.output_bias = nn.Parameter(torch.zeros(self.vocab_size))
        self.output_scale = self.embedding_dim**-0.5 if self.spec.t5_style else 1.0
        self.init_weights()

    @property
    def token_embedding(self) -> nn.Embedding:
        """The embedding G reads: D's when shared, else G's own (E_G)."""
        return self._borrowed[0] if self._borrowed else self.embedding  # type: ignore[return-value]

    def embed_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        """E[ids] with the embedding G reads (gdes: D's input adds stop_grad(E_G[ids])).
        A method, so that FSDP gathers G's parameters around it as around ``forward``."""
        return self.token_embedding(ids)

    @torch.no_grad()
    def init_weights(self) -> None:
        """Init what G owns (never D's borrowed embedding)."""
        spec = self.spec
        if self.embedding is not None:
            nn.init.normal_(self.embedding.weight, std=spec.embedding_std)
        for proj in (self.proj_in, self.proj_out, self.head_dense):
            if proj is not None:
                nn.init.normal_(proj.weight, std=spec.dense_std(proj.in_features))
                if proj.bias is not None:
                    nn.init.zeros_(proj.bias)
        if self.head_norm is not None:
            nn.init.ones_(self.head_norm.weight)
            nn.init.zeros_(self.head_norm.bias)
        self.body.init_weights()
        nn.init.zeros_(self.output_bias)

    def hidden_states(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``(B, L, d_model)`` contextual states of G."""
        x = self.token_embedding(input_ids)
        if self.proj_in is not None:
            x = self.proj_in(x)
        return self.body(x, attention_mask)

    def project(self, hidden: torch.Tensor) -> torch.Tensor:
        """Vocabulary logits for G's hidden states of any leading shape."""
        if self.proj_out is not None:
            hidden = self.proj_out(hidden)
        if self.head_dense is not None and self.head_norm is not None:
            hidden = self.head_norm(F.gelu(self.head_dense(hidden)))
        return F.linear(hidden * self.output_scale, self.token_embedding.weight, self.output_bias)

    def masked_logits(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, positions_mask: torch.Tensor
    ) -> torch.Tensor:
        """``(n_masked, V)`` logits at ``positions_mask`` (row-major order); the vocabulary
        projection runs on those rows only, never on ``B × L``."""
        return self.project(self.hidden_states(input_ids, attention_mask)[positions_mask])

    def logits_all(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``(B, L, V)`` logits at every position (what the paper's cost assumes)."""
        return self.project(self.hidden_states(input_ids, attention_mask))

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, positions_mask: torch.Tensor
    ) -> torch.Tensor:
        return self.masked_logits(input_ids, attention_mask, positions_mask)

    def blocks(self) -> list[nn.Module]:
        return list(self.body.blocks)


def _check_checkpoint(generator: nn.Module, path: str | Path, objective_name: str) -> tuple[str, int | None]:
    return check_generator_checkpoint(generator, path, objective_name)  # type: ignore[arg-type]


def _load_weights(generator: nn.Module, path: str | Path, objective_name: str) -> str:
    return load_generator_weights(generator, path, objective_name)  # type: ignore[arg-type]


# What the rtd objective reads about this generator (spactor.architectures.base): every
# sharing mode, and the loader of a trained run's generator (Fast-ELECTRA).
ENCODER_GENERATOR_SPEC = GeneratorSpec(
    sharing_modes=SHARING_MODES, check_checkpoint=_check_checkpoint, load_weights=_load_weights
)


@GENERATORS.register("encoder", EncoderGeneratorConfig, spec=ENCODER_GENERATOR_SPEC)
def build_encoder_generator(
    cfg: EncoderGeneratorConfig,
    embedding: nn.Embedding,
    *,
    hidden_size: int,
    input_length: int,
    embedding_sharing: str,
    model_shape: ModelShape | None = None,
) -> Generator:
    """Encoder-only MLM generator (ELECTRA, SpacTor): T5 or BERT blocks, tied output projection."""
    return Generator(cfg.dimensions(hidden_size, input_length, embedding_sharing, model_shape), embedding)


# -- loading a trained generator (Fast-ELECTRA) ----------------------------------------------


def load_generator_weights(generator: Generator, path: str | Path, objective_name: str = "rtd") -> str:
    """Load ``generator``'s weights from a trained run and return where they came from.

    ``path`` may be a spactor run directory (its newest complete ``checkpoints/step_*``), a
    checkpoint directory (``step_*``), a DCP directory, or a ``torch.save``d state dict
    (``.pt``; G-local keys, or a whole run's ``model`` state dict). In a run the generator's
    keys are ``objectives.<name>.generator.*`` inside the saved ``model`` dict; only those
    are read (a partial ``dcp.load``). A generator trained with ``shared`` embeddings has
    no embedding of its own: D's ``model.token_embedding.weight`` of the same run stands in.
    """
    wanted = set(generator.state_dict())
    kind, source = _locate(Path(path))
    if kind == "sharded":
        keys, shapes = _dcp_tensor_keys(source)
        mapping = _key_mapping(keys, wanted, objective_name, source)
        state = {full: torch.empty(shapes[full][0], dtype=shapes[full][1]) for full in mapping.values()}
        read_dcp_locally(state, source)  # the FLOPs count builds the objectives on rank 0 alone
    else:
        state = torch.load(source, map_location="cpu", weights_only=True)
        if isinstance(state.get("model"), dict):  # {"model": ..., "optim": ...} layouts
            state = state["model"]
        mapping = _key_mapping(state.keys(), wanted, objective_name, source)
    local = {k: state[full] for k, full in mapping.items()}
    generator.load_state_dict(local, strict=True)
    return str(source)


def _locate(path: Path) -> tuple[str, Path]:
    """("sharded" (a DCP directory) | "torch", the file or DCP directory to read)."""
    if path.is_file():
        return "torch", path
    if is_dcp_dir(path):
        return "sharded", path
    if is_dcp_dir(dcp_dir(path)):
        return "sharded", dcp_dir(path)
    # A run directory (or its checkpoints folder). The runner renames a checkpoint into
    # place only when complete and writes its manifest last, so has_weights is enough here
    # (a lighter check than spactor.train.checkpoint.verify, which plugins must not import).
    root = checkpoints_dir(path) if checkpoints_dir(path).is_dir() else path
    steps = [p for p in step_dirs(root) if has_weights(p)]
    if steps:
        return "sharded", dcp_dir(steps[-1])
    raise FileNotFoundError(
        f"generator_checkpoint {path}: not a state-dict file, a DCP directory, a checkpoint directory "
        f"or a run directory with complete checkpoints"
    )


def _dcp_tensor_keys(dcp_dir: Path) -> tuple[list[str], dict[str, tuple[torch.Size, torch.dtype]]]:
    metadata = dcp.FileSystemReader(str(dcp_dir)).read_metadata()
    shapes = {
        key: (meta.size, meta.properties.dtype)
        for key, meta in metadata.state_dict_metadata.items()
        if isinstance(meta, TensorStorageMetadata)
    }
    return list(shapes), shapes


def check_generator_checkpoint(
    generator: Generator, path: str | Path, objective_name: str = "rtd"
) -> tuple[str, int | None]:
    """Check, from metadata only (DCP ``.metadata`` or the ``.pt``'s tensor shapes), that
    ``path`` holds weights for every tensor of ``generator`` with the same shapes; return
    (the source :func:`load_generator_weights` will read, its checkpoint step or None).
    ``generator`` may live on the meta device. Raises FileNotFoundError / KeyError /
    ValueError saying what does not match."""
    wanted = {k: tuple(v.shape) for k, v in generator.state_dict().items()}
    kind, source = _locate(Path(path))
    if kind == "sharded":
        keys, meta = _dcp_tensor_keys(source)
        shapes = {k: tuple(size) for k, (size, _) in meta.items()}
    else:
        state = torch.load(source, map_location="meta", weights_only=True)
        if isinstance(state.get("model"), dict):
            state = state["model"]
        shapes = {k: tuple(v.shape) for k, v in state.items() if isinstance(v, torch.Tensor)}
    mapping = _key_mapping(shapes, set(wanted), objective_name, source)
    for local, full in sorted(mapping.items()):
        if shapes[full] != wanted[local]:
            vocabulary = local == EMBEDDING_KEY and shapes[full][1:] == wanted[local][1:]
            raise ValueError(
                f"generator checkpoint {source}: {full} has shape {list(shapes[full])}, this recipe's "
                f"generator needs {list(wanted[local])}" + (" (another vocabulary?)" if vocabulary else "")
            )
    step = None
    checkpoint = step_dir_of(source) if kind == "sharded" else None  # a run's step_N/dcp: step_N's manifest
    if checkpoint is not None:
        try:
            step = manifest_step(checkpoint)
        except (ValueError, KeyError, TypeError, OSError):
            step = None
    return str(source), step


def _key_mapping(keys: Iterable[str], wanted: set[str], name: str, source: Path) -> dict[str, str]:
    """G-local key → key in the source, for every key of ``wanted``."""
    keys = set(keys)
    # Find G first by what both heads have, so that a head mismatch is named as such.
    head_dependent = {k for k in wanted if k.startswith(("head_dense.", "head_norm.", "proj_out."))}
    prefix = _find_prefix(keys, wanted - head_dependent, name, source)
    trained = "electra" if prefix + ELECTRA_HEAD_KEY in keys else "linear"
    here = "electra" if ELECTRA_HEAD_KEY in wanted else "linear"
    if trained != here:
        raise KeyError(
            f"generator checkpoint {source}: its generator was trained with head {trained}, "
            f"this one has {here}; set objectives.{name}.generator.head: {trained}"
        )
    mapping = {k: prefix + k for k in wanted if prefix + k in keys}
    if EMBEDDING_KEY in wanted and EMBEDDING_KEY not in mapping:
        # Trained with shared embeddings: D's embedding of the same run is G's.
        root = prefix[: prefix.rfind(OBJECTIVES_KEY)] if OBJECTIVES_KEY in prefix else ""
        if root + DISCRIMINATOR_EMBEDDING_KEY in keys:
            mapping[EMBEDDING_KEY] = root + DISCRIMINATOR_EMBEDDING_KEY
    missing = sorted(wanted - set(mapping))
    if missing:
        raise KeyError(
            f"generator checkpoint {source}: no weights for {', '.join(missing)} (under '{prefix}')"
        )
    return mapping


def _find_prefix(keys: set[str], wanted: set[str], name: str, source: Path) -> str:
    """The prefix under which every non-embedding key of G exists; prefers the objective
    called ``name`` when a run holds several generators."""
    required = sorted(wanted - {EMBEDDING_KEY})
    anchor = required[0]
    candidates = {k[: len(k) - len(anchor)] for k in keys if k == anchor or k.endswith("." + anchor)}
    complete = sorted(p for p in candidates if all(p + k in keys for k in required))
    if len(complete) > 1:
        preferred = [p for p in complete if p.endswith(f"{objective_key(name)}generator.")]
        complete = preferred or complete
    if len(complete) != 1:
        found = sorted({k[: k.find("generator.") + len("generator.")] for k in keys if "generator." in k})
        what = "several" if complete else "no"
        raise KeyError(
            f"generator checkpoint {source}: {what} complete generator weights matching this generator's "
            f"architecture (looked for '{anchor}' and {len(required) - 1} more keys); generator-like "
            f"prefixes found: {', '.join(found) or '(none)'}"
        )
    return complete[0]
