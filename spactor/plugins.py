"""Registers every built-in plugin, then third-party ones from entry points, then
installs the configuration checks (``spactor.validation``: the core's sections, and
every plugin's own check reached through the registries).

The top layers (CLI, runner, tests) call :func:`load_plugins` before looking anything
up; the registries themselves import nothing so that the import direction stays
one-way.
"""

from __future__ import annotations

import importlib

from spactor.config import CONFIG_CHECKS
from spactor.registry import load_entry_points
from spactor.validation import validate

BUILTIN_MODULES = (
    "spactor.architectures.t5_plugin",
    "spactor.architectures.llama_plugin",
    "spactor.architectures.t5gemma_plugin",
    "spactor.architectures.encoder",
    "spactor.architectures.generator",
    "spactor.objectives.span_corruption",
    "spactor.objectives.mlm_mask",
    "spactor.objectives.rtd",
    "spactor.objectives.mlm",
    "spactor.objectives.causal_lm",
    "spactor.objectives.prefix_lm",
    "spactor.objectives.ul2",
    "spactor.schedules.two_stage",
    "spactor.schedules.anneal",
    "spactor.schedules.temperature",
    "spactor.schedules.adaptive",
    "spactor.schedules.curriculum",
    "spactor.data.sources",
    "spactor.data.pydoc_tasks",
    "spactor.data.pydoc_pairs",
    "spactor.train.optim.optimizers",
    "spactor.tasks",
)


def load_plugins() -> None:
    for module in BUILTIN_MODULES:
        importlib.import_module(module)
    load_entry_points()
    if validate not in CONFIG_CHECKS:
        CONFIG_CHECKS.append(validate)
