"""What a schedule is, the context it is built with, and the set the runner drives.

A schedule is a pure function of the step (and, for adaptive ones, of the metrics the
runner has logged so far) that sets objective knobs by dotted path, e.g.
``objectives.rtd.weight``. Some schedules also decide *when* SpacTor switches from the
hybrid stage (SC + RTD) to stage 2 (plain SC); they say so through ``switch_step``.

Stages: the runner drives one :class:`Curriculum` (stage 1..N, which objectives each
stage runs, when each ends). A ``curriculum`` schedule (``spactor.schedules.curriculum``)
writes one out in YAML; without it the set builds the implicit two-stage one
(:func:`two_stage_curriculum`) that ``two_stage``, ``adaptive`` and anneal-to-zero
recipes have always meant: their τ, adaptive decision or annealed λ1 is its stage 1's
switch rule, and the objectives its stage 2 drops are data (:data:`STAGE1_TYPES`). A
stage runs the objectives it names; an objective is released
(modules and optimizer state) when the run enters a stage that neither it nor any later
stage runs, and held (untrained) through a stage it sits out before coming back.

Step convention: ``values(step)`` and ``stage(step)`` describe the step about to run,
0-based, i.e. ``step`` optimizer updates have been done so far. ``observe(step, ...)``
is called after a logging step ran (every ``trainer.log_every`` steps), with the record
it logged: the losses averaged over the logging window, the metrics of that step. Reading
metrics costs a host sync, so schedules never see the steps in between.

Schedule state goes into the checkpoint manifest, so ``state_dict`` must be plain JSON
(ints, floats, None, lists, dicts). Pure schedules have no state (``{}``); a resumed run
recomputes their values from the step.

The runner builds one :class:`ScheduleSet` from ``schedules:`` with :func:`build`; the
set rejects a schedule driving an unknown knob, and two schedules driving the same knob.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from spactor.checks import CheckContext, check_fields, fail, is_int
from spactor.config import ConfigError
from spactor.contract import check_contract, implements, objective_class
from spactor.registry import SCHEDULES, closest


@dataclass
class ScheduleContext:
    """What a schedule factory gets besides its own config."""

    name: str  # instance key under ``schedules:``, for error messages
    knobs: dict[str, float]  # every valid knob path -> its configured (initial) value
    max_steps: int
    objectives: list[str] = field(default_factory=list)  # configured objective names, in order

    def check_context(self) -> CheckContext:
        """What a schedule config's check knows when the schedule is built (the encoder
        length is not a schedule's business: 0)."""
        return CheckContext(input_length=0, max_steps=self.max_steps, knobs=self.knobs,
                            objectives=tuple(self.objectives))


