"""The small protocol objectives and the runner use to talk to a model, and the spec the
runner's tools read about an architecture.

Objectives never import a concrete architecture; they see only this surface. An
architecture is one module: a model class with ``CAPABILITIES`` (the passes it offers,
``spactor.capabilities``) and the members of :class:`Architecture`, a config dataclass,
and a factory registered with ``ARCHITECTURES.register(name, Config, spec=...)``, whose
return annotation names the model class (the config check reads the capabilities from
it). The :class:`ArchitectureSpec` says what the tools need: FLOPs baseline and
breakdown, memory roles, fine-tuning adapters, exporters, FSDP units, meta init. The
built model is checked against the protocol (:func:`protocol_problem`). An objective's
generator (``GENERATORS``) is described to it by a :class:`GeneratorSpec`: the sharing
modes it builds, how a trained one is checked and loaded.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

import torch
from torch import nn

from spactor.capabilities import (  # noqa: F401 — the capability names, re-exported for plugins
    CAPABILITY_NAMES,
    CAUSAL_LM,
    DECODE,
    ENCODE,
    PREFIX_LM,
    capabilities_of,
    capability_problem,
    describe_needs,
    satisfies,
)
from spactor.registry import ARCHITECTURES, GENERATORS, factory_class


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
    (``self.token_embedding``, ``self.encoder``): shared by T5, t5gemma (whose stacks scale
    the raw rows by ``sqrt(d_model)``) and the encoder-only model."""

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


# --------------------------------------------------------------------------- the checks
# The methods a capability promises (beyond what every model has, :data:`PROTOCOL_MEMBERS`).
_METHODS = {ENCODE: ("embed", "encode"), DECODE: ("decode",), CAUSAL_LM: ("causal",), PREFIX_LM: ("causal",)}
PROTOCOL_MEMBERS = ("hidden_size", "vocab_size", "token_embedding", "lm_logits", "blocks")


def protocol_problem(model: Any, arch: str) -> str | None:
    """What the built ``model`` lacks of the protocol its ``CAPABILITIES`` promise (the
    members every model has, the methods of each capability), in one line; None if
    nothing."""
    capabilities = capabilities_of(model)
    missing = [m for m in PROTOCOL_MEMBERS if not hasattr(model, m)]
    for capability in CAPABILITY_NAMES:
        if capability in capabilities:
            missing += [m for m in _METHODS[capability] if not callable(getattr(model, m, None)) and m not in missing]
    if not missing:
        return None
    offered = ", ".join(c for c in CAPABILITY_NAMES if c in capabilities) or "nothing"
    return (f"model.arch '{arch}': the built {type(model).__name__} lacks {', '.join(missing)} "
            f"(every model has {', '.join(PROTOCOL_MEMBERS)}; it declares CAPABILITIES {offered})")


# --------------------------------------------------------------------------- the spec
# What the runner's tools need from an architecture, given where it is registered
# (``ARCHITECTURES.register(name, Config, spec=ArchitectureSpec(...))``, as torchtitan's
# TrainSpec): the tools read it (:func:`spec_of`) instead of testing a model's name or
# shape. Every field has a default derived from the capabilities, so an architecture
# registered without a spec still gets a FLOPs baseline, a fine-tuning adapter and FSDP.

ALL_FIELDS = ("*",)  # BaselineObjective.from_recipe: the recipe's whole config of that type

# ``ArchitectureSpec.analytic_flops(config, vocab_size, encoder_length, decoder_length)``:
# the forward FLOPs of one sequence, counted as ``spactor.train.flops`` counts them —
# 2 x the multiply-adds of every matmul (linear layers, the LM head, attention's q kᵀ and
# p v over the full score matrix, masked entries included); elementwise ops, norms,
# softmax and embedding lookups 0. The pass: an encoder-decoder encodes
# ``encoder_length`` tokens and decodes ``decoder_length``, the LM head on every decoder
# position; a decoder-only model runs the two as one sequence of
# ``encoder_length + decoder_length`` tokens, an encoder-only one ``encoder_length``
# tokens (``decoder_length`` 0), the LM head on every position.
AnalyticFlops = Callable[[Any, int, int, int], float]


@dataclass(frozen=True)
class BaselineObjective:
    """One objective of the FLOPs baseline (``flops/base``): a registered objective
    ``type`` whose config takes the fields ``from_recipe`` of the recipe's own objective
    of that type (when it has one; :data:`ALL_FIELDS`: all of them), then ``settings``."""

    type: str
    from_recipe: tuple[str, ...] = ALL_FIELDS
    settings: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class BlockRole:
    """How one block enters the activation-memory estimate (``spactor.train.memory``).

    ``target``: the block runs over the decoder's tokens (``L_dec``), not the encoder
    input's. ``reads_source``: paths of submodules (in the block) that read the encoder's
    tokens: an ``nn.Linear`` there projects ``L_enc`` tokens, an attention there attends
    over ``L_enc`` keys (cross-attention and its key/value projections). Attentions are
    the submodules with ``num_heads`` and ``d_kv``; norms, the ``*Norm`` ones."""

    block: nn.Module
    target: bool = False
    reads_source: tuple[str, ...] = ()


