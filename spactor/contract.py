"""The step contract: which batch fields each objective reads and writes, checked before a run.

Objectives exchange one dict of tensors. Each objective class declares the fields it
reads (``REQUIRES``) and writes (``PROVIDES``) at its first role — ``transform``,
``modify`` or ``loss``, in that order of preference — and the runner calls the roles in
a fixed order: every ``transform`` in config order, then every ``modify``, then every
``loss``. :func:`check_contract` replays that order on the declarations alone, so an
objective that needs a field nothing before it provides, or a transform that rewrites a
field another objective already derived fields from, is a one-line config error naming
the objectives and the field, before anything is built. No objective is named here: what
could provide a missing field is looked up in the registry.

The core imports no plugin package: the classes come from the factories' return
annotations (:func:`objective_class`), and a class is an objective class by shape
(``KNOBS``, ``REQUIRES``, ``PROVIDES``), not by import.
"""

from __future__ import annotations

import functools

from collections.abc import Sequence

from spactor.config import ConfigError
from spactor.registry import OBJECTIVES, factory_class

# What the runner puts in every batch: the raw chunk, and the encoder input that is that
# chunk until a transform rewrites it.
RAW_FIELDS = ("original", "encoder_input")
# Per-row seeds the training step adds before the modifies for noise drawn in the forward;
# absent in evaluation, so an objective may read them only where present.
RUNNER_FIELDS = ("noise_seed",)
ROLES = ("transform", "modify", "loss")  # the order the runner calls them in
_DECLARATIONS = ("KNOBS", "REQUIRES", "PROVIDES")


def objective_class(kind: str) -> type | None:
    """The objective class the factory registered as ``kind`` returns (from its return
    annotation), or None when that cannot be told without calling it."""
    try:
        cls = factory_class(OBJECTIVES.get(kind))
    except Exception:  # noqa: BLE001 — an unknown name: the config check reports it
        return None
    if cls is not None and all(isinstance(getattr(cls, d, None), tuple) for d in _DECLARATIONS):
        return cls
    return None


@functools.cache  # a class's methods do not change; asked on every multi-rank step
def implements(cls: type, role: str) -> bool:
    """Whether ``cls`` does something in ``role``: a class below the root of its hierarchy
    (the base's no-op) defines the method. The one definition of "does this plugin
    implement X" (objectives' transform/modify/loss, schedules' observe)."""
    defining = [klass for klass in cls.__mro__ if role in vars(klass)]
    return len(defining) > 1


def first_role(cls: type) -> str | None:
    """The role at which the runner first calls ``cls`` (where its declarations apply)."""
    return next((role for role in ROLES if implements(cls, role)), None)


def providers(field: str) -> list[str]:
    """The registered objective types whose class declares it provides ``field``."""
    found = []
    for entry in OBJECTIVES:
        cls = objective_class(entry.name)
        if cls is not None and field in cls.PROVIDES:  # type: ignore[attr-defined]
            found.append(entry.name)
    return found


def check_contract(objectives: Sequence[tuple[str, type]]) -> None:
    """Check ``(name, class)`` pairs, in config order, against the runner's call order.

    Raises a one-line :class:`ConfigError` for the first objective that

    * requires a field that neither the raw batch nor an objective called before it
      provides, naming the registered objectives that could; or
    * rewrites a field (in a transform or a modify) that an earlier objective read and
      derived fields from that the rewriter does not read itself: those fields would
      describe an input that is gone (MLM masks chosen before span corruption rewrote
      the encoder input)."""
    by_role = {role: [(name, cls) for name, cls in objectives if first_role(cls) == role] for role in ROLES}
    provided = set(RAW_FIELDS)
    readers: dict[str, list[tuple[str, type, str]]] = {}  # field -> who read it: (name, class, role)
    for role in ROLES:
        for name, cls in by_role[role]:
            requires: tuple[str, ...] = cls.REQUIRES  # type: ignore[attr-defined]
            provides: tuple[str, ...] = cls.PROVIDES  # type: ignore[attr-defined]
            for field in requires:
                if field not in provided:
                    raise ConfigError(f"objectives.{name}: {_missing(field, name)}")
            if role != "loss":  # a loss writes nothing another objective reads
                for field in provides:
                    _check_rewrite(name, role, field, requires, readers.get(field, []))
            for field in requires:
                readers.setdefault(field, []).append((name, cls, role))
            provided.update(provides)


def _missing(field: str, name: str) -> str:
    could = providers(field)
    if not could:
        return f"needs '{field}', which no objective before it provides (no registered objective provides it)"
    listed = ", ".join(could)
    verb = "provides" if len(could) == 1 else "provide"
    return f"needs '{field}', which no objective before it provides ({listed} {verb} it)"


def _check_rewrite(
    name: str, role: str, field: str, requires: tuple[str, ...], earlier: list[tuple[str, type, str]]
) -> None:
    for reader, cls, reader_role in earlier:
        if reader == name:
            continue
        derived = [f for f in cls.PROVIDES if f != field]  # type: ignore[attr-defined]
        if derived and not any(f in requires for f in derived):
            # Config order decides only among objectives of the same role.
            fix = f"; put {name} before {reader}" if reader_role == role else ""
            raise ConfigError(
                f"objectives.{name}: rewrites '{field}' after {reader} read it, so {reader}'s "
                f"{', '.join(repr(f) for f in derived)} would describe an input that is gone{fix}"
            )
