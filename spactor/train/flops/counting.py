"""FLOPs per training step, per stage, and model FLOPs utilisation (MFU).

How a step is counted:

* The recipe's model and objectives are built on CPU (or ``device``) at the recipe's
  real shapes, the objectives' transforms run on a synthetic ``original`` batch (random
  real token ids of the raw chunk length), and the runner's forward (``TrainModules``)
  is traced with fvcore's ``FlopCountAnalysis`` inside a module that returns the loss.
* The dry run is **one sequence**; FLOPs per step = FLOPs per sequence ×
  ``trainer.batch_size``. Every op of these models acts per sequence (no batch-wide
  reductions with FLOPs), so FLOPs are linear in the batch; the test checks it.
* fvcore counts a multiply-add as one; everything here is reported in FLOPs (×2).
* Convention (as MFU and ``torch.utils.flop_counter.FlopCounterMode``): matmul-class ops
  only — linear/matmul/bmm/einsum and attention (both of its matmuls, the full score
  matrix even when masked). Elementwise ops, norms, softmax and losses are given
  explicit handles that count 0 unless ``elementwise=True`` (then a rough per-element
  cost, :data:`ELEMENTWISE_FLOPS`); ops with no arithmetic at all (indexing, masks,
  comparisons, RNG, embedding lookups) are ignored (:data:`NO_FLOP_OPS`).
* An op with no handle counts 0 and is named, not dropped silently
  (:func:`~spactor.train.flops.handles.unhandled_note`). Beside the measured count, the
  architecture's analytic one (:mod:`spactor.train.flops.forward`): the model's forward at
  the step's lengths × 3 × ``trainer.batch_size``, which does not depend on fvcore.
* Training FLOPs = 3 × forward for trained modules (backward = 2 × forward: gradients
  with respect to inputs and to weights), 1 × forward for frozen ones (Fast-ELECTRA's
  generator runs forward only). "Trained" is read off the autograd graph of the loss the
  trainer backpropagates (weights ≠ 0): a module none of whose parameters it reaches
  runs forward only. Attention's backward counts 2 × its forward too; torch's
  ``FlopCounterMode`` also counts flash attention's recomputation of the scores (2.5 ×).
* Per-module breakdown: an op belongs to the component whose module runs it, including
  through the module's public methods (``lm_logits``, the generator's ``project``), not
  just ``forward``. Components: the model's stacks (``encoder``, ``decoder``: the
  architecture spec's ``stacks``), ``lm_head`` (the rest of the discriminator: its
  embedding and output head), ``<objective>.<child>`` for the objectives'
  modules (``rtd.generator``, ``rtd.head``) and ``losses`` (what objectives compute
  themselves: cross-entropy, sampling; 0 under the default convention).

Stages follow the trainer's curriculum (``ScheduleSet.stages``): stage k runs the
objectives it names (the implicit two-stage one: stage 1 every objective, stage 2 without
the stage-1-only ones) with its knob values, on the run's raw chunk (the longest any stage
needs); an objective held for a later stage costs nothing in the stages it sits out, and
is released, as in training, once no later stage names it. Each stage's first step is
known when the previous one ends at a step or on a knob condition (found by bisection),
else it is decided during training. The baseline is the cheapest standard objective the
architecture pre-trains with, as its spec names it (``ArchitectureSpec.baseline``): plain
span corruption on an encoder-decoder (the recipe's ``span_corruption`` settings), causal
LM on a decoder, BERT-style MLM on an encoder (15% masked, or the recipe's ``mlm_mask``
ratio), counted on the same model.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from spactor.architectures.base import ALL_FIELDS, ArchitectureSpec, analytic_forward_flops, spec_for, spec_of
from spactor.config import DataConfig, Plugin, Resolved
from spactor.objectives.base import Batch, Objective, Vocab
from spactor.registry import OBJECTIVES
from spactor.train.builders import build_model, build_objectives, raw_length_for, seeded_generator
from spactor.train.flops.forward import forward_lengths
from spactor.train.flops.handles import op_handles, unhandled_note
from spactor.train.flops.trace_forms import TraceForms
from spactor.train.flops.tracing import is_trained, method_scopes, parameters_with_gradients
from spactor.train.stages import (
    configured_types, enter_stage, knob_values, run_raw_length, stage_end_step, stage_exists,
)
from spactor.train.step import TrainModules, apply_transforms
from spactor.schedules.base import ScheduleSet, watches_metrics
from spactor.schedules.base import build as build_schedules

# --------------------------------------------------------------------------- one step


class _Step(nn.Module):
    """What fvcore traces: the runner's forward (modifiers, one encode, every loss) on a
    prepared batch given as a tuple of tensors. Returns the sum of every loss (so nothing
    any loss computes is pruned from the trace) and keeps the trainer's weighted loss —
    the one it backpropagates — to find which parameters get gradients."""

    def __init__(self, modules: TrainModules, keys: Sequence[str], rng: torch.Generator) -> None:
        super().__init__()
        self.train_modules = modules
        self.keys = list(keys)
        self.rng = rng
        self.trained_loss: torch.Tensor | None = None

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        batch = dict(zip(self.keys, tensors))
        # the micro-batch context, counted as the trainer counts it, inside the trace
        losses, _ = self.train_modules(batch, self.rng, self.train_modules.context(batch, with_metrics=True))
        weights = self.train_modules.loss_weights(losses)
        weighted = [weights[name] * total.float().sum()
                    for name, (total, _) in losses.items() if weights[name] != 0]
        self.trained_loss = torch.stack(weighted).sum() if weighted else None
        return torch.stack([total.float().sum() for total, _ in losses.values()]).sum()


LOSSES = "losses"  # what objectives compute outside their modules (CE, sampling)


@dataclass
class _Component:
    paths: list[str]  # module paths whose exclusive FLOPs this component sums
    modules: list[nn.Module]  # whose parameters decide trained (×3) vs frozen (×1)


def _components(modules: TrainModules, prefix: str) -> dict[str, _Component]:
    """The breakdown: D's stacks, D's head (its own ops — the tied projection — plus its
    other children: embedding, lm_head/mlm_head), each objective's child modules, and
    ``losses`` (the rest: what objectives compute outside any module)."""
    comps: dict[str, _Component] = {}
    children = dict(modules.model.named_children())
    stacks = spec_of(modules.model).stack_names(modules.model)  # the architecture's stacks
    for stack in stacks:
        if stack in children:
            comps[stack] = _Component([f"{prefix}.model.{stack}"], [children[stack]])
    head = _Component([f"{prefix}.model"], [])
    for child, module in children.items():
        if child not in stacks:
            head.paths.append(f"{prefix}.model.{child}")
            head.modules.append(module)
    comps["lm_head"] = head
    for obj_name, obj in modules.active_objectives().items():  # held for a later stage: not this one's
        for child, module in obj.named_children():
            comps[f"{obj_name}.{child}"] = _Component([f"{prefix}.objectives.{obj_name}.{child}"], [module])
    comps[LOSSES] = _Component([], [])
    return comps


def _exclusive(by_module: dict[str, int], path: str, all_paths: list[str]) -> float:
    """fvcore's count for ``path`` minus what its outermost listed descendants claim."""
    inner = [p for p in all_paths if p.startswith(path + ".")]
    outermost = [p for p in inner if not any(q != p and p.startswith(q + ".") for q in inner)]
    return float(by_module.get(path, 0)) - sum(float(by_module.get(p, 0)) for p in outermost)