@dataclass(frozen=True)
class Exporter:
    """One export format of an architecture (``spactor export --format <key>``).

    ``write(model, out, dtype, metadata)``: writes the model (built on ``meta`` from the
    run's config, holding the checkpoint's weights) to the folder ``out`` and returns the
    file names written. ``tokenizer_config(tokenizer, resolved)``: the
    ``tokenizer_config.json`` written beside the run's ``spiece.model`` (None: none).
    ``describe(model)``: a few words for the CLI (``T5 v1.1``); ``load_hint``: how to
    load the result, ``{out}`` filled in. A refusal raises :class:`ExportRefused`."""

    target: str  # what is written, e.g. "Hugging Face T5ForConditionalGeneration"
    write: Callable[[nn.Module, Path, torch.dtype, dict[str, str]], list[str]]
    tokenizer_config: Callable[[Any, Any], dict[str, Any]] | None = None
    describe: Callable[[nn.Module], str] | None = None
    load_hint: str = ""


class ExportRefused(ValueError):
    """A model its exporter cannot write (one line; ``spactor export`` exits 2)."""


# Fine-tuning adapters ``spactor.evaluation.finetune`` implements, by the name a spec uses.
TEXT_TO_TEXT = "text_to_text"  # encode the input, decode the target (every task kind)
CLASSIFICATION = "classification"  # a linear head on the mean-pooled encoder output
CAUSAL_TEXT = "causal_text"  # decoder-only: the input, then the target, one sequence (every task kind)


@dataclass(frozen=True)
class ArchitectureSpec:
    """What the runner's tools read about an architecture (see the section comment).

    * ``baseline``: the FLOPs baseline's objectives (span corruption on an
      encoder-decoder, ``causal_lm`` on a decoder, BERT MLM on an encoder); fvcore counts
      them on the same model. Empty: derived from the capabilities.
    * ``stacks``: the model's children the FLOPs breakdown reports apart (``encoder``,
      ``decoder``); the rest of the model is ``lm_head``. None: the children holding
      ``blocks()``.
    * ``finetune``: the fine-tuning adapters, in order of preference; a task takes the
      first that can do its kind (:data:`TEXT_TO_TEXT`, :data:`CLASSIFICATION`,
      :data:`CAUSAL_TEXT`).
    * ``exporters``: export formats (``hf``) to their :class:`Exporter`.
    * ``block_roles(model)``: each block's :class:`BlockRole` for the memory estimate
      (default: every block over the encoder input).
    * ``fsdp_units(model)``, ``checkpoint_blocks(model)``: FSDP's units (sharded and
      all-gathered one at a time) and the blocks activation checkpointing and per-block
      compile wrap (default: ``model.blocks()``).
    * ``meta_init``: the model builds on the ``meta`` device and initialises by
      ``nn.init`` calls only, buffers with an explicit ``device=``
      (``spactor.train.meta_init``); False: always built eagerly on the CPU.
    * ``score_sized_masks``: each stack builds an ``(L, L)`` additive mask its layers
      share (T5's position bias) and SDPA's CPU backward then holds score-sized
      temporaries; False (RoPE models): masks only where there is padding, and the
      fused kernels keep no score matrix (the memory estimate counts neither).
    * ``analytic_flops(config, vocab_size, encoder_length, decoder_length)``: the forward
      FLOPs of one sequence by formula (:data:`AnalyticFlops`), which the tests hold
      fvcore's count against; None: the architecture has none (a test lists those).
    """

    baseline: tuple[BaselineObjective, ...] = ()
    stacks: tuple[str, ...] | None = None
    finetune: tuple[str, ...] = ()
    exporters: Mapping[str, Exporter] = field(default_factory=dict)
    block_roles: Callable[[nn.Module], list[BlockRole]] | None = None
    fsdp_units: Callable[[nn.Module], list[nn.Module]] | None = None
    checkpoint_blocks: Callable[[nn.Module], list[nn.Module]] | None = None
    meta_init: bool = True
    score_sized_masks: bool = True
    analytic_flops: AnalyticFlops | None = None

    def roles(self, model: nn.Module) -> list[BlockRole]:
        if self.block_roles is not None:
            return list(self.block_roles(model))
        return [BlockRole(block) for block in model.blocks()]

    def units(self, model: nn.Module) -> list[nn.Module]:
        return list(self.fsdp_units(model) if self.fsdp_units is not None else model.blocks())

    def wrapped_blocks(self, model: nn.Module) -> list[nn.Module]:
        return list(self.checkpoint_blocks(model) if self.checkpoint_blocks is not None else model.blocks())

    def stack_names(self, model: nn.Module) -> tuple[str, ...]:
        if self.stacks is not None:
            return self.stacks
        held = {id(b) for b in model.blocks()}
        return tuple(name for name, child in model.named_children()
                     if any(id(m) in held for m in child.modules()))


