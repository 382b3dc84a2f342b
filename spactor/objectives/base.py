"""What an objective is, and the context it is built with.

An objective may do any of three things, in the order the runner calls them:

1. ``transform(batch, rng)``: corrupt the batch without gradients (span corruption,
   MLM masking). Runs on the training device, vectorised, with a seeded generator.
2. ``modify(batch, model, rng)``: change the encoder input with a trained module (the RTD
   generator); may return a loss of its own (``L_G``). It may set
   ``batch["encoder_embeds"]`` to feed the encoder embeddings instead of ids (DeBERTa-v3
   gradient-disentangled sharing).
3. ``loss(batch, encoder_hidden, model)``: a loss on the discriminator's outputs. The
   runner encodes once and hands the same encoder states to every objective.

Losses are returned as a *sum* over the items they cover plus the number of items
(``LossTerm``). The runner divides by the global count across micro-batches and ranks,
so the loss does not depend on gradient accumulation or world size.

Knobs are the objective's schedulable scalars (``weight``, ``ratio``, ``temperature``,
``enabled``...). They live on the config dataclass and are named in ``KNOBS``; schedules
address them as ``objectives.<name>.<knob>``.
"""

from __future__ import annotations

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
    extra: dict[str, Any] = field(default_factory=dict)

    def check_context(self) -> CheckContext:
        """What the objective's config check knows when the objective is built: the same
        rules as at config time, with this vocabulary's sentinels and this model's width."""
        return CheckContext(
            input_length=self.input_length,
            hidden_size=getattr(self.model, "hidden_size", None),
            num_sentinels=self.vocab.num_sentinels,
        )


@dataclass
class LossTerm:
    """A loss as a sum over ``count`` items (tokens or positions).

    ``weight`` None means the objective's own ``weight`` knob.
    """

    total: torch.Tensor
    count: torch.Tensor
    weight: float | None = None


@dataclass
class ObjectiveOutput:
    """``loss`` is logged as ``loss/<objective name>``; an objective with more than one
    loss (RTD's generator loss) names the others in ``aux_losses`` (``loss/<key>``)."""

    loss: LossTerm | None = None
    aux_losses: dict[str, LossTerm] = field(default_factory=dict)
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)


class Objective(nn.Module):
    """Base class; subclasses override what they do and leave the rest as no-ops."""

    KNOBS: ClassVar[tuple[str, ...]] = ("weight",)
    # Dropped by the implicit two-stage curriculum at its switch (SpacTor's MLM masking and
    # RTD). A written-out ``curriculum`` schedule ignores it: its stages name their objectives.
    STAGE1_ONLY: ClassVar[bool] = False
    # Whether to compute ``ObjectiveOutput.metrics`` (accuracies, detection metrics): the
    # runner sets it before each forward, on for logging steps only (reading them is a sync).
    compute_metrics: bool = True

    def __init__(self, cfg: Any, ctx: ObjectiveContext) -> None:
        super().__init__()
        self.cfg = cfg
        self.name = ctx.name
        self.vocab = ctx.vocab

    # -- knobs ---------------------------------------------------------------------
    def knobs(self) -> dict[str, float]:
        return {k: float(getattr(self.cfg, k)) for k in self.KNOBS}

    def set_knob(self, knob: str, value: float) -> None:
        if knob not in self.KNOBS:
            raise KeyError(f"objective '{self.name}' has no knob '{knob}'; knobs: {', '.join(self.KNOBS)}")
        current = getattr(self.cfg, knob)
        setattr(self.cfg, knob, bool(value) if isinstance(current, bool) else float(value))

    def is_off(self) -> bool:
        """True when the knobs have turned this objective off (a stage ending on a knob
        condition ends once every objective the next stage drops is off)."""
        return not self.enabled or self.weight == 0

    def release(self) -> None:
        """Drop modules and buffers before the objective is removed (on entering the first
        stage that does not run it)."""

    @property
    def weight(self) -> float:
        return float(getattr(self.cfg, "weight", 1.0))

    @property
    def enabled(self) -> bool:
        return bool(getattr(self.cfg, "enabled", True))

    def raw_length(self, input_length: int) -> int:
        """Raw chunk length the data must deliver so this objective's output has
        ``input_length`` tokens (span corruption shortens its input; most keep it)."""
        return input_length

    # -- the three roles -------------------------------------------------------------
    def transform(self, batch: Batch, rng: torch.Generator) -> Batch:
        return batch

    def modify(self, batch: Batch, model: Any, rng: torch.Generator) -> tuple[Batch, ObjectiveOutput]:
        return batch, ObjectiveOutput()

    def loss(self, batch: Batch, encoder_hidden: torch.Tensor, model: Any) -> ObjectiveOutput:
        return ObjectiveOutput()

    def count(self, batch: Batch) -> torch.Tensor | None:
        """Items this objective's loss sums over for this (transformed) batch, or None
        if it has no loss. Known before the forward so the runner can normalise by the
        global count."""
        return None

    def aux_counts(self, batch: Batch) -> dict[str, torch.Tensor]:
        """Counts for the losses in ``ObjectiveOutput.aux_losses``, keyed the same way."""
        return {}

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
    return cls.loss is not Objective.loss or cls.modify is not Objective.modify


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
