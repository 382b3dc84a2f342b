"""Plugins from local files and modules, named by a recipe or the command line.

Installed packages announce their plugins through the ``spactor.plugins`` entry points
(:func:`spactor.registry.load_entry_points`); a researcher iterating on an objective or
an architecture names the file instead, with no ``pip install`` after each edit::

    plugins: [my_arch.py]            # in a recipe (a list), or
    spactor train my.yaml plugins=[my_arch.py,lab.objectives]

An entry ending in ``.py`` (or holding a path separator) is a file, found relative to the
working directory, else to the folder of the recipe named on the command line; any other
entry is a module name, imported with the working directory on ``sys.path``. Each is
imported once per process, before the config is resolved, so the registrations it makes
(``@ARCHITECTURES.register(...)``) are there when ``model.arch`` is looked up. Files are
written back as absolute paths: the run's saved ``config.yaml`` imports the same files on
a resume, an evaluation or an export. A file or module that cannot be imported is one
line naming it (exit 2).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

KEY = "plugins"
_LOADED: dict[str, ModuleType] = {}  # resolved file path or module name -> the module


class PluginImportError(ValueError):
    """A local plugin that cannot be found or imported (``spactor.config`` reports it
    as a one-line ``ConfigError``, exit 2)."""


def is_file_entry(entry: str) -> bool:
    return entry.endswith(".py") or "/" in entry or os.sep in entry


def find_file(entry: str, recipe: str | None) -> Path:
    """The file ``entry`` names: absolute, or relative to the working directory, else to
    the folder of ``recipe`` (a recipe file's path)."""
    path = Path(entry).expanduser()
    candidates = [path] if path.is_absolute() else [Path.cwd() / path]
    if not path.is_absolute() and recipe is not None and Path(recipe).suffix in (".yaml", ".yml"):
        candidates.append(Path(recipe).expanduser().resolve().parent / path)
    for candidate in candidates:
        if candidate.is_file():
            return candidate.resolve()
    looked = " or ".join(str(c) for c in candidates)
    raise PluginImportError(f"{KEY}: '{entry}' does not exist (looked for {looked})")


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


def import_file(path: Path, entry: str) -> ModuleType:
    key = str(path)
    if key in _LOADED:
        return _LOADED[key]
    # A name of its own per path: two plugin files may share a stem.
    name = f"spactor_local_plugin_{path.stem}_{hashlib.sha1(key.encode()).hexdigest()[:8]}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise PluginImportError(f"{KEY}: cannot import '{entry}' ({path}): not a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as e:  # noqa: BLE001 — any error in the user's file is one line naming it
        sys.modules.pop(name, None)
        raise PluginImportError(f"{KEY}: cannot import '{entry}' ({path}): {_first_line(e)}") from None
    _LOADED[key] = module
    return module


def import_module(entry: str) -> ModuleType:
    if entry in _LOADED:
        return _LOADED[entry]
    cwd = str(Path.cwd())
    added = cwd not in sys.path
    if added:
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(entry)
    except Exception as e:  # noqa: BLE001
        raise PluginImportError(f"{KEY}: cannot import module '{entry}': {_first_line(e)}") from None
    finally:
        if added:
            sys.path.remove(cwd)
    _LOADED[entry] = module
    return module


def load_local_plugins(entries: object, recipe: str | None = None) -> list[str]:
    """Import every entry of a config's ``plugins`` (a list, or one string); return the
    list as the config keeps it (files as absolute paths)."""
    if entries is None:
        return []
    if isinstance(entries, str):
        entries = [entries]
    if not isinstance(entries, (list, tuple)) or not all(isinstance(e, str) for e in entries):
        raise PluginImportError(f"{KEY}: must be a list of files or module names, got {entries!r}")
    kept: list[str] = []
    for entry in entries:
        if is_file_entry(entry):
            path = find_file(entry, recipe)
            import_file(path, entry)
            kept.append(str(path))
        else:
            import_module(entry)
            kept.append(entry)
    return kept
