"""Downstream tasks as plugins (``spactor.registry.TASKS``): ``jsonl`` (your files;
importing this package registers it), ``pydoc_module``, ``pydoc_name`` and
``pydoc_cloze`` (built in, from the built-in corpus's held-out docstrings:
``spactor.data.pydoc_tasks``, registered by ``spactor.plugins.load_plugins``)."""

from __future__ import annotations

from typing import Any

from spactor.config import check_keys, typed
from spactor.registry import TASKS
from spactor.tasks import jsonl, minimal_pairs  # noqa: F401  (register)
from spactor.tasks.base import Example, Task

__all__ = ["Example", "Task", "build_task"]


def build_task(name: str, options: dict[str, Any] | None = None) -> Task:
    """The task registered as ``name``, its config built from ``options`` (validated:
    unknown keys and bad values raise ``ConfigError``; bad content ``ValueError``)."""
    entry = TASKS.get(name)
    check_keys(options or {}, entry.config_cls, f"task {name}")
    return entry.factory(typed(entry.config_cls, options or {}, f"task {name}"))
