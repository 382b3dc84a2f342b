"""The vocabulary of configuration rules, shared by the core and every plugin.

A plugin's config dataclass validates itself with a method

    def check(self, where: str, ctx: CheckContext) -> None

that raises a one-line :class:`~spactor.config.ConfigError`, ``<key>: <value> — <rule>``
(``where`` is the config path of the section, e.g. ``objectives.span_corruption``). The
same method runs at config time (``spactor.validation``, before any work) and in the
plugin's constructor, so a rule lives in one place and the two cannot drift.
:class:`CheckContext` carries what a rule about several keys needs to know from outside
the section: the encoder length, the model's hidden size, the sentinel budget, the ranks.

A plugin kind may also check its section as a whole (rules between instances: two
schedules driving one knob, no objective with a loss): ``Registry.add_section_check``.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from spactor.config import ConfigError

NUM_SENTINELS = 100  # T5's <extra_id_0..99>; every spactor tokenizer has exactly these


@dataclass(frozen=True)
class ModelShape:
    """The discriminator's dimensions, for plugins sized relative to it (the RTD generator
    and head keep the papers' proportions at every ``model.size``). An architecture config
    describes itself with ``shape() -> ModelShape``; one without it leaves this unknown."""

    size: str | None  # the size preset's name (``model.size``); None: no preset
    d_model: int
    d_ff: int
    num_layers: int  # the encoder's layers (what a generator's depth is a fraction of)
    num_heads: int
    d_kv: int


@dataclass(frozen=True)
class CheckContext:
    """What a config check may know besides its own section."""

    input_length: int  # data.input_length: the encoder length
    hidden_size: int | None = None  # the discriminator's, when its architecture says (None: unknown)
    model_shape: ModelShape | None = None  # the discriminator's dimensions (None: unknown)
    num_sentinels: int = NUM_SENTINELS
    world_size: int = 1
    max_steps: int | None = None  # trainer.max_steps
    # Every knob path -> its configured value (None: an objective's knobs are unknown
    # until it is built), and the configured objective names in order.
    knobs: Mapping[str, float] | None = None
    objectives: tuple[str, ...] = field(default_factory=tuple)
    # The configured objective names -> their registered types, in config order (what the
    # per-stage batch-field check reads the declared classes from).
    objective_types: Mapping[str, str] = field(default_factory=dict)


@dataclass
class FileCheckContext:
    """What a config's ``check_files(where, ctx)`` may read: checks of files a run will
    load (a frozen generator's checkpoint), made by ``spactor train`` only."""

    resolved: Any  # spactor.config.Resolved
    hidden_size: int | None  # the discriminator's width; None: unknown without building it
    tokenizer: str | None = None  # the SentencePiece model the run will use
    model_shape: ModelShape | None = None  # the discriminator's dimensions (None: unknown)


def check_config(where: str, cfg: Any, ctx: CheckContext) -> None:
    """Run ``cfg.check(where, ctx)`` when the config has one (a plugin without it has no
    rules beyond its types)."""
    check = getattr(cfg, "check", None)
    if callable(check):
        check(where, ctx)


def fail(key: str, value: Any, rule: str) -> typing.NoReturn:
    raise ConfigError(f"{key}: {value!r} — {rule}")


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def positive(key: str, value: Any) -> None:
    if not (is_number(value) and value > 0 and math.isfinite(value)):
        fail(key, value, "must be > 0")


def positive_int(key: str, value: Any) -> None:
    if not (is_int(value) and value > 0):
        fail(key, value, "must be a positive integer")


def at_least(key: str, value: Any, low: int) -> None:
    if not (is_number(value) and value >= low):
        fail(key, value, f"must be >= {low}")


def non_negative(key: str, value: Any) -> None:
    if not (is_number(value) and value >= 0 and math.isfinite(value)):
        fail(key, value, "must be >= 0 (and finite)")


def unit_interval(key: str, value: Any, *, open_low: bool = False, closed_high: bool = False) -> None:
    """[0, 1); with ``open_low`` (0, 1); with ``closed_high`` [0, 1]. NaN fails them all."""
    above_low = value > 0 if open_low else value >= 0
    ok = is_number(value) and above_low and (value <= 1 if closed_high else value < 1)
    if not ok:
        fail(key, value, f"must be in {'(' if open_low else '['}0, 1{']' if closed_high else ')'}")


def one_of(key: str, value: Any, choices: tuple[str, ...] | list[str]) -> None:
    if str(value) not in choices:
        fail(key, value, f"must be one of {', '.join(choices)}")


# A rule by field name: (key, field name, value) -> raise or return.
Rule = Callable[[str, str, Any], None]


def hf_directory(key: str, value: str | None, what: str) -> None:
    """``model.init_from``: ``hf:PATH``, a directory holding a ``config.json``, there before
    any work (its dimensions are compared with the model's when the model is built).
    ``what``: the model family the directory should hold ("T5", "Llama")."""
    if not value:
        return
    import os

    if not value.startswith("hf:"):
        fail(key, value, "must be hf:PATH (a directory written by `spactor export` or save_pretrained)")
    path = os.path.expanduser(value[3:])
    if not os.path.isfile(os.path.join(path, "config.json")):
        fail(key, value, f"no config.json in {path!r}: not a Hugging Face {what} directory")


def check_fields(where: str, cfg: Any, rule: Rule) -> None:
    """Apply ``rule`` to every field of the dataclass ``cfg``."""
    if not dataclasses.is_dataclass(cfg):
        return
    for f in dataclasses.fields(cfg):
        rule(f"{where}.{f.name}", f.name, getattr(cfg, f.name))