@dataclass
class StepFlops:
    """FLOPs of one training step of one stage."""

    stage: int
    batch_size: int
    forward_per_sequence: dict[str, float]  # component → forward FLOPs for one sequence
    trained: dict[str, bool]  # component → trained (×3) or frozen (×1)
    objectives: list[str] = field(default_factory=list)
    unsupported_ops: dict[str, int] = field(default_factory=dict)  # op → calls fvcore counted as 0
    # (encoder, decoder) tokens of one sequence's model forward in this step (decoder 0: none)
    lengths: tuple[int, int] = (0, 0)
    # The architecture's analytic forward FLOPs of one sequence at ``lengths``; None: it
    # declares no ``analytic_flops`` (or it was not asked for)
    analytic_forward_per_sequence: float | None = None

    def multiplier(self, component: str) -> int:
        return 3 if self.trained[component] else 1

    @property
    def modules_per_sequence(self) -> dict[str, float]:
        """Training FLOPs (forward + backward) per sequence, by component."""
        return {k: v * self.multiplier(k) for k, v in self.forward_per_sequence.items()}

    @property
    def flops_per_sequence(self) -> float:
        return sum(self.modules_per_sequence.values())

    @property
    def forward_flops_per_step(self) -> float:
        return sum(self.forward_per_sequence.values()) * self.batch_size

    @property
    def flops_per_step(self) -> float:
        return self.flops_per_sequence * self.batch_size

    @property
    def modules(self) -> dict[str, float]:
        """Training FLOPs per step, by component."""
        return {k: v * self.batch_size for k, v in self.modules_per_sequence.items()}

    @property
    def analytic_flops_per_step(self) -> float | None:
        """The analytic count's training FLOPs per step: 3 × the model's forward (it
        trains) × the batch; None without a formula."""
        forward = self.analytic_forward_per_sequence
        return None if forward is None else 3.0 * forward * self.batch_size

    @property
    def measured_over_analytic(self) -> float | None:
        analytic = self.analytic_flops_per_step
        return None if not analytic else self.flops_per_step / analytic


