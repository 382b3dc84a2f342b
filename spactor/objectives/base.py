"""What an objective is, and the context it is built with.

An objective may do any of three things, in the order the runner calls them:

1. ``transform(batch, rng)``: corrupt the batch without gradients (span corruption,
   MLM masking). Runs on the training device, vectorised, with a seeded generator.
2. ``modify(batch, model, rng, ctx)``: change the encoder input with a trained module (the RTD
   generator); may return a loss of its own (``L_G``). It may set
   ``batch["encoder_embeds"]`` to feed the encoder embeddings instead of ids (DeBERTa-v3
   gradient-disentangled sharing): that is the encoder view losses then read.
3. ``loss(batch, forward, ctx)``: a loss on the discriminator's outputs. ``forward`` is a
   :class:`SharedForward`: ``forward.encode()`` and ``forward.decode()`` run the encoder
   and the decoder at most once per view for the whole micro-batch, so every loss on the
   encoder shares one encoder pass and every loss on the decoder one decoder pass.

``ctx`` (:class:`MicroBatchContext`, the same for every objective of a micro-batch) is
everything the runner knows about the micro-batch: each loss's item count, the pad id,
whether this is a logging step. The runner reads nothing back but the returned outputs.

**The batch contract.** The batch is a dict of tensors. Each objective class declares the
fields it reads (``REQUIRES``) and the fields it writes (``PROVIDES``), both read and
written at its first role (the first of ``transform``, ``modify``, ``loss`` it
implements). The raw batch holds ``original`` (and ``encoder_input``, the same chunk until
a transform rewrites it). ``spactor.contract`` checks the declarations in the runner's
order at config time (every transform in config order, then every modify, then every
loss), so an objective that needs ``mlm_labels`` where nothing provides it is a
one-line config error naming both.

Losses are returned as a *sum* over the items they cover plus the number of items
(``LossTerm``). The runner divides by the global count across micro-batches and ranks,
so the loss does not depend on gradient accumulation or world size. The number of items
is defined once, by ``count`` (and ``aux_counts`` for the other losses of an
objective): the runner calls them once per micro-batch, before the forward, sums them
for the global count and hands them to the objectives in ``ctx.counts``; a loss builds
its ``LossTerm`` with :meth:`Objective.loss_term` / :meth:`Objective.aux_term`, which
read them there, so training and evaluation count alike.

Weights belong to the runner: it reads every loss's current weight once per step, by
loss name, from :meth:`Objective.loss_weights` (the ``weight`` knob for the objective's
own loss, 1 for an aux loss unless the objective says otherwise) and applies them
itself; a loss never carries its weight.

Knobs are the objective's schedulable scalars (``weight``, ``ratio``, ``temperature``,
``enabled``...), named in ``KNOBS``; schedules address them as
``objectives.<name>.<knob>``. Their values are runtime state of the objective
(:meth:`Objective.knob`, initialised from the config): setting one never writes into the
config dataclass, which stays what the YAML said.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from spactor.checks import (
    CheckContext,
    check_fields,
    fail,
    is_int,
    non_negative,
    positive,
    positive_int,
    unit_interval,
)
from spactor.contract import implements
from spactor.metric_record import Recorded, Reduce  # noqa: F401 — Reduce re-exported for objectives
from spactor.registry import OBJECTIVES, factory_class
from spactor.vocab import MODE_TOKENS, Vocab  # noqa: F401 re-exported: objectives and plugins import them from here

Batch = dict[str, torch.Tensor]


@dataclass
class ObjectiveContext:
    """What a factory receives besides its own config."""

    name: str  # the objective's key under ``objectives:``
    vocab: Vocab
    input_length: int  # encoder length
    model: Any  # the discriminator (an ``Architecture``); objectives use only its protocol

    def check_context(self) -> CheckContext:
        """What the objective's config check knows when the objective is built: the same
        rules as at config time, with this vocabulary's sentinels and this model's width."""
        return CheckContext(
            input_length=self.input_length,
            hidden_size=getattr(self.model, "hidden_size", None),
            model_shape=getattr(self.model, "model_shape", None),
            num_sentinels=self.vocab.num_sentinels,
        )


@dataclass
class LossTerm:
    """A loss as a sum over ``count`` items (tokens or positions), unweighted: the runner
    weights it by name (:meth:`Objective.loss_weights`)."""

    total: torch.Tensor
    count: torch.Tensor


@dataclass(frozen=True)
class MicroBatchContext:
    """What the runner knows about the micro-batch that ``modify`` and ``loss`` run on,
    passed to both (the same object for every objective of the micro-batch).

    ``counts``: the items each loss sums over, by loss name (an objective's own name, its
    ``aux_counts`` keys), from ``count``/``aux_counts`` called once by the runner on this
    micro-batch before the forward (:func:`loss_counts`); :meth:`Objective.loss_term`
    reads them. ``pad_id``: the vocabulary's pad id (the shared forward's padding mask).
    ``with_metrics``: compute ``ObjectiveOutput.metrics`` (accuracies, RTD detection) —
    on logging steps only, as reading them is a host sync; a plain bool, so a compiled
    forward has one graph with metrics and one without."""

    counts: Mapping[str, torch.Tensor]
    pad_id: int
    with_metrics: bool = False

    @classmethod
    def of(
        cls, objectives: Iterable[Objective], batch: Batch, pad_id: int, with_metrics: bool = False
    ) -> MicroBatchContext:
        """The context the runner gives ``objectives`` for ``batch``: their counts on it."""
        return cls(loss_counts(objectives, batch), pad_id, with_metrics)


def loss_counts(objectives: Iterable[Objective], batch: Batch) -> dict[str, torch.Tensor]:
    """Every loss's item count on ``batch``, by loss name, from the objectives'
    ``count``/``aux_counts``: the one place they are called."""
    counts: dict[str, torch.Tensor] = {}
    for obj in objectives:
        count = obj.count(batch)
        if count is not None:
            counts[obj.name] = count
        counts.update(obj.aux_counts(batch))
    return counts


@dataclass
class ObjectiveOutput:
    """``loss`` is logged as ``loss/<objective name>``; an objective with more than one
    loss (RTD's generator loss) names the others in ``aux_losses`` (``loss/<key>``), keys
    that start with the objective's name (``<name>_z``, ``<name>_generator``).

    ``metrics``: what :meth:`record` recorded, ``<objective name>/<metric>`` ->
    :class:`~spactor.metric_record.Recorded` (a bare tensor from an older plugin counts
    as Reduce.MEAN)."""

    loss: LossTerm | None = None
    aux_losses: dict[str, LossTerm] = field(default_factory=dict)
    metrics: dict[str, Recorded | torch.Tensor] = field(default_factory=dict)

    def record(self, name: str, value: torch.Tensor, reduce: Reduce) -> None:
        """Log ``value`` (a device tensor, never read here) as ``name``, combined over
        micro-batches and ranks by ``reduce``. ``name`` is the objective's own
        ``f"{self.name}/<metric>"``, written out where the value is computed, so grepping
        ``/<metric>"`` finds it."""
        self.metrics[name] = Recorded(value, reduce)


ENCODER_EMBEDS = "encoder_embeds"  # set by a modify: what the encoder reads for ``encoder_input``


def unpadded_key(view: str) -> str:
    """The batch field that says ``batch[view]`` holds no padding: a ``(B, 0)`` tensor, so
    it travels with the batch (device moves, micro-batch splits) and is read by its
    presence, with no look at the data (no host sync). The transform that knows its output
    is unpadded sets it (span corruption whose input fills ``input_length``); a later
    transform that rewrites the view drops it unless it keeps padding as it found it
    (``Objective.KEEPS_PADDING``). The model then gets no padding mask for that view, so
    an attention without a position bias runs SDPA's fused kernels with no mask at all."""
    return f"{view}_unpadded"


def unpadded_marker(rows: int, device: torch.device) -> torch.Tensor:
    return torch.empty(rows, 0, dtype=torch.bool, device=device)


class SharedForward:
    """The discriminator's forward on one micro-batch, run lazily and at most once per view.

    A *view* names the batch field a pass reads: ``encode(view)`` runs the encoder on the
    ids in ``batch[view]`` (``encoder_input`` by default; on ``batch["encoder_embeds"]``
    instead where a modify set them for it), with padding masked out;
    ``decode(view, encoder_view)`` teacher-forces the decoder on ``batch[view]``
    (``decoder_input``) against ``encode(encoder_view)``. The first loss that asks
    computes, every later one gets the same tensors: several losses on the encoder share
    one encoder pass, several on the decoder one decoder pass, and a view nobody asks for
    is never computed. ``model`` is the discriminator, for its heads (``lm_logits``)."""

    def __init__(self, model: Any, batch: Batch, pad_id: int) -> None:
        self.model = model
        self.batch = batch
        self.pad_id = pad_id
        self._masks: dict[str, torch.Tensor] = {}
        self._encoded: dict[str, torch.Tensor] = {}
        self._decoded: dict[tuple[str, str], torch.Tensor] = {}
        self._causal: dict[tuple[str, str | None], torch.Tensor] = {}

    def encoder_mask(self, view: str = "encoder_input") -> torch.Tensor:
        """``(B, L)`` bool: the real (non-pad) tokens of ``batch[view]``."""
        if view not in self._masks:
            self._masks[view] = self.batch[view] != self.pad_id
        return self._masks[view]

    def model_mask(self, view: str = "encoder_input") -> torch.Tensor | None:
        """The padding mask the model gets for ``batch[view]``: None when the batch says the
        view has no padding (:func:`unpadded_key`), else :meth:`encoder_mask`."""
        return None if unpadded_key(view) in self.batch else self.encoder_mask(view)

    def encode(self, view: str = "encoder_input") -> torch.Tensor:
        """``(B, L, d)`` encoder states of ``batch[view]``, computed once."""
        if view not in self._encoded:
            embeds = self.batch.get(ENCODER_EMBEDS) if view == "encoder_input" else None
            self._encoded[view] = self.model.encode(
                self.batch[view] if embeds is None else None,
                attention_mask=self.model_mask(view),
                inputs_embeds=embeds,
            )
        return self._encoded[view]

    def decode(self, view: str = "decoder_input", encoder_view: str = "encoder_input") -> torch.Tensor:
        """``(B, T, d)`` decoder states for the inputs ``batch[view]`` attending to
        ``encode(encoder_view)``, computed once."""
        key = (view, encoder_view)
        if key not in self._decoded:
            self._decoded[key] = self.model.decode(
                self.batch[view], self.encode(encoder_view), self.model_mask(encoder_view)
            )
        return self._decoded[key]

    def causal(self, view: str = "lm_input", prefix_view: str | None = None) -> torch.Tensor:
        """``(B, L, d)`` hidden states of a decoder-only model (``CAUSAL_LM``) on the ids
        ``batch[view]``, computed once per ``(view, prefix_view)``; with ``prefix_view``
        (``PREFIX_LM``) each row attends bidirectionally over its first
        ``batch[prefix_view]`` tokens. No padding mask: decoder-only layouts pad on the
        right, and a causal (or prefix) pass never attends from a real token to a later
        one, so the pads change no real position's states (and the SDPA backend keeps its
        fused, mask-free causal kernel)."""
        key = (view, prefix_view)
        if key not in self._causal:
            prefix = None if prefix_view is None else self.batch[prefix_view]
            self._causal[key] = self.model.causal(self.batch[view], prefix_length=prefix)
        return self._causal[key]


class Objective(nn.Module):
    """Base class; subclasses override what they do and leave the rest as no-ops."""

    KNOBS: ClassVar[tuple[str, ...]] = ("weight",)
    # The batch fields this objective reads and writes (see the module doc). The raw batch
    # holds ``original`` and ``encoder_input``.
    REQUIRES: ClassVar[tuple[str, ...]] = ()
    PROVIDES: ClassVar[tuple[str, ...]] = ()
    # The model passes this objective needs (``spactor.architectures.base`` capabilities):
    # alternatives, any one of which the model must offer in full; () for none (a
    # transform). Span corruption: ``(frozenset({ENCODE, DECODE}),)``.
    NEEDS: ClassVar[tuple[frozenset[str], ...]] = ()
    # The transform draws its noise through ``spactor.objectives.noise`` (row_rand, ...), so
    # with several ranks it can corrupt only this rank's rows and still give each row its
    # one-rank corruption. False: the step corrupts a global-size batch on every rank.
    ROW_LOCAL_NOISE: ClassVar[bool] = False
    # The transform rewrites the fields it PROVIDES without adding or removing padding (a
    # masking that replaces tokens in place): their :func:`unpadded_key` markers stay.
    KEEPS_PADDING: ClassVar[bool] = False

    def __init__(self, cfg: Any, ctx: ObjectiveContext) -> None:
        super().__init__()
        self.cfg = cfg
        self.name = ctx.name
        self.vocab = ctx.vocab
        # The knobs' current values: runtime state, starting from the config (which a
        # schedule never writes), recomputed by the schedules from the step on resume.
        self._knobs: dict[str, float | bool] = {k: _knob_value(getattr(cfg, k), getattr(cfg, k))
                                                for k in self.KNOBS}

    # -- knobs ---------------------------------------------------------------------
    def knobs(self) -> dict[str, float]:
        return {k: float(v) for k, v in self._knobs.items()}

    def knob(self, knob: str) -> Any:
        """The current value of ``knob`` (a bool for a knob configured as one)."""
        try:
            return self._knobs[knob]
        except KeyError:
            raise KeyError(f"objective '{self.name}' has no knob '{knob}'; knobs: {', '.join(self.KNOBS)}") from None

    def loss_weights(self) -> dict[str, float]:
        """The current weight of each of this objective's losses, by loss name. The runner
        reads them once per step (knobs change between steps only), outside the forward: a
        knob's value returned from a compiled forward would be frozen into the graph. Its
        own loss takes the ``weight`` knob; an aux loss named nowhere here takes 1.
        Override to weight an aux loss (a z-loss by ``weight``, RTD's ``L_G`` by
        ``generator_weight``)."""
        return {self.name: self.weight}

    def set_knob(self, knob: str, value: float) -> None:
        if knob not in self._knobs:
            raise KeyError(f"objective '{self.name}' has no knob '{knob}'; knobs: {', '.join(self.KNOBS)}")
        value = _knob_value(getattr(self.cfg, knob), value)
        self.check_knob(knob, value)
        self._knobs[knob] = value

    def check_knob(self, knob: str, value: float | bool) -> None:
        """The config's rule for ``knob``, applied to a value a schedule sets (raise
        ``ConfigError``). Checked here, between steps, not in the forward: a check there
        would read a value Dynamo may have made symbolic, and break the compiled graph."""

    def is_off(self) -> bool:
        """True when the knobs have turned this objective off (a stage ending on a knob
        condition ends once every objective the next stage drops is off)."""
        return not self.enabled or self.weight == 0

    def release(self) -> None:
        """Drop modules and buffers before the objective is removed (on entering the first
        stage that does not run it)."""

    @property
    def weight(self) -> float:
        if "weight" in self._knobs:
            return float(self._knobs["weight"])
        return float(getattr(self.cfg, "weight", 1.0))

    @property
    def enabled(self) -> bool:
        if "enabled" in self._knobs:
            return bool(self._knobs["enabled"])
        return bool(getattr(self.cfg, "enabled", True))

    def raw_length(self, input_length: int) -> int:
        """Raw chunk length the data must deliver so this objective's output has
        ``input_length`` tokens (span corruption shortens its input; most keep it)."""
        return input_length

    # -- the three roles -------------------------------------------------------------
    def transform(self, batch: Batch, rng: torch.Generator) -> Batch:
        return batch

    def modify(
        self, batch: Batch, model: Any, rng: torch.Generator, ctx: MicroBatchContext
    ) -> tuple[Batch, ObjectiveOutput]:
        return batch, ObjectiveOutput()

    def loss(self, batch: Batch, forward: SharedForward, ctx: MicroBatchContext) -> ObjectiveOutput:
        return ObjectiveOutput()

    # -- counts: the one definition of how many items each loss sums over -------------
    def count(self, batch: Batch) -> torch.Tensor | None:
        """Items this objective's loss sums over for this (transformed) batch, or None
        if it has no loss. Known before the forward so the runner can normalise by the
        global count."""
        return None

    def aux_counts(self, batch: Batch) -> dict[str, torch.Tensor]:
        """Counts for the losses in ``ObjectiveOutput.aux_losses``, keyed the same way."""
        return {}

    def loss_term(self, ctx: MicroBatchContext, total: torch.Tensor) -> LossTerm:
        """This objective's loss ``total`` with the items :meth:`count` counted on this
        micro-batch (``ctx.counts``: the runner counted them, nothing is counted again)."""
        if self.name not in ctx.counts:
            raise RuntimeError(f"objectives.{self.name}: a loss without a count (count() returned None)")
        return LossTerm(total, ctx.counts[self.name])

    def aux_term(self, ctx: MicroBatchContext, key: str, total: torch.Tensor) -> LossTerm:
        """The aux loss ``key`` with the items :meth:`aux_counts` counted for it."""
        if key not in ctx.counts:
            raise RuntimeError(f"objectives.{self.name}: aux loss '{key}' has no count (not in aux_counts())")
        return LossTerm(total, ctx.counts[key])

    def parallel_units(self) -> list[nn.Module]:
        """Submodules to shard as FSDP units of their own, innermost first (the generator's
        blocks, the generator, the RTD head), so the stage switch can drop them whole."""
        return []

    def repeated_blocks(self) -> list[nn.Module]:
        """Transformer blocks for activation checkpointing and per-block compile."""
        return []

    def fsdp_forward_methods(self) -> dict[nn.Module, tuple[str, ...]]:
        """Methods other than ``forward`` that the objective calls on its units (FSDP must
        gather the parameters around them)."""
        return {}

    def preview_fields(self, batch: Batch) -> dict[str, torch.Tensor]:
        """Extra per-example fields ``spactor preview --json`` shows."""
        return {}


# --------------------------------------------------------------------------- config checks


def objective_field_rule(key: str, name: str, value: Any) -> None:
    """Ranges every objective's config follows by field name: densities in (0, 1), ratios
    and dropouts in [0, 1), span lengths and temperatures > 0, weights and z-losses >= 0
    and finite, sizes (layers, widths, heads) positive integers."""
    if value is None or isinstance(value, bool):
        return
    if "density" in name:
        unit_interval(key, value, open_low=True)
    elif name.endswith("ratio"):
        unit_interval(key, value)
    elif name == "mean_noise_span_length":
        positive(key, value)
    elif name == "z_loss" or name.endswith("_z_loss"):
        non_negative(key, value)
    elif name == "weight" or name.endswith("_weight"):
        non_negative(key, value)
    elif name.endswith("temperature"):
        positive(key, value)
    elif name.endswith("dropout"):
        unit_interval(key, value)
    elif is_int(value) and _is_size_name(name):
        positive_int(key, value)


def _is_size_name(name: str) -> bool:
    sizes = ("layers", "d_model", "d_ff", "heads", "d_kv", "hidden", "max_positions")
    return name in sizes or any(name.endswith("_" + s) for s in sizes)


def check_objective_fields(where: str, cfg: Any) -> None:
    check_fields(where, cfg, objective_field_rule)


@OBJECTIVES.add_section_check
def check_objectives_without_a_check(objectives: dict[str, Any], ctx: CheckContext) -> None:
    """An objective config with no ``check`` of its own (a third-party plugin's) still
    follows the ranges every objective follows by field name."""
    for name, plugin in objectives.items():
        if not callable(getattr(plugin.config, "check", None)):
            check_objective_fields(f"objectives.{name}", plugin.config)


def has_loss(cls: type[Objective]) -> bool:
    """Whether objectives of ``cls`` contribute a loss (a ``loss`` or a ``modify`` of their own)."""
    return implements(cls, "loss") or implements(cls, "modify")


@OBJECTIVES.add_section_check
def check_some_objective_has_a_loss(objectives: dict[str, Any], ctx: CheckContext) -> None:
    """A run needs at least one loss. Told from the classes the factories return, so it is
    skipped when one cannot be told without building it."""
    classes = [factory_class(OBJECTIVES.get(p.type)) for p in objectives.values()]
    if not classes or not all(isinstance(c, type) and issubclass(c, Objective) for c in classes):
        return
    if not any(has_loss(c) for c in classes):  # type: ignore[arg-type]
        fail(
            "objectives", list(objectives), "no objective has a loss; add one (e.g. objectives.span_corruption)"
        )


def _knob_value(configured: Any, value: Any) -> float | bool:
    """A knob keeps its configured kind: a boolean knob (``enabled``) stays a bool."""
    return bool(value) if isinstance(configured, bool) else float(value)
