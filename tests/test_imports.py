"""The import structure of ``spactor/``, read from the source: no cycles, and imports go one
way, CLI → runners → plugin loader → objectives/schedules/architectures → data → core.

Every ``import`` statement counts wherever it is (module level, inside a function, under
``TYPE_CHECKING``), and so does ``importlib.import_module``/``__import__`` with a literal
name: a cycle hidden inside a function is still a cycle. A package's ``__init__`` importing
its own submodules (to register their plugins) is not counted, as importing a submodule
already runs its package's ``__init__``.

The core (``registry``, ``config``, ``checks``, ``validation``, the task protocol
``tasks``...) imports no plugin package, not even a plugin's ``base`` module: each plugin's
config checks itself (``spactor.checks``) and the core reaches it through the registries.
This is stricter than ``imports_check.py`` in the shared tools, which the same rules keep
silent.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Lower ranks sit below higher ones; a module may import its own rank or a lower one.
# The plugin packages (rank 2) are peers; ``data`` sits below them because batches flow
# from data into the objectives, never back.
PLUGIN_PACKAGES = ("objectives", "schedules", "architectures")
# What runs the plugins: training, downstream evaluation, the tools around runs (peers).
RUNNER_PACKAGES = ("train", "evaluation", "tools")
RANK_NAMES = {0: "core", 1: "data", 2: "plugins", 3: "plugin loader", 4: "runners", 5: "cli"}



def module_names(root: Path, package: str) -> dict[str, Path]:
    out = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def imported_names(path: Path, module: str) -> set[str]:
    """Dotted names imported anywhere in ``path``, relative imports made absolute;
    ``from a import b`` gives ``a.b`` (a module, or the name b in module a)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            names.update(f"{base}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if called in ("import_module", "__import__") and isinstance(node.args[0].value, str):
                names.add(node.args[0].value)
    return names


def import_graph(root: Path, package: str) -> dict[str, set[str]]:
    """module → the modules of ``package`` it imports."""
    modules = module_names(root, package)
    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        targets: set[str] = set()
        for name in imported_names(path, module):
            while name and name not in modules:  # a.b.NAME → module a.b
                name = name.rpartition(".")[0]
            if name:
                targets.add(name)
        is_package = path.name == "__init__.py"
        graph[module] = {
            t for t in targets if t != module and not (is_package and t.startswith(module + "."))
        }
    return graph


def rank(module: str) -> int:
    parts = module.split(".")
    if len(parts) == 1:
        return 0
    top = parts[1]
    if top in ("cli", "__main__"):
        return 5
    if top in RUNNER_PACKAGES:
        return 4
    if top == "plugins":
        return 3
    if top in PLUGIN_PACKAGES:
        return 2
    if top == "data":
        return 1
    return 0


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def layering_breaks(graph: dict[str, set[str]]) -> set[tuple[str, str]]:
    return {(a, b) for a, targets in graph.items() for b in targets if rank(b) > rank(a)}


def describe(edge: tuple[str, str]) -> str:
    a, b = edge
    return f"{a} ({RANK_NAMES[rank(a)]}) imports {b} ({RANK_NAMES[rank(b)]})"


@pytest.fixture(scope="module")
def spactor_graph() -> dict[str, set[str]]:
    return import_graph(ROOT, "spactor")


def test_spactor_has_no_import_cycles(spactor_graph):
    found = cycles(spactor_graph)
    assert not found, "import cycles: " + "; ".join(" <-> ".join(c) for c in found)


def test_spactor_imports_go_one_way(spactor_graph):
    """No exceptions: the core (registry, config, validation) imports no plugin package,
    and no plugin imports the runners or the CLI."""
    breaks = layering_breaks(spactor_graph)
    assert not breaks, "imports against the layering:\n" + "\n".join(map(describe, sorted(breaks)))


def test_the_check_sees_function_level_and_literal_dynamic_imports(tmp_path):
    """The check itself, on a small package: a cycle closed by an import inside a function,
    one closed by ``importlib.import_module``, a relative import, and a break of the layering."""
    pkg = tmp_path / "spactor"
    (pkg / "train").mkdir(parents=True)
    (pkg / "data").mkdir()
    files = {
        "__init__.py": "",
        "config.py": "from spactor.registry import THINGS\n",
        "registry.py": "def f():\n    from spactor import config\n",
        "train/__init__.py": "from . import loop  # registration, not a cycle\n",
        "train/loop.py": "from .flops import count\n",
        "train/flops.py": "import importlib\n\ndef count():\n    importlib.import_module('spactor.train.loop')\n",
        "data/__init__.py": "",
        "data/tokenizer.py": "from spactor.train import flops\n",
    }
    for name, text in files.items():
        (pkg / name).write_text(text)
    graph = import_graph(tmp_path, "spactor")
    assert sorted(cycles(graph)) == [
        ["spactor.config", "spactor.registry"],
        ["spactor.train.flops", "spactor.train.loop"],
    ]
    assert layering_breaks(graph) == {("spactor.data.tokenizer", "spactor.train.flops")}


def test_objectives_reach_architectures_only_through_the_protocol(spactor_graph):
    """``spactor.architectures.base`` says objectives talk to a model (and RTD to its
    generator, through ``GENERATORS``' ``GeneratorSpec``) only through it: no objective
    imports a concrete architecture module (issue 24, 6b: rtd imported generator.py)."""
    concrete = {
        (a, b)
        for a, targets in spactor_graph.items()
        if a.startswith("spactor.objectives.")
        for b in targets
        if b.startswith("spactor.architectures.") and b != "spactor.architectures.base"
    }
    assert not concrete, "objectives importing a concrete architecture: " + "; ".join(
        f"{a} imports {b}" for a, b in sorted(concrete)
    )