def default_spec(capabilities: Iterable[str]) -> ArchitectureSpec:
    """The spec an architecture registered without one gets, from what it can do."""
    caps = set(capabilities)
    if {ENCODE, DECODE} <= caps:
        return ArchitectureSpec(baseline=(BaselineObjective("span_corruption"),), finetune=(TEXT_TO_TEXT,))
    if CAUSAL_LM in caps:
        return ArchitectureSpec(baseline=(BaselineObjective("causal_lm"),), finetune=(CAUSAL_TEXT,))
    if ENCODE in caps:
        return ArchitectureSpec(baseline=MLM_BASELINE, finetune=(CLASSIFICATION,))
    return ArchitectureSpec()


# BERT-style MLM (15% masked, or the recipe's mlm_mask ratio): an encoder's baseline.
MLM_BASELINE = (BaselineObjective("mlm_mask", ("ratio",), {"mode": "bert"}), BaselineObjective("mlm", ()))


def spec_for(arch: str) -> ArchitectureSpec:
    """The spec the architecture registered as ``arch`` was given (or its default)."""
    entry = ARCHITECTURES.get(arch)
    cls = factory_class(entry)
    return _completed(getattr(entry, "spec", None), capabilities_of(cls) if cls is not None else frozenset())


def spec_of(model: Any) -> ArchitectureSpec:
    """The spec of a built model: that of the registered architecture whose factory
    returns its class (or the default its capabilities give)."""
    with_spec = [(e, factory_class(e)) for e in ARCHITECTURES if getattr(e, "spec", None) is not None]
    # The exact class first; then a class it derives from (FSDP and compile wrap a model in
    # a subclass of its own class).
    for match in (lambda cls: cls is type(model), lambda cls: cls is not None and isinstance(model, cls)):
        for entry, cls in with_spec:
            if match(cls):
                return _completed(entry.spec, capabilities_of(model))
    return default_spec(capabilities_of(model))


def _completed(spec: ArchitectureSpec | None, capabilities: frozenset[str]) -> ArchitectureSpec:
    """``spec`` with an empty baseline or adapter list taken from the default."""
    default = default_spec(capabilities)
    if spec is None:
        return default
    if not spec.baseline:
        spec = replace(spec, baseline=default.baseline)
    if not spec.finetune:
        spec = replace(spec, finetune=default.finetune)
    return spec


# --------------------------------------------------------------------------- generators
# An objective's generator (``GENERATORS``, e.g. RTD's) is built from the discriminator's
# token embedding; the objective talks to it through this spec and the factory's keywords,
# never through the generator's module.

# How a generator may use D's token embedding (``objectives.rtd.embedding_sharing``):
# ``shared`` reads D's, ``none`` owns one, ``gdes`` owns E_G and D reads
# stop_grad(E_G[ids]) + E_D[ids] (DeBERTa-v3).
SHARING_MODES = ("shared", "none", "gdes")


@dataclass(frozen=True)
class GeneratorSpec:
    """What an objective reads about a registered generator
    (``GENERATORS.register(name, Config, spec=GeneratorSpec(...))``).

    * ``sharing_modes``: the :data:`SHARING_MODES` its factory builds.
    * ``check_checkpoint(generator, path, objective_name)``: from metadata only, that
      ``path`` (a run, checkpoint or DCP directory, or a ``.pt``) holds weights of the
      built ``generator``'s shapes (it may live on ``meta``); returns (the source the
      loader will read, its checkpoint step or None); raises FileNotFoundError /
      KeyError / ValueError with a one-line reason.
    * ``load_weights(generator, path, objective_name)``: loads them; returns the source.

    ``objective_name``: the objective's instance name (which of a run's generators to
    read). No loader (None): the generator cannot be loaded from a trained run.
    """

    sharing_modes: tuple[str, ...] = SHARING_MODES
    check_checkpoint: Callable[[nn.Module, str | Path, str], tuple[str, int | None]] | None = None
    load_weights: Callable[[nn.Module, str | Path, str], str] | None = None


def generator_spec_for(name: str) -> GeneratorSpec:
    """The spec the generator registered as ``name`` was given (or the default: every
    sharing mode, no loader)."""
    spec = getattr(GENERATORS.get(name), "spec", None)
    return spec if isinstance(spec, GeneratorSpec) else GeneratorSpec()


def analytic_forward_flops(
    arch: str, config: Any, vocab_size: int, encoder_length: int, decoder_length: int = 0
) -> float | None:
    """The forward FLOPs of one sequence by the formula architecture ``arch`` declares
    (:data:`AnalyticFlops`); None if it declares none."""
    formula = spec_for(arch).analytic_flops
    return None if formula is None else float(formula(config, vocab_size, encoder_length, decoder_length))