def with_analytic(flops: StepFlops, resolved: Resolved, vocab_size: int) -> StepFlops:
    """``flops`` with the architecture's analytic forward count at its lengths."""
    flops.analytic_forward_per_sequence = analytic_forward_flops(
        resolved.model.type, resolved.model.config, vocab_size, *flops.lengths
    )
    return flops


def count_modules_flops(
    modules: TrainModules,
    batch: Batch,
    rng: torch.Generator,
    batch_size: int = 1,
    stage: int = 1,
    elementwise: bool = False,
) -> StepFlops:
    """Trace the runner's forward on ``batch`` (already transformed; one sequence is
    enough, see the module docstring) and count it. ``batch_size`` scales the per-step
    numbers; the per-sequence ones are divided by ``batch``'s own size."""
    try:
        from fvcore.nn import FlopCountAnalysis
    except ImportError:
        raise RuntimeError("counting FLOPs needs fvcore: pip install fvcore") from None

    keys = sorted(batch)
    step = _Step(modules, keys, rng)
    prefix = "train_modules"
    owners = {f"{prefix}.model": modules.model}
    for obj_name, obj in modules.active_objectives().items():
        owners[f"{prefix}.objectives.{obj_name}"] = obj
        for child, module in obj.named_children():
            owners[f"{prefix}.objectives.{obj_name}.{child}"] = module

    analysis = FlopCountAnalysis(step, tuple(batch[k] for k in keys))
    analysis.set_op_handle(**op_handles(elementwise))
    analysis.unsupported_ops_warnings(False)
    analysis.uncalled_modules_warnings(False)
    # Traced with autograd on (as in training), so the loss's graph shows what trains.
    # On meta, attention is one fused op (no (L, L) score tensors; same FLOPs); flex and
    # the fused cross-entropy are traced in their plain-op forms (trace_forms).
    with method_scopes(owners), TraceForms(), torch.enable_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer chatter about data-dependent shapes
        by_module = analysis.by_module()
        unsupported = dict(analysis.unsupported_ops())
    reached = parameters_with_gradients(step.trained_loss)
    step.trained_loss = None  # free the graph
    sequences = next(iter(batch.values())).shape[0]
    comps = _components(modules, prefix)
    all_paths = [p for c in comps.values() for p in c.paths]
    claimed = {name: sum(_exclusive(by_module, p, all_paths) for p in c.paths) for name, c in comps.items()}
    claimed[LOSSES] = float(by_module[""]) - sum(v for k, v in claimed.items() if k != LOSSES)
    return StepFlops(
        stage=stage,
        batch_size=batch_size,
        forward_per_sequence={k: 2.0 * v / sequences for k, v in claimed.items()},  # multiply-adds → FLOPs
        trained={k: is_trained(c.modules, reached) for k, c in comps.items()},
        objectives=list(modules.active_objectives()),
        unsupported_ops=unsupported,
        lengths=forward_lengths(modules.model, batch),
    )


# --------------------------------------------------------------------------- building


def count_vocab(data: DataConfig) -> Vocab:
    """The vocabulary the run would use, without training a tokenizer: the configured
    SentencePiece model, else T5's layout for ``data.tokenizer_vocab_size`` pieces (what
    the built-in tokenizer has; 32000 gives T5's 32,128 rows)."""
    from spactor.data.tokenizer import Tokenizer, t5_vocab

    if data.tokenizer:
        return Tokenizer.load(Path(data.tokenizer).expanduser()).vocab()
    return t5_vocab(data.tokenizer_vocab_size)