class Schedule:
    """Base class: no knobs, no switch, no state. Subclasses override what they use."""

    def driven_knobs(self) -> list[str]:
        """Knob paths this schedule sets (empty for a pure stage switch)."""
        return []

    def values(self, step: int) -> dict[str, float]:
        """Knob path -> value for the step about to run (``step`` updates done so far)."""
        return {}

    def switch_step(self) -> int | None:
        """The step at which stage 2 starts, once this schedule knows it; else None."""
        return None

    def observe(self, step: int, metrics: Mapping[str, float]) -> None:
        """Called after logging step ``step`` ran, with the record it logged."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        # Pure schedules carry nothing across a resume: their values follow from the step.
        return None


# --------------------------------------------------------------------------- knob checks


def unknown_knob_message(where: str, knob: str, valid: Iterable[str]) -> str:
    """One line naming the bad path, every valid path and the closest one."""
    valid = sorted(valid)
    msg = f"{where}: unknown knob '{knob}'; valid knobs: {', '.join(valid) or '(none)'}"
    hint = closest(knob, valid)
    return msg + (f"; did you mean '{hint}'?" if hint else "")


def check_knob(where: str, knob: str, knobs: Mapping[str, float]) -> None:
    """Raise a one-line ConfigError unless ``knob`` is one of ``knobs``."""
    if knob not in knobs:
        raise ConfigError(unknown_knob_message(where, knob, knobs))


# --------------------------------------------------------------------------- stages


class Stages:
    """Stage 1..N of a run: what each stage trains and when it ends.

    The runner keeps ``current`` (checkpointed as the manifest's ``stage``) and asks,
    before every step, whether the current stage has ended (:meth:`ScheduleSet.advance`);
    stage k runs the objectives :meth:`active_in` k, and entering it releases every live
    objective :meth:`inactive_in` k (none from k on runs it). Stages only move forward,
    so a released objective is never needed again; one that sits a stage out is held.
    :class:`Curriculum` is the one implementation (written out, or the implicit two).
    """

    num_stages: int = 1
    current: int = 1

    def ends(self, stage: int, step: int, objectives: Mapping[str, Any]) -> bool:
        """Whether ``stage`` is over before the step about to run (``step`` updates done),
        given the live objectives with this step's knob values applied."""
        return False

    def inactive_in(self, stage: int, objectives: Mapping[str, Any]) -> list[str]:
        """Names among ``objectives`` that no stage from ``stage`` on runs: released on
        entering ``stage``."""
        return []

    def active_in(self, stage: int, objectives: Mapping[str, Any]) -> list[str]:
        """Names among ``objectives`` that ``stage`` runs, in their order (the step runs
        only these; an objective held for a later stage waits)."""
        inactive = set(self.inactive_in(stage, objectives))
        return [name for name in objectives if name not in inactive]

    def final_objectives(self, objectives: Mapping[str, Any]) -> list[str]:
        """Names among ``objectives`` that the last stage runs: what the run ends up
        training (the clean evaluation pass's objectives, ``spactor.train.eval_passes``)."""
        return self.active_in(self.num_stages, objectives)

    def decided_end(self, stage: int) -> int | None:
        """The step at which ``stage`` ends, when that is a known step (for FLOPs)."""
        return None

    def decides_later(self, stage: int) -> bool:
        """Whether the end of ``stage`` is decided from metrics during training."""
        return False


@dataclass
class Stage:
    """One stage of a :class:`Curriculum`: the objectives it runs, its constant knob values,
    and its end rules (the first that holds ends it; the last stage has none)."""

    objectives: list[str]
    knobs: dict[str, float]
    until_step: int | None = None  # the first step of the next stage
    until_off: bool = False  # once the objectives it hands over are all off
    adaptive: Schedule | None = None  # its own adaptive end (observed and checkpointed here)
    # Switch rules another schedule owns, observes and checkpoints (the implicit
    # curriculum's ``adaptive`` τ): the stage ends at the first ``switch_step`` they report.
    switches: tuple[Schedule, ...] = ()

    def rules(self) -> list[Schedule]:
        return ([self.adaptive] if self.adaptive is not None else []) + list(self.switches)


class Curriculum(Schedule, Stages):
    """The one stage mechanism: N :class:`Stage`\\ s. A ``curriculum`` schedule writes it out in
    YAML (``spactor.schedules.curriculum``); every other run gets the implicit two-stage one
    (:func:`two_stage_curriculum`), which is not a schedule of the set but its ``stages``."""

    def __init__(self, stages: list[Stage], defaults: Mapping[str, float]) -> None:
        self.stages = stages
        self.num_stages = len(stages)
        self.current = 1
        self.driven = sorted({k for s in stages for k in s.knobs})
        self.defaults = {k: defaults[k] for k in self.driven}

    # -- a schedule: the current stage's knob values --------------------------------
    def driven_knobs(self) -> list[str]:
        return list(self.driven)

    def values(self, step: int) -> dict[str, float]:
        return {**self.defaults, **self.stages[self.current - 1].knobs}

    def observe(self, step: int, metrics: Mapping[str, float]) -> None:
        adaptive = self.stages[self.current - 1].adaptive
        if adaptive is not None:
            adaptive.observe(step, metrics)

    def state_dict(self) -> dict[str, Any]:
        # The current stage is the manifest's ``stage``; here only what decides an end.
        return {
            "adaptive": {str(i + 1): s.adaptive.state_dict() for i, s in enumerate(self.stages) if s.adaptive}
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        for key, entry in state.get("adaptive", {}).items():
            adaptive = self.stages[int(key) - 1].adaptive
            if adaptive is None:
                raise ConfigError(f"checkpoint has adaptive state for stage {key}, which has no adaptive end")
            adaptive.load_state_dict(entry)

    # -- the stages -----------------------------------------------------------------
    def ends(self, stage: int, step: int, objectives: Mapping[str, Any]) -> bool:
        spec = self.stages[stage - 1]
        if spec.until_step is not None and step >= spec.until_step:
            return True
        for rule in spec.rules():
            switch = rule.switch_step()
            if switch is not None and step >= switch:
                return True
        if spec.until_off:
            following = set(self.active_in(stage + 1, objectives))
            leaving = [objectives[n] for n in self.active_in(stage, objectives) if n not in following]
            return bool(leaving) and all(o.is_off() for o in leaving)
        return False

    def active_in(self, stage: int, objectives: Mapping[str, Any]) -> list[str]:
        named = set(self.stages[stage - 1].objectives)
        return [name for name in objectives if name in named]

    def inactive_in(self, stage: int, objectives: Mapping[str, Any]) -> list[str]:
        # Released on entering ``stage``: no stage from it on runs them. An objective that
        # only sits ``stage`` out is held for the stage that brings it back.
        needed = {name for spec in self.stages[stage - 1:] for name in spec.objectives}
        return [name for name in objectives if name not in needed]

    def decided_end(self, stage: int) -> int | None:
        spec = self.stages[stage - 1]
        ends = [spec.until_step, *(rule.switch_step() for rule in spec.rules())]
        known = [e for e in ends if e is not None]
        return min(known) if known else None

    def decides_later(self, stage: int) -> bool:
        return any(rule.switch_step() is None for rule in self.stages[stage - 1].rules())


# The objective types SpacTor's hybrid stage adds to span corruption (the MLM masking, the
# generator and the RTD head): the implicit two-stage curriculum's stage 2 drops them.
STAGE1_TYPES: tuple[str, ...] = ("mlm_mask", "rtd")


def two_stage_curriculum(types: Mapping[str, str], schedules: Mapping[str, Schedule]) -> Curriculum:
    """The implicit curriculum of a run without a ``curriculum`` schedule (``two_stage``,
    ``adaptive``, anneal-to-zero recipes): stage 1 runs every objective, stage 2 those whose
    type is not in :data:`STAGE1_TYPES`. Stage 1 ends at the first of its switch rules: the
    earliest fixed ``switch_step`` (``two_stage``'s τ, as ``until_step``), a decision from
    the metrics (``adaptive``, as a switch rule it keeps observing and checkpointing under
    its own name), or the knobs turning every dropped objective off (``until_off``, e.g. an
    annealed λ1 at 0)."""
    names = list(types)
    rest = [name for name, kind in types.items() if kind not in STAGE1_TYPES]
    fixed = [s.switch_step() for s in schedules.values() if not watches_metrics(s)]
    known = [step for step in fixed if step is not None]
    watching = tuple(s for s in schedules.values() if watches_metrics(s))
    hybrid = Stage(names, {}, until_step=min(known) if known else None, until_off=True, switches=watching)
    return Curriculum([hybrid, Stage(rest, {})], {})


# --------------------------------------------------------------------------- the set


class ScheduleSet:
    """All configured schedules, merged: the runner's single view of them.

    * ``values(step)``: every driven knob's value for the step about to run;
    * ``stages``: the run's :class:`Curriculum` (a ``curriculum`` schedule, else the
      implicit :func:`two_stage_curriculum`); ``advance(step, objectives)`` moves it on;
    * ``stage(step)``: the stage by the switch steps known so far: without a curriculum
      1 (hybrid) before the earliest ``switch_step`` any schedule reports, 2 from it on,
      1 throughout when no schedule switches;
    * ``observe`` fans out to every schedule; ``state_dict`` is keyed by instance name.
    """

    def __init__(self, schedules: Mapping[str, Schedule], knobs: Mapping[str, float] | Iterable[str],
                 objectives: Mapping[str, str] | Iterable[str] | None = None) -> None:
        """``objectives``: the configured objectives, name -> type (a list of names: each
        its own type; None: those the knobs name), for the implicit curriculum's stages."""
        self.schedules: dict[str, Schedule] = dict(schedules)
        self.valid_knobs: list[str] = sorted(knobs)
        self.owners: dict[str, str] = self._check(self.schedules, set(self.valid_knobs))
        self.stages: Curriculum = self._stages(self.schedules, objective_types(objectives, self.valid_knobs))

    def _stages(self, schedules: Mapping[str, Schedule], types: Mapping[str, str]) -> Curriculum:
        """The one curriculum among the schedules, else the implicit two-stage one."""
        explicit = [(name, s) for name, s in schedules.items() if isinstance(s, Curriculum)]
        if len(explicit) > 1:
            raise ConfigError(
                f"schedules: {', '.join(n for n, _ in explicit)} each define stages; a run has one curriculum"
            )
        if explicit:
            name, stages = explicit[0]
            for other, schedule in schedules.items():
                if schedule is not stages and _switches(schedule):
                    raise ConfigError(
                        f"schedules.{other}: decides a stage switch, but schedules.{name} is a curriculum; "
                        "end its stages with until_step, until_off or adaptive instead"
                    )
            return stages
        return two_stage_curriculum(types, schedules)

    def advance(self, step: int, objectives: Mapping[str, Any]) -> int:
        """Move past every stage that has ended before ``step`` runs; the current stage."""
        stages = self.stages
        while stages.current < stages.num_stages and stages.ends(stages.current, step, objectives):
            stages.current += 1
        return stages.current

    @staticmethod
    def _check(schedules: Mapping[str, Schedule], valid: set[str]) -> dict[str, str]:
        """Knob -> the one schedule driving it; a one-line error on any conflict."""
        owners: dict[str, str] = {}
        for name, schedule in schedules.items():
            for knob in schedule.driven_knobs():
                if knob not in valid:
                    raise ConfigError(unknown_knob_message(f"schedules.{name}", knob, valid))
                if knob in owners:
                    raise ConfigError(
                        f"schedules '{owners[knob]}' and '{name}' both drive knob '{knob}'; "
                        "a knob may be driven by one schedule only"
                    )
                owners[knob] = name
        return owners

    def driven_knobs(self) -> dict[str, str]:
        """Knob path -> the instance name of the schedule driving it."""
        return dict(self.owners)

    def values(self, step: int) -> dict[str, float]:
        merged: dict[str, float] = {}
        for schedule in self.schedules.values():
            merged.update(schedule.values(step))  # disjoint by construction
        return merged

    def stage(self, step: int) -> int:
        """The stage ``step`` runs in by the stage ends known as steps so far (knob
        conditions aside; the runner uses :meth:`advance`)."""
        stage = 1
        while stage < self.stages.num_stages:
            end = self.stages.decided_end(stage)
            if end is None or step < end:
                break
            stage += 1
        return stage

    def observe(self, step: int, metrics: Mapping[str, float]) -> None:
        for schedule in self.schedules.values():
            schedule.observe(step, metrics)

    def state_dict(self) -> dict[str, dict[str, Any]]:
        return {name: schedule.state_dict() for name, schedule in self.schedules.items()}

    def load_state_dict(self, state: Mapping[str, Mapping[str, Any]]) -> None:
        """Restore each schedule from its entry. A schedule with no entry (added since the
        checkpoint) keeps its fresh state; an entry with no schedule is an error, because
        dropping it could silently lose a decided switch step."""
        unknown = sorted(set(state) - set(self.schedules))
        if unknown:
            raise ConfigError(
                f"checkpoint has state for schedules not in the config: {', '.join(unknown)}; "
                f"configured schedules: {', '.join(sorted(self.schedules)) or '(none)'}"
            )
        for name, entry in state.items():
            self.schedules[name].load_state_dict(entry)


def objective_types(objectives: Mapping[str, str] | Iterable[str] | None, knobs: Iterable[str]) -> dict[str, str]:
    """Configured objective name -> type: a list of names is taken as their own types (as a
    config that gives no ``type`` means); None: the objectives the knob paths name."""
    if objectives is None:
        objectives = dict.fromkeys(path.split(".")[1] for path in knobs if path.startswith("objectives."))
    if isinstance(objectives, Mapping):
        return {str(name): str(kind if kind is not None else name) for name, kind in objectives.items()}
    return {name: name for name in objectives}


def _switches(schedule: Schedule) -> bool:
    """A schedule that decides a stage switch: a fixed one (τ) or one from metrics."""
    return schedule.switch_step() is not None or watches_metrics(schedule)


def watches_metrics(schedule: Schedule) -> bool:
    """A schedule that reads the logged metrics (``observe``: adaptive τ), so it may decide
    during training."""
    return implements(type(schedule), "observe")


def build(
    plugins: Mapping[str, Any],
    knobs: Mapping[str, float],
    max_steps: int,
    objectives: Mapping[str, str] | Iterable[str] | None = None,
) -> ScheduleSet:
    """A ScheduleSet from resolved ``schedules:`` sections (anything with ``.type`` and
    ``.config``, e.g. :class:`spactor.config.Plugin`), keyed by instance name. The
    schedule modules must have been imported (``spactor.plugins.load_plugins``).
    ``objectives``: the configured objectives, name -> type or a list of names (default:
    those the knobs name)."""
    types = objective_types(objectives, knobs)
    names = list(types)
    schedules = {
        name: SCHEDULES.get(plugin.type).factory(
            plugin.config, ScheduleContext(name, dict(knobs), max_steps, names)
        )
        for name, plugin in plugins.items()
    }
    return ScheduleSet(schedules, knobs, types)


# --------------------------------------------------------------------------- config checks


def schedule_field_rule(key: str, name: str, value: Any) -> None:
    """A switch step (``tau``, ``*_tau``) is a step >= 0, or null for never."""
    if value is None or isinstance(value, bool):
        return
    if (name == "tau" or name.endswith("_tau")) and not (is_int(value) and value >= 0):
        fail(key, value, "must be >= 0 (a step), or null for never")


@SCHEDULES.add_section_check
def check_schedules_without_a_check(schedules: Mapping[str, Any], ctx: CheckContext) -> None:
    """A schedule config with no ``check`` of its own still follows the switch-step rule."""
    for name, plugin in schedules.items():
        if not callable(getattr(plugin.config, "check", None)):
            check_fields(f"schedules.{name}", plugin.config, schedule_field_rule)


@SCHEDULES.add_section_check
def check_schedules(schedules: Mapping[str, Any], ctx: CheckContext) -> None:
    """Build the set against the objectives' knobs (cheap, no model): an unknown knob, one
    knob driven twice, two curricula. Skipped while a knob is unknown (the runner checks)."""
    if ctx.knobs is None:
        return
    try:
        built = build(schedules, ctx.knobs, ctx.max_steps if ctx.max_steps is not None else 0,
                      objectives=dict(ctx.objective_types) or ctx.objectives or None)
    except ConfigError:
        raise
    except (ValueError, TypeError, KeyError) as e:
        raise ConfigError(f"schedules: {e}") from None
    check_stage_contracts(built, ctx)


def check_stage_contracts(schedules: ScheduleSet, ctx: CheckContext) -> None:
    """Each stage's objectives, in config order, against their declared batch fields
    (``spactor.contract``): a stage that runs ``rtd`` without the ``mlm_mask`` that provides
    its positions is refused before any work. Stages after the first are checked when the
    run can reach them (a written-out curriculum, a switch step, an adaptive decision).
    Skipped while an objective's class cannot be told without building it."""
    classes = {name: objective_class(kind) for name, kind in ctx.objective_types.items()}
    if not classes or any(cls is None for cls in classes.values()):
        return
    stages = schedules.stages
    explicit = any(s is stages for s in schedules.schedules.values())
    for stage in range(1, stages.num_stages + 1):
        reachable = stage == 1 or explicit or stages.decided_end(stage - 1) is not None \
            or stages.decides_later(stage - 1)
        if not reachable:
            break
        names = stages.active_in(stage, classes)
        try:
            check_contract([(name, classes[name]) for name in names])  # type: ignore[misc]
        except ConfigError as e:
            if not explicit and stage == 1:  # every objective: the stage says nothing more
                raise
            raise ConfigError(f"{e} (stage {stage} runs {', '.join(names)})") from None
