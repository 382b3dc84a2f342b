"""What a schedule is, the context it is built with, and the set the runner drives.

A schedule is a pure function of the step (and, for adaptive ones, of the metrics the
runner has logged so far) that sets objective knobs by dotted path, e.g.
``objectives.rtd.weight``. Some schedules also decide *when* SpacTor switches from the
hybrid stage (SC + RTD) to stage 2 (plain SC); they say so through ``switch_step``.

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

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from spactor.config import ConfigError
from spactor.registry import SCHEDULES, closest

STAGE_HYBRID = 1  # SC + MLM/RTD (SpacTor stage 1)
STAGE_SC = 2  # plain span corruption after the switch


@dataclass
class ScheduleContext:
    """What a schedule factory gets besides its own config."""

    name: str  # instance key under ``schedules:``, for error messages
    knobs: dict[str, float]  # every valid knob path -> its configured (initial) value
    max_steps: int


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


# --------------------------------------------------------------------------- the set


class ScheduleSet:
    """All configured schedules, merged: the runner's single view of them.

    * ``values(step)``: every driven knob's value for the step about to run;
    * ``stage(step)``: 1 (hybrid) before the earliest ``switch_step`` any schedule
      reports, 2 from it on; 1 throughout when no schedule switches;
    * ``observe`` fans out to every schedule; ``state_dict`` is keyed by instance name.
    """

    def __init__(self, schedules: Mapping[str, Schedule], knobs: Mapping[str, float] | Iterable[str]) -> None:
        self.schedules: dict[str, Schedule] = dict(schedules)
        self.valid_knobs: list[str] = sorted(knobs)
        self.owners: dict[str, str] = self._check(self.schedules, set(self.valid_knobs))

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

    def switch_step(self) -> int | None:
        """The earliest switch step any schedule reports (None: no switch known yet)."""
        steps = [s for s in (sch.switch_step() for sch in self.schedules.values()) if s is not None]
        return min(steps) if steps else None

    def stage(self, step: int) -> int:
        switch = self.switch_step()
        return STAGE_SC if switch is not None and step >= switch else STAGE_HYBRID

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


def build(plugins: Mapping[str, Any], knobs: Mapping[str, float], max_steps: int) -> ScheduleSet:
    """A ScheduleSet from resolved ``schedules:`` sections (anything with ``.type`` and
    ``.config``, e.g. :class:`spactor.config.Plugin`), keyed by instance name. The
    schedule modules must have been imported (``spactor.plugins.load_plugins``)."""
    schedules = {
        name: SCHEDULES.get(plugin.type).factory(plugin.config, ScheduleContext(name, dict(knobs), max_steps))
        for name, plugin in plugins.items()
    }
    return ScheduleSet(schedules, knobs)