def _without_checkpoint_loading(resolved: Resolved) -> Resolved:
    """A private copy in which no objective loads weights: a frozen generator's checkpoint
    changes no FLOPs, and counting must not need it to exist."""
    resolved = copy.deepcopy(resolved)
    for plugin in resolved.objectives.values():
        if hasattr(plugin.config, "generator_checkpoint"):
            plugin.config.generator_checkpoint = None
    return resolved


@contextlib.contextmanager
def _quiet_build(device: torch.device) -> Iterator[None]:
    # Building (weight init) and the traced forward (dropout) consume the global RNGs;
    # fork them so that counting FLOPs before or after the real model is built changes
    # neither that model's initialisation nor the run's random stream.
    cuda = (
        [device.index if device.index is not None else torch.cuda.current_device()]
        if device.type == "cuda"
        else []
    )
    # On ``meta`` the modules hold no storage: counting then needs no host memory at all.
    place = torch.device("meta") if device.type == "meta" else contextlib.nullcontext()
    with torch.random.fork_rng(devices=cuda), warnings.catch_warnings(), place:
        warnings.filterwarnings("ignore", message=".*frozen generator without generator_checkpoint.*")
        yield


def _dry_batch(
    objectives: dict[str, Objective],
    vocab: Vocab,
    input_length: int,
    rng: torch.Generator,
    device: torch.device,
    raw_length: int | None = None,
) -> Batch:
    """One raw chunk of random real token ids (``raw_length``: the run's, as the data
    delivers it; default: what ``objectives`` need), through the objectives' transforms."""
    raw_length = raw_length or raw_length_for(objectives, input_length)
    original = torch.randint(3, vocab.last_sentinel_id, (1, raw_length), generator=rng, device=device)
    return apply_transforms(objectives, {"original": original}, rng)


def _count(
    modules: TrainModules,
    vocab: Vocab,
    input_length: int,
    batch_size: int,
    stage: int,
    elementwise: bool,
    device: torch.device,
    seed: int = 0,
    raw_length: int | None = None,
) -> StepFlops:
    objectives = modules.active_objectives()  # the stage's, as the step transforms them
    if device.type == "meta":  # the corruption needs values: prepare on CPU, trace on meta
        cpu = torch.device("cpu")
        with cpu:
            rng = seeded_generator(seed, cpu)
            batch = _dry_batch(objectives, vocab, input_length, rng, cpu, raw_length)
        batch = {k: v.to(device) for k, v in batch.items()}
    else:
        rng = seeded_generator(seed, device)
        batch = _dry_batch(objectives, vocab, input_length, rng, device, raw_length)
    return count_modules_flops(modules, batch, rng, batch_size, stage, elementwise)


def count_step_flops(
    resolved: Resolved,
    stage: int = 1,
    vocab: Vocab | None = None,
    elementwise: bool = False,
    device: torch.device | str = "cpu",
) -> StepFlops:
    """FLOPs of one training step of ``stage`` (1..N of the recipe's curriculum: the
    objectives that stage runs, its knob values at step 0) of the recipe, at its real
    shapes and ``trainer.batch_size``."""
    resolved = _without_checkpoint_loading(resolved)
    vocab = vocab or count_vocab(resolved.cfg.data)
    device = torch.device(device)
    with _quiet_build(device):
        model = build_model(resolved, vocab)
        objectives = build_objectives(resolved, vocab, model)
        modules = TrainModules(model, objectives, vocab.pad_id).to(device).train()
        schedules = build_schedules(
            resolved.schedules, knob_values(objectives), resolved.cfg.trainer.max_steps,
            configured_types(resolved, objectives)
        )
        raw_length = run_raw_length(objectives, schedules.stages, resolved.cfg.data.input_length)
        enter_stage(modules, objectives, schedules, stage)
        counted = _count(
            modules,
            vocab,
            resolved.cfg.data.input_length,
            resolved.cfg.trainer.batch_size,
            stage,
            elementwise,
            device,
            raw_length=raw_length,
        )
        return with_analytic(counted, resolved, model.vocab_size)


# --------------------------------------------------------------------------- stages and report


