"""Name-keyed plugin registries.

One registry per plugin kind. An entry is a name, a config dataclass and a factory;
configs select entries by name (``type: two_stage``), never by import path. Third-party
packages add entries through the ``spactor.plugins`` entry-point group: each entry point
names a module (or callable) that registers its plugins when imported/called.
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib import metadata
from typing import Any, Generic, TypeVar

ENTRY_POINT_GROUP = "spactor.plugins"

T = TypeVar("T")


@dataclass(frozen=True)
class Entry(Generic[T]):
    name: str
    config_cls: type
    factory: Callable[..., T]
    help: str = ""
    # What the runner's tools read about the entry, where its kind has one (an
    # architecture's ``spactor.architectures.base.ArchitectureSpec``); None: the default.
    spec: Any = None


class RegistryError(KeyError):
    def __str__(self) -> str:  # KeyError quotes its message; we want plain text
        return str(self.args[0])


class Registry(Generic[T]):
    """A name → (config dataclass, factory) table for one plugin kind."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Entry[T]] = {}
        self._section_checks: list[Callable[..., None]] = []

    def register(
        self, name: str, config_cls: type, help: str = "", spec: Any = None
    ) -> Callable[[Callable[..., T]], Callable[..., T]]:
        if not dataclasses.is_dataclass(config_cls):
            raise TypeError(f"{self.kind} '{name}': config must be a dataclass, got {config_cls!r}")

        def decorator(factory: Callable[..., T]) -> Callable[..., T]:
            if name in self._entries and self._entries[name].factory is not factory:
                raise RegistryError(f"{self.kind} '{name}' is already registered")
            doc = help or (factory.__doc__ or "").strip().splitlines()[0:1]
            self._entries[name] = Entry(name, config_cls, factory, doc if isinstance(doc, str) else "".join(doc), spec)
            return factory

        return decorator

    def add_section_check(self, check: Callable[..., None]) -> Callable[..., None]:
        """Install a rule about this kind's section as a whole, ``check(plugins, ctx)``:
        ``plugins`` maps instance names to resolved plugins (``.type``, ``.config``), ``ctx``
        is a ``spactor.checks.CheckContext``. The plugin package that defines the rule
        installs it; ``spactor.validation`` runs it after every instance's own check."""
        if check not in self._section_checks:
            self._section_checks.append(check)
        return check

    def section_checks(self) -> list[Callable[..., None]]:
        return list(self._section_checks)

    def get(self, name: str) -> Entry[T]:
        try:
            return self._entries[name]
        except KeyError:
            raise RegistryError(unknown_name_message(self.kind, name, self.names())) from None

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[Entry[T]]:
        return iter(sorted(self._entries.values(), key=lambda e: e.name))


def factory_class(entry: Entry[Any]) -> type | None:
    """The class ``entry``'s factory is annotated to return (``-> SpanCorruption``), or
    None when the annotation is missing or cannot be resolved: what a check can learn of
    a plugin (its ``KNOBS``, whether it has a loss) without building it."""
    try:
        cls = typing.get_type_hints(entry.factory).get("return")
    except Exception:  # noqa: BLE001 — unresolvable annotations
        return None
    return cls if isinstance(cls, type) else None


def closest(name: str, candidates: list[str]) -> str | None:
    match = difflib.get_close_matches(name, candidates, n=1, cutoff=0.5)
    return match[0] if match else None


def unknown_name_message(kind: str, name: str, valid: list[str]) -> str:
    msg = f"unknown {kind} '{name}'; valid: {', '.join(valid) or '(none)'}"
    hint = closest(name, valid)
    return msg + (f"; did you mean '{hint}'?" if hint else "")


OBJECTIVES: Registry[Any] = Registry("objective")
SCHEDULES: Registry[Any] = Registry("schedule")
ARCHITECTURES: Registry[Any] = Registry("architecture")
# Modules an objective builds beside the model from a block of its own config
# (``objectives.rtd.generator: {arch: encoder, ...}``): a registry apart from
# ARCHITECTURES because a generator is built from the model's embedding, not a vocabulary.
GENERATORS: Registry[Any] = Registry("generator")
SOURCES: Registry[Any] = Registry("source")
OPTIMIZERS: Registry[Any] = Registry("optimizer")
LR_SCHEDULES: Registry[Any] = Registry("lr_schedule")
TASKS: Registry[Any] = Registry("task")  # downstream tasks (spactor.tasks)

ALL_REGISTRIES: dict[str, Registry[Any]] = {
    r.kind: r
    for r in (OBJECTIVES, SCHEDULES, ARCHITECTURES, GENERATORS, SOURCES, OPTIMIZERS, LR_SCHEDULES, TASKS)
}

_entry_points_loaded = False


def load_entry_points() -> None:
    """Import every third-party plugin registered under ``spactor.plugins``, once.

    An entry point may name a module (importing it registers its plugins) or a callable
    (called with no arguments).
    """
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        loaded = ep.load()
        if callable(loaded):
            loaded()