def baseline_objectives(resolved: Resolved, spec: ArchitectureSpec | None = None) -> dict[str, Plugin]:
    """The baseline's objectives, as the architecture's spec names them: each a default
    config, with the fields the spec takes from the recipe's objective of that type (span
    corruption: all of them; BERT's mlm_mask: the ratio), then the spec's settings."""
    spec = spec if spec is not None else spec_for(resolved.model.type)
    by_type = {p.type: p for p in resolved.objectives.values()}
    out: dict[str, Plugin] = {}
    for base in spec.baseline:
        mine = by_type.get(base.type)
        if mine is not None and base.from_recipe == ALL_FIELDS:
            config = mine.config  # knobs never write it
        else:
            config = OBJECTIVES.get(base.type).config_cls()
            for key in base.from_recipe if mine is not None else ():
                setattr(config, key, getattr(mine.config, key))
        if base.settings:
            config = dataclasses.replace(config, **base.settings)
        out[base.type] = Plugin(name=base.type, type=base.type, config=config)
    return out


def _can_switch_later(schedules: ScheduleSet) -> bool:
    """A schedule that watches metrics (adaptive τ) may decide the switch during training."""
    return any(watches_metrics(s) for s in schedules.schedules.values())


@dataclass
class StageFlops:
    name: str  # "stage1", "stage2", ...
    stage: int
    first_step: int | None  # None: the switch is decided during training
    steps: int | None  # None: until the switch (unknown) or for ever
    flops: StepFlops


@dataclass
class FlopsReport:
    """FLOPs per step of each stage a recipe runs, and of its baseline."""

    recipe: str | None
    architecture: str
    batch_size: int
    input_length: int
    raw_length: int
    vocab_size: int
    max_steps: int
    switch_step: int | None  # the first switch (stage 1 → 2)
    stages: list[StageFlops]
    baseline: StepFlops
    baseline_objectives: list[str]
    elementwise: bool = False
    notes: list[str] = field(default_factory=list)
    switch_steps: list[int | None] = field(default_factory=list)  # first step of stages 2..N, None: unknown

    @property
    def baseline_flops_per_step(self) -> float:
        return self.baseline.flops_per_step

    def per_step(self, stage: int) -> float:
        """Training FLOPs of one step in ``stage`` (what the runner accumulates)."""
        for s in self.stages:
            if s.stage == stage:
                return s.flops.flops_per_step
        raise KeyError(f"recipe has no stage {stage}; stages: {[s.stage for s in self.stages]}")

    def ratio(self, stage: int) -> float:
        return self.per_step(stage) / self.baseline_flops_per_step

    def cumulative(self, steps: int) -> float:
        """FLOPs of the first ``steps`` steps, each stage from its first step to the next
        one's (the last stage continues past ``max_steps``): τ·F1 + (n − τ)·F2 for two
        stages. With a switch unknown (decided during training), the stage before it
        throughout: an upper bound."""
        total = 0.0
        for i, s in enumerate(self.stages):
            if s.first_step is None:
                continue
            last = i == len(self.stages) - 1
            end = steps if last or s.steps is None else min(steps, s.first_step + s.steps)
            total += max(0, end - s.first_step) * s.flops.flops_per_step
        return total

    def normalized(self, steps: int) -> float:
        """Cumulative FLOPs over the baseline's for the same number of steps: the paper's
        Table 2/3 column, (τ·F1 + (n − τ)·F2) / (n·F_baseline)."""
        return self.cumulative(steps) / (steps * self.baseline_flops_per_step) if steps > 0 else float("nan")

    @property
    def tokens_per_step(self) -> int:
        """Tokens of the raw chunk per step: what the runner's ``tokens_seen`` counts."""
        return self.batch_size * self.raw_length

    def analytic_per_token(self, flops: StepFlops) -> float | None:
        analytic = flops.analytic_flops_per_step
        return None if analytic is None else analytic / self.tokens_per_step

    def unsupported_ops(self) -> dict[str, dict[str, int]]:
        """Ops fvcore had no handle for and counted as 0, by stage name (and ``baseline``);
        empty when every op was counted."""
        found = {s.name: s.flops.unsupported_ops for s in self.stages if s.flops.unsupported_ops}
        if self.baseline.unsupported_ops:
            found["baseline"] = self.baseline.unsupported_ops
        return found

    def unhandled_note(self) -> str | None:
        return unhandled_note(self.unsupported_ops())

    def default_steps(self) -> list[int]:
        points = {self.max_steps // 2, self.max_steps}
        for switch in self.switch_steps or [self.switch_step]:
            if switch:
                points.add(switch)
        return sorted(p for p in points if p > 0)

    def to_json(self, steps: Sequence[int] | None = None) -> dict[str, Any]:
        steps = list(steps) if steps is not None else self.default_steps()
        return {
            "recipe": self.recipe,
            "architecture": self.architecture,
            "batch_size": self.batch_size,
            "input_length": self.input_length,
            "raw_length": self.raw_length,
            "vocab_size": self.vocab_size,
            "max_steps": self.max_steps,
            "switch_step": self.switch_step,
            "switch_steps": self.switch_steps,
            "stages": [
                {
                    "name": s.name,
                    "stage": s.stage,
                    "first_step": s.first_step,
                    "steps": s.steps,
                    "objectives": s.flops.objectives,
                    "flops_per_step": s.flops.flops_per_step,
                    "forward_flops_per_step": s.flops.forward_flops_per_step,
                    "flops_per_sequence": s.flops.flops_per_sequence,
                    "ratio_to_baseline": s.flops.flops_per_step / self.baseline_flops_per_step,
                    "modules": s.flops.modules,
                    "trained": s.flops.trained,
                    "unsupported_ops": s.flops.unsupported_ops,
                    **self._analytic_json(s.flops),
                }
                for s in self.stages
            ],
            "baseline_objectives": self.baseline_objectives,
            "baseline_flops_per_step": self.baseline_flops_per_step,
            "baseline_modules": self.baseline.modules,
            "baseline_unsupported_ops": self.baseline.unsupported_ops,
            **{f"baseline_{k}": v for k, v in self._analytic_json(self.baseline).items()},
            "tokens_per_step": self.tokens_per_step,
            "cumulative": [
                {"step": n, "flops": self.cumulative(n), "normalized": self.normalized(n)} for n in steps
            ],
            "convention": (
                "FLOPs = 2 x multiply-adds of matmul-class ops (linear, matmul, attention)"
                + (" + rough elementwise costs" if self.elementwise else "; elementwise ops not counted")
                + "; training = 3 x forward for trained modules, 1 x for frozen ones"
            ),
            "notes": self.notes + ([note] if (note := self.unhandled_note()) else []),
        }

    def _analytic_json(self, flops: StepFlops) -> dict[str, Any]:
        return {
            "model_lengths": list(flops.lengths),
            "analytic_flops_per_step": flops.analytic_flops_per_step,
            "analytic_flops_per_token": self.analytic_per_token(flops),
            "measured_over_analytic": flops.measured_over_analytic,
        }


def _architecture(resolved: Resolved) -> str:
    config = resolved.model.config
    parts = [resolved.model.type]
    if getattr(config, "version", None) is not None:
        parts.append(f"v{config.version}")
    if getattr(config, "size", None) is not None:
        parts.append(str(config.size))
    return " ".join(parts)


def flops_report(
    resolved: Resolved,
    vocab: Vocab | None = None,
    elementwise: bool = False,
    tau: int | None = None,
    device: torch.device | str = "cpu",
    every_stage: bool = False,
) -> FlopsReport:
    """Count every stage the recipe runs and its baseline. ``tau`` overrides the switch
    step (for a schedule that decides it during training). ``every_stage``: also count a
    stage this config would not reach (the runner's tracker: a resumed run may be past
    a switch its new τ puts later, or before one it puts earlier). Builds the model once."""
    resolved = _without_checkpoint_loading(resolved)
    cfg = resolved.cfg
    vocab = vocab or count_vocab(cfg.data)
    device = torch.device(device)
    max_steps, batch_size, input_length = cfg.trainer.max_steps, cfg.trainer.batch_size, cfg.data.input_length
    notes: list[str] = []

    with _quiet_build(device):
        model = build_model(resolved, vocab)
        objectives = build_objectives(resolved, vocab, model)
        modules = TrainModules(model, objectives, vocab.pad_id).to(device).train()
        schedules = build_schedules(resolved.schedules, knob_values(objectives), max_steps,
                                    configured_types(resolved, objectives))
        raw_length = run_raw_length(objectives, schedules.stages, input_length)
        num_stages = schedules.stages.num_stages
        if schedules.driven_knobs():
            explicit = any(s is schedules.stages for s in schedules.schedules.values())
            notes.append("scheduled knobs: each stage is counted with its curriculum knob values and the "
                         "other schedules' values at step 0" if explicit else
                         "scheduled knobs: stage 1 is counted with their values at step 0")

        def count(stage: int) -> StepFlops:
            counted = _count(modules, vocab, input_length, batch_size, stage, elementwise, device,
                             raw_length=raw_length)
            return with_analytic(counted, resolved, model.vocab_size)

        # Stage k runs from first (None: decided during training) to its end; stage k+1
        # runs if it exists and its start is known, may be decided later, or every_stage.
        stages: list[StageFlops] = []
        switches: list[int | None] = []
        first: int | None = 0
        speculative = False  # this stage is counted only because every_stage asks for it
        enter_stage(modules, objectives, schedules, 1)
        for k in range(1, num_stages + 1):
            if k > 1:
                enter_stage(modules, objectives, schedules, k)
            end: int | None = None
            runs_next = False
            if k < num_stages:
                if first is not None:
                    if k == 1 and tau is not None:
                        end = tau
                    else:
                        end = stage_end_step(objectives, schedules, k, first, max_steps)
                exists_next = stage_exists(objectives, schedules, k + 1)
                if not exists_next or (end is not None and end >= max_steps):
                    end = None  # nothing would be left to train, or the run ends first
                later = (
                    schedules.stages.decides_later(k)
                    or (k == 1 and _can_switch_later(schedules))
                    or (first is None and schedules.stages.decided_end(k) is not None)
                )
                runs_next = exists_next and (end is not None or later or every_stage)
                next_speculative = runs_next and end is None and not later
                if runs_next and end is None:
                    notes.append(
                        f"the switch to stage {k + 1} is decided during training: cumulative FLOPs assume "
                        f"stage {k} throughout (an upper bound)"
                        + ("; pass --tau to assume a switch step" if k == 1 else "")
                    )
                switches.append(end)
            if every_stage or first is None or end is None or end > first:
                if first is not None and end is not None:
                    steps_k: int | None = end - first
                elif first is not None and not runs_next:
                    steps_k = max_steps - first
                else:
                    steps_k = None
                try:
                    stages.append(StageFlops(f"stage{k}", k, first, steps_k, count(k)))
                except Exception:  # noqa: BLE001
                    # A stage no schedule reaches may not run at all (``mlm`` without the
                    # ``mlm_mask`` a switch would release): nothing to count, not an error.
                    if not speculative:
                        raise
                    last = stages[-1]
                    if last.steps is None and last.first_step is not None:  # it runs to the end
                        stages[-1] = dataclasses.replace(last, steps=max_steps - last.first_step)
                    break
            if not runs_next:
                break
            first = end
            speculative = next_speculative
        switch = switches[0] if switches else None

        base_plugins = baseline_objectives(resolved, spec_for(resolved.model.type))
        current = {  # what the last stage counted runs
            name: (p.type, dataclasses.asdict(p.config))
            for name, p in resolved.objectives.items()
            if name in stages[-1].flops.objectives
        }
        wanted = {name: (p.type, dataclasses.asdict(p.config)) for name, p in base_plugins.items()}
        if current == wanted:
            baseline = dataclasses.replace(stages[-1].flops)  # the last stage is the baseline
        else:
            base_resolved = dataclasses.replace(resolved, objectives=base_plugins, schedules={})
            base_objectives = build_objectives(base_resolved, vocab, model)
            base_modules = TrainModules(model, base_objectives, vocab.pad_id).to(device).train()
            baseline = with_analytic(
                _count(base_modules, vocab, input_length, batch_size, 0, elementwise, device), resolved,
                model.vocab_size,
            )

    if spec_for(resolved.model.type).analytic_flops is None:
        notes.append(f"model.arch '{resolved.model.type}' declares no ArchitectureSpec.analytic_flops: "
                     "no analytic count")
    return FlopsReport(
        recipe=resolved.recipe,
        architecture=_architecture(resolved),
        batch_size=batch_size,
        input_length=input_length,
        raw_length=raw_length,
        vocab_size=model.vocab_size,
        max_steps=max_steps,
        switch_step=switch,
        switch_steps=switches,
        stages=stages,
        baseline=baseline,
        baseline_objectives=list(base_plugins),
        elementwise=elementwise,
        notes=notes,
    )


