"""Configuration: recipes (YAML) + ``key=value`` overrides → validated dataclasses.

The top level is an OmegaConf structured config (:class:`TrainConfig`). Plugin sections
(``model``, ``objectives.*``, ``schedules.*``, ``optimizer``, ``lr_schedule``) are
selected by name through the registries and validated against that plugin's own config
dataclass. A plugin's config may hold a plugin section of its own (:func:`plugin_block`,
``objectives.rtd.generator: {arch: encoder, ...}``), resolved the same way. Every key is
checked before any work starts; an unknown key is reported in one line with the valid
keys at its level and the closest match, a key a plugin has moved (``MOVED_KEYS``) with
its new place.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib.resources
import inspect
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from spactor.errors import UsageError
from spactor.local_plugins import KEY as PLUGINS_KEY
from spactor.local_plugins import PluginImportError, load_local_plugins
from spactor.registry import (
    ARCHITECTURES,
    LR_SCHEDULES,
    OBJECTIVES,
    OPTIMIZERS,
    SCHEDULES,
    Registry,
    RegistryError,
    closest,
)


class ConfigError(ValueError):
    """A user-facing configuration problem; the CLI prints it as one line, exit code 2."""


def _if_tiny(size: Any, tiny_value: Any, other_value: Any) -> Any:
    """``${if_tiny:${model.size},16,2048}``: a recipe keeps the paper's value for real sizes
    and a CPU-sized one for ``model.size=tiny`` (smoke runs and tests)."""
    return tiny_value if str(size) == "tiny" else other_value


def _register_resolver(name: str, fn: Any) -> None:
    # omegaconf 2.4 renamed register_new_resolver to register_resolver (2.3's
    # register_resolver is the legacy string-argument API, so tell them apart).
    if OmegaConf.has_resolver(name):
        return
    if "use_cache" in inspect.signature(OmegaConf.register_resolver).parameters:
        OmegaConf.register_resolver(name, fn)
    else:
        OmegaConf.register_new_resolver(name, fn)


_register_resolver("if_tiny", _if_tiny)


# --------------------------------------------------------------------------- schema


@dataclass
class RunConfig:
    dir: str | None = None  # default: a new folder under ./runs/
    fresh: bool = False  # start over even if run.dir holds checkpoints
    tensorboard: bool = False  # also write TensorBoard events to run.dir/tensorboard (needs `tensorboard`)
    plot: bool = False  # at the end, draw the run's loss and throughput curves to run.dir/curves.png


@dataclass
class DataConfig:
    source: str = "builtin"  # a registered source: builtin | text | jsonl | ...
    paths: list[str] = field(default_factory=list)  # files/globs for file sources
    text_field: str = "text"  # JSONL field holding the document
    source_options: dict[str, Any] = field(default_factory=dict)  # extra fields of a third-party source
    tokenizer: str | None = None  # a SentencePiece .model; None → trained on the built-in corpus
    tokenizer_vocab_size: int = 8000  # pieces of the tokenizer trained when none is given
    input_length: int = 512  # encoder length; the raw chunk length follows T5's rule
    validation_fraction: float = 0.01  # documents held out for validation
    num_workers: int | None = None  # loader processes per rank; None: 2 on CUDA, 0 elsewhere
    backend: str = "default"  # default | fairseq2 (optional extra spactor[fairseq2]; same batches)
    document_separator: str = "eos"  # eos | none: what goes between packed documents (T5: none)


@dataclass
class TrainerConfig:
    max_steps: int = 1000
    batch_size: int = 8  # global batch, in sequences, per optimizer step
    grad_accum_steps: int = 1
    seed: int = 0
    clip_grad_norm: float | None = 1.0
    log_every: int = 1
    eval_every: int = 0  # 0 = only at the end
    eval_batches: int = 4
    # Evaluation passes beside the validation losses (spactor.train.eval_passes): "clean",
    # the last stage's objectives on the input without the stage-1 modifiers. [] = none.
    eval_passes: list[str] = field(default_factory=lambda: ["clean"])
    checkpoint_every: int = 0  # 0 = only at the end
    keep_checkpoints: int = 2
    nonfinite: str = "stop"  # a NaN/inf loss or gradient: skip (drop the update) | stop (checkpoint, exit 1)
    max_consecutive_skips: int = 10  # with nonfinite=skip: this many bad steps in a row stop the run
    downstream_every: int = 0  # fine-tune + score downstream_tasks every N steps on rank 0 (0 = off)
    downstream_tasks: list[str] = field(default_factory=lambda: ["pydoc_module"])  # registered tasks


EVAL_PASSES = ("clean",)  # the passes trainer.eval_passes may name (spactor.train.eval_passes)
COMPILE_MODES = ("none", "blocks", "model")


def compile_mode(value: Any) -> str:
    """``runtime.compile`` as one of :data:`COMPILE_MODES` (a bool: false = none, true =
    blocks, as before the value could name what it compiles); anything else is returned
    as given for the config check to refuse."""
    if value is None or value is False:
        return "none"
    if value is True:
        return "blocks"
    text = str(value).lower()
    return {"false": "none", "true": "blocks"}.get(text, text)


@dataclass
class RuntimeConfig:
    device: str = "auto"  # cpu | cuda | auto
    precision: str = "auto"  # fp32 | bf16 | auto (bf16 on CUDA, fp32 on CPU)
    progress: bool = True  # progress bar on stderr
    fsdp: bool | None = None  # FSDP2 (fully_shard); None: on when torchrun starts more than one rank
    # false | blocks (or true): torch.compile each transformer block | model: the whole
    # training forward (every objective's modify and loss with the model) as one graph
    compile: Any = False
    activation_checkpointing: str = "none"  # none | full | selective (per block)
    count_flops: bool = True  # fvcore dry run at start-up: flops_per_step, flops_cum, flops_normalized, mfu
    peak_tflops: float | None = None  # per-device peak for MFU; None: looked up from the GPU's name
    memory_check: bool = True  # estimate the peak memory at start-up: refuse on CPU, warn on CUDA


@dataclass
class TrainConfig:
    run: RunConfig = field(default_factory=RunConfig)
    model: dict[str, Any] = field(default_factory=lambda: {"arch": "t5"})
    data: DataConfig = field(default_factory=DataConfig)
    objectives: dict[str, Any] = field(default_factory=dict)
    schedules: dict[str, Any] = field(default_factory=dict)
    optimizer: dict[str, Any] = field(default_factory=lambda: {"type": "adafactor"})
    lr_schedule: dict[str, Any] = field(default_factory=lambda: {"type": "rsqrt"})
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    # Local plugin files / modules imported before the rest is resolved (spactor.local_plugins).
    plugins: list[str] = field(default_factory=list)


# Where each plugin section finds its registry and the key that selects the entry.
PLUGIN_SECTIONS: dict[str, tuple[Registry[Any], str]] = {
    "model": (ARCHITECTURES, "arch"),
    "optimizer": (OPTIMIZERS, "type"),
    "lr_schedule": (LR_SCHEDULES, "type"),
}
NAMED_PLUGIN_SECTIONS: dict[str, Registry[Any]] = {"objectives": OBJECTIVES, "schedules": SCHEDULES}


@dataclass
class Plugin:
    """One resolved plugin section: the registry entry and its typed config."""

    name: str  # the key it was configured under (objectives/schedules) or the entry name
    type: str
    config: Any


# Field metadata key of a config field that is a plugin section of its own.
PLUGIN_BLOCK = "spactor.plugin_block"


@dataclass(frozen=True)
class Block:
    """Where a nested plugin section finds its entry: ``registry[block[selector]]``."""

    registry: Registry[Any]
    selector: str
    default: str


def plugin_block(registry: Registry[Any], selector: str, default: str) -> Any:
    """A plugin config's field that is itself a plugin section, e.g. ``objectives.rtd.generator:
    {arch: encoder, layers: 4}``: ``selector`` names the entry of ``registry``, the other keys
    are that entry's config fields. It is resolved as ``model:`` is (:func:`resolve_plugin`)
    into a :class:`Plugin` when the config holding it is; until then it holds the mapping.
    The annotation of such a field is ``Any``: its schema depends on the selector."""
    return field(
        default_factory=lambda: {selector: default},
        metadata={PLUGIN_BLOCK: Block(registry, selector, default)},
    )


def plugin_blocks(config: Any) -> list[tuple[dataclasses.Field[Any], Block]]:
    if not dataclasses.is_dataclass(config):
        return []
    return [(f, f.metadata[PLUGIN_BLOCK]) for f in dataclasses.fields(config) if PLUGIN_BLOCK in f.metadata]


@dataclass
class Resolved:
    """A validated config: the top-level dataclass plus typed plugin configs."""

    cfg: TrainConfig
    model: Plugin
    objectives: dict[str, Plugin]
    schedules: dict[str, Plugin]
    optimizer: Plugin
    lr_schedule: Plugin
    recipe: str | None = None

    def to_yaml(self) -> str:
        return OmegaConf.to_yaml(OmegaConf.create(as_dict(self)))


# --------------------------------------------------------------------------- loading

QUICKSTART = "quickstart"  # the recipe a command runs when none is named

# Semantic checks of a resolved config (``spactor.validation.validate``: the core's
# sections, then each plugin's own ``check`` through the registries). That module imports
# this one, so ``spactor.plugins.load_plugins`` installs it here rather than this module
# importing it; :func:`resolve` runs every installed check.
CONFIG_CHECKS: list[Callable[[Resolved], None]] = []


def split_recipe(args: Sequence[str]) -> tuple[str | None, list[str]]:
    """``[RECIPE|PATH] [key=value ...]``: the first argument without '=' is the recipe."""
    recipe: str | None = None
    overrides: list[str] = []
    for arg in args:
        if "=" in arg:
            overrides.append(arg)
        elif recipe is None:
            recipe = arg
        else:
            raise UsageError(f"expected key=value, got '{arg}' (the recipe is already '{recipe}')")
    return recipe, overrides


def _recipes_root() -> Any:
    """The recipes: the installed ``spactor.configs``, or, when spactor runs from a checkout
    on ``PYTHONPATH`` without being installed (``benchmarks/device_check.sh`` on a device
    machine), the checkout's ``configs/``, which only installing maps to ``spactor.configs``."""
    try:
        return importlib.resources.files("spactor.configs")
    except ModuleNotFoundError:
        return Path(__file__).resolve().parent.parent / "configs"


def recipe_names() -> list[str]:
    root = _recipes_root()
    return sorted(p.name[:-5] for p in root.iterdir() if p.name.endswith(".yaml"))


def recipe_path(recipe: str) -> Path:
    """A recipe name (``sc``) or a path to a YAML file."""
    path = Path(recipe)
    if path.suffix in (".yaml", ".yml") or path.is_file():
        if not path.is_file():
            raise ConfigError(f"config file '{recipe}' does not exist")
        return path
    root = _recipes_root()
    candidate = root / f"{recipe}.yaml"
    if not candidate.is_file():
        names = recipe_names()
        hint = closest(recipe, names)
        raise ConfigError(
            f"unknown recipe '{recipe}'; recipes: {', '.join(names)}"
            + (f"; did you mean '{hint}'?" if hint else "")
            + " (or pass a path to a YAML file)"
        )
    return Path(str(candidate))


def load_config(
    recipe: str | None = None, overrides: list[str] | tuple[str, ...] = (), *, saved_run: bool = False
) -> Resolved:
    """Load a recipe (or the built-in defaults), apply overrides, validate everything.
    ``saved_run``: ``recipe`` is a run directory's ``config.yaml``, perhaps written by an
    older spactor: keys moved since are read at their new place (:func:`upgrade_saved`);
    the overrides are the user's and get no such translation."""
    raw: Any = load_recipe(recipe) if recipe is not None else OmegaConf.create({})
    if saved_run:
        raw = OmegaConf.create(upgrade_saved(OmegaConf.to_container(raw)))  # type: ignore[arg-type]
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not key=value")
        key, value = item.split("=", 1)
        if "\n" in value or "\r" in value:  # OmegaConf would fold it into a space, unseen
            raise ConfigError(f"{key.strip()}: {value!r} — the value contains a line break; "
                              "a value must be one line")
    recipe_model = OmegaConf.to_container(raw, resolve=False).get("model") if isinstance(raw, DictConfig) else None
    try:
        raw = OmegaConf.merge(raw, OmegaConf.from_dotlist(list(overrides)))
    except OmegaConfBaseException as e:
        raise ConfigError(f"bad override: {e}") from None
    try:
        data = OmegaConf.to_container(raw, resolve=True) or {}
    except OmegaConfBaseException as e:  # a ${...} that names no key, or a cycle
        where = f"{e.full_key}: " if getattr(e, "full_key", None) else ""
        raise ConfigError(f"{where}{str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ConfigError("a recipe must be a mapping of sections (run, model, data, ...)")
    _single_path_as_list(data)
    if data.get(PLUGINS_KEY) is not None:  # before anything is looked up in a registry
        try:
            data[PLUGINS_KEY] = load_local_plugins(data[PLUGINS_KEY], recipe)
        except PluginImportError as e:
            raise ConfigError(str(e)) from None
    _drop_keys_of_another_arch(data, recipe_model, overrides)
    return resolve(data, recipe=recipe)


def _drop_keys_of_another_arch(data: dict[str, Any], recipe_model: Any, overrides: Sequence[str]) -> None:
    """``model.arch=X`` on the command line over a recipe written for another
    architecture: the recipe's model keys that X's config does not have are dropped, with
    a one-line notice (keys given on the command line are still checked)."""
    model = data.get("model")
    recipe_model = recipe_model if isinstance(recipe_model, dict) else {}
    if not isinstance(model, dict) or not any(o.split("=", 1)[0].strip() == "model.arch" for o in overrides):
        return
    default_arch = TrainConfig().model["arch"]
    old, new = str(recipe_model.get("arch", default_arch)), str(model.get("arch", default_arch))
    if old == new or new not in ARCHITECTURES:
        return  # the same architecture, or an unknown one: resolve() reports it
    fields = {f.name for f in dataclasses.fields(ARCHITECTURES.get(new).config_cls)}
    given = {o.split("=", 1)[0].strip()[len("model."):] for o in overrides if o.startswith("model.")}
    dropped = [k for k in recipe_model if k != "arch" and k not in fields and k not in given and k in model]
    for key in dropped:
        del model[key]
    if dropped:
        print(f"note: model.arch={new} over a recipe for '{old}': dropped model."
              + ", model.".join(dropped) + f" ({new} has no such keys)", file=sys.stderr, flush=True)


def _single_path_as_list(data: dict[str, Any]) -> None:
    """``data.paths=corpus.txt`` (no brackets) means the list of that one path."""
    section = data.get("data")
    if isinstance(section, dict) and isinstance(section.get("paths"), str):
        section["paths"] = [section["paths"]]


def load_recipe(recipe: str, _seen: tuple[str, ...] = ()) -> Any:
    """A recipe's YAML; a top-level ``base: <recipe>`` is loaded first and this recipe is
    merged over it, so a variant states only what it changes. A relative ``base`` path is
    found beside the recipe that names it, not in the working directory. A child listing
    all of its base's objectives runs them in its own order (:func:`_child_objective_order`)."""
    path = recipe_path(recipe)
    key = str(path.resolve())
    if key in _seen:
        raise ConfigError(f"recipe '{recipe}' inherits from itself ({' -> '.join(_seen + (key,))})")
    try:
        raw = OmegaConf.load(path)
    except (OmegaConfBaseException, yaml.YAMLError, UnicodeDecodeError, OSError) as e:
        raise ConfigError(yaml_error_message(path, e)) from None
    if not isinstance(raw, DictConfig):
        raise ConfigError(f"recipe '{recipe}' must be a mapping of sections (run, model, data, ...)")
    base = raw.pop("base", None)
    if base is None:
        return raw
    parent = load_recipe(base_path(str(base), recipe, path), _seen + (key,))
    merged = OmegaConf.merge(parent, raw)
    _child_objective_order(merged, parent, raw, recipe, str(base))
    return merged


def _child_objective_order(merged: DictConfig, parent: DictConfig, child: DictConfig, recipe: str,
                           base: str) -> None:
    """Objectives run in the order a recipe lists them, but ``OmegaConf.merge`` keeps the
    base's key order (and appends new keys), so a child's reordering would be dropped
    silently. A child that lists every objective of its base gets its own order (checked
    later like any recipe's); one that lists a few, in an order the merge cannot keep, is
    refused with how to reorder."""
    mine = child.get("objectives")
    if not isinstance(mine, DictConfig):
        return
    theirs = parent.get("objectives")
    base_keys = [str(k) for k in theirs.keys()] if isinstance(theirs, DictConfig) else []
    child_keys = [str(k) for k in mine.keys()]
    merged_keys = [str(k) for k in merged.objectives.keys()]
    if set(base_keys) <= set(child_keys):
        if merged_keys != child_keys:
            # resolve=False keeps ${...} interpolations for the final resolve of the whole tree
            body = OmegaConf.to_container(merged.objectives, resolve=False)
            merged.objectives = {k: body[k] for k in child_keys}  # type: ignore[index]
        return
    if [k for k in merged_keys if k in child_keys] != child_keys:
        raise ConfigError(
            f"recipe '{recipe}' lists objectives {', '.join(child_keys)} in an order its base '{base}' "
            f"({', '.join(base_keys)}) does not have; to reorder, list every objective it runs "
            f"({', '.join(merged_keys)}) in the order they should run"
        )


def base_path(base: str, recipe: str, recipe_file: Path) -> str:
    """Where ``base: <base>`` in ``recipe`` (read from ``recipe_file``) points: a path
    relative to that file's folder, an absolute path, or a built-in recipe's name."""
    candidate = Path(base).expanduser()
    if not candidate.is_absolute():
        candidate = recipe_file.parent / candidate
    if candidate.is_file():
        return str(candidate)
    looks_like_path = Path(base).suffix in (".yaml", ".yml") or "/" in base or os.sep in base
    if looks_like_path:
        raise ConfigError(f"recipe '{recipe}': base '{base}' does not exist (looked for {candidate})")
    try:
        recipe_path(base)
    except ConfigError as e:
        raise ConfigError(f"recipe '{recipe}': base: {e}") from None
    return base


def yaml_error_message(path: Path, e: BaseException) -> str:
    """``file:line:column: what is wrong`` for a recipe that does not parse (PyYAML
    counts lines and columns from 0; editors count from 1)."""
    if isinstance(e, UnicodeDecodeError):
        return f"{path}: not a YAML recipe (not UTF-8 text: byte {e.start} is {e.object[e.start]:#04x})"
    if isinstance(e, OSError):
        return f"{path}: cannot read it ({e.strerror or e})"
    if isinstance(e, yaml.MarkedYAMLError):
        mark = e.problem_mark or e.context_mark
        problem = " ".join(str(x) for x in (e.context, e.problem) if x)
        if mark is not None and _char_at(path, mark.line, mark.column) == "\t":
            problem += " (a tab: YAML indents with spaces)"
        if mark is not None:
            return f"{path}:{mark.line + 1}:{mark.column + 1}: YAML syntax error: {problem}"
        return f"{path}: YAML syntax error: {problem}"
    if isinstance(e, yaml.reader.ReaderError):
        return f"{path}: not a YAML recipe (unprintable character {e.character!r} at byte {e.position})"
    return f"{path}: cannot parse the recipe: {str(e).splitlines()[0] if str(e) else type(e).__name__}"


def _char_at(path: Path, line: int, column: int) -> str:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
        return lines[line][column]
    except (OSError, UnicodeDecodeError, IndexError):
        return ""


def resolve(data: dict[str, Any], recipe: str | None = None) -> Resolved:
    check_keys(data, TrainConfig, "")
    cfg = typed(TrainConfig, data, "")
    model = resolve_plugin("model", cfg.model, *PLUGIN_SECTIONS["model"], default="t5")
    optimizer = resolve_plugin("optimizer", cfg.optimizer, *PLUGIN_SECTIONS["optimizer"], default="adafactor")
    lr_schedule = resolve_plugin("lr_schedule", cfg.lr_schedule, *PLUGIN_SECTIONS["lr_schedule"], default="rsqrt")
    objectives = resolve_named("objectives", cfg.objectives, OBJECTIVES)
    schedules = resolve_named("schedules", cfg.schedules, SCHEDULES)
    resolved = Resolved(cfg, model, objectives, schedules, optimizer, lr_schedule, recipe=recipe)
    if not CONFIG_CHECKS:
        # Without them a bad value would pass silently; the registries are empty too.
        raise RuntimeError("no configuration checks installed: call spactor.plugins.load_plugins() first")
    for check in CONFIG_CHECKS:
        check(resolved)
    return resolved


def resolve_plugin(
    path: str, section: dict[str, Any] | None, registry: Registry[Any], selector: str, default: str
) -> Plugin:
    section = dict(section or {})
    name = section.pop(selector, default)
    try:
        entry = registry.get(str(name))
    except RegistryError as e:
        raise ConfigError(f"{path}.{selector}: {e}") from None
    check_keys(section, entry.config_cls, path, extra_valid=(selector,))
    config = resolve_blocks(typed(entry.config_cls, section, path), path)
    return Plugin(name=str(name), type=str(name), config=config)


def resolve_blocks(config: Any, path: str) -> Any:
    """Resolve ``config``'s nested plugin sections (:func:`plugin_block`) in place and return
    it; idempotent, so a plugin built from a config made in Python (holding the raw mapping,
    or the entry's config object itself) calls it too."""
    for f, block in plugin_blocks(config):
        value, where = getattr(config, f.name), join(path, f.name)
        if isinstance(value, Plugin):
            continue
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            entries = [e.name for e in block.registry if e.config_cls is type(value)]
            if len(entries) != 1:
                raise ConfigError(
                    f"{where}: a {type(value).__name__} is the config of {len(entries)} registered "
                    f"{block.registry.kind}s, not one; give a mapping with '{block.selector}'"
                )
            value = Plugin(name=entries[0], type=entries[0], config=resolve_blocks(value, where))
        elif value is None or isinstance(value, dict):
            value = resolve_plugin(where, value, block.registry, block.selector, block.default)
        else:
            raise ConfigError(
                f"{where} must be a mapping ('{block.selector}' naming a {block.registry.kind} and its "
                f"options), got {value!r}"
            )
        setattr(config, f.name, value)
    return config


def resolve_named(path: str, sections: dict[str, Any] | None, registry: Registry[Any]) -> dict[str, Plugin]:
    """``objectives:`` / ``schedules:`` map an instance name to its config; ``type``
    defaults to the instance name, so ``span_corruption: {...}`` needs no ``type``."""
    out: dict[str, Plugin] = {}
    for key, section in (sections or {}).items():
        if section is None:
            section = {}
        if not isinstance(section, dict):
            raise ConfigError(f"{path}.{key} must be a mapping of options, got {section!r}")
        plugin = resolve_plugin(f"{path}.{key}", {"type": key, **section}, registry, "type", default=key)
        out[key] = Plugin(name=key, type=plugin.type, config=plugin.config)
    return out


# --------------------------------------------------------------------------- validation


def check_keys(data: Any, schema: type, path: str, extra_valid: tuple[str, ...] = ()) -> None:
    """Reject keys the schema does not have, recursing into nested dataclasses."""
    if not isinstance(data, dict):
        if data is not None:
            raise ConfigError(f"{path or 'config'} must be a mapping, got {data!r}")
        return
    fields = {f.name: f for f in dataclasses.fields(schema)}
    valid = sorted(fields) + list(extra_valid)
    for key, value in data.items():
        if key in extra_valid:
            continue
        if key not in fields:
            moved = moved_keys(schema).get(key)
            if moved is not None:
                raise ConfigError(f"{join(path, key)}: moved to {join(path, moved)}")
            raise ConfigError(unknown_key_message(join(path, key), valid))
        sub = field_dataclass(schema, fields[key])
        if sub is not None:
            check_keys(value, sub, join(path, key))


def moved_keys(schema: type) -> dict[str, str]:
    """A config dataclass's ``MOVED_KEYS`` (a ClassVar): old key → its new dotted place
    below the same section, e.g. ``{"generator_layers": "generator.layers"}``."""
    return dict(getattr(schema, "MOVED_KEYS", None) or {})


def upgrade_saved(data: dict[str, Any]) -> dict[str, Any]:
    """A config a run saved (``config.yaml``, the identity) as this version names it: the
    keys a plugin has moved since (:func:`moved_keys`) go to their new place, and a nested
    plugin section they land in names its default entry (what the old flat keys meant). A
    user's config gets no such help: an old key there is the one-line 'moved to' error."""
    data = copy.deepcopy(data)
    sections: list[tuple[dict[str, Any], Registry[Any], Any]] = []
    for section, (registry, selector) in PLUGIN_SECTIONS.items():
        body = data.get(section)
        if isinstance(body, dict):
            sections.append((body, registry, body.get(selector)))
    for section, registry in NAMED_PLUGIN_SECTIONS.items():
        named = data.get(section)
        for key, body in (named.items() if isinstance(named, dict) else ()):
            if isinstance(body, dict):
                sections.append((body, registry, body.get("type", key)))
    for body, registry, name in sections:
        if isinstance(name, str) and name in registry:
            _move_keys(body, registry.get(name).config_cls)
    return data


def _move_keys(body: dict[str, Any], schema: type) -> None:
    blocks = {f.name: block for f, block in plugin_blocks(schema)}
    for old, new in moved_keys(schema).items():
        if old not in body:
            continue
        value = body.pop(old)
        *parents, leaf = new.split(".")
        target = body
        for part in parents:
            if not isinstance(target.get(part), dict):
                target[part] = {}
            target = target[part]
        target.setdefault(leaf, value)
        block = blocks.get(parents[0]) if parents else None
        if block is not None:
            body[parents[0]].setdefault(block.selector, block.default)


def unknown_key_message(key: str, valid: list[str]) -> str:
    leaf = key.rsplit(".", 1)[-1]
    level = key.rsplit(".", 1)[0] if "." in key else "top level"
    hint = closest(leaf, valid)
    return (
        f"unknown config key '{key}'; valid keys at {level}: {', '.join(valid)}"
        + (f"; did you mean '{hint}'?" if hint else "")
    )


def field_dataclass(schema: type, f: dataclasses.Field[Any]) -> type | None:
    """The dataclass type of a field, if it is one (resolving string annotations)."""
    hints = _type_hints(schema)
    tp = hints.get(f.name)
    return tp if isinstance(tp, type) and dataclasses.is_dataclass(tp) else None


_HINTS: dict[type, dict[str, Any]] = {}


def _type_hints(schema: type) -> dict[str, Any]:
    if schema not in _HINTS:
        import typing

        _HINTS[schema] = typing.get_type_hints(schema)
    return _HINTS[schema]


def typed(schema: type, data: dict[str, Any] | None, path: str) -> Any:
    """Build the dataclass from ``data`` through OmegaConf, turning its type errors
    into one-line ConfigErrors naming the key and the value."""
    try:
        conf = OmegaConf.merge(OmegaConf.structured(schema), data or {})
        return OmegaConf.to_object(conf)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or ""
        value = _lookup(data or {}, key)
        msg = str(e).splitlines()[0]
        raise ConfigError(f"{join(path, key) or path}: bad value {value!r}: {msg}") from None


def _lookup(data: Any, dotted: str) -> Any:
    for part in dotted.split(".") if dotted else []:
        if isinstance(data, dict):
            data = data.get(part)
    return data


def join(path: str, key: str) -> str:
    return f"{path}.{key}" if path and key else path or key


# --------------------------------------------------------------------------- output


def plugin_dict(plugin: Plugin, selector: str) -> dict[str, Any]:
    body = dataclasses.asdict(plugin.config) if dataclasses.is_dataclass(plugin.config) else {}
    for f, block in plugin_blocks(plugin.config):
        value = getattr(plugin.config, f.name)
        if isinstance(value, Plugin):  # as it is written: {selector: entry, **its fields}
            body[f.name] = plugin_dict(value, block.selector)
    return {selector: plugin.type, **body}


def as_dict(resolved: Resolved) -> dict[str, Any]:
    """The fully resolved config, every default filled in, as plain data."""
    out = dataclasses.asdict(resolved.cfg)
    out["model"] = plugin_dict(resolved.model, "arch")
    out["optimizer"] = plugin_dict(resolved.optimizer, "type")
    out["lr_schedule"] = plugin_dict(resolved.lr_schedule, "type")
    out["objectives"] = {k: plugin_dict(p, "type") for k, p in resolved.objectives.items()}
    out["schedules"] = {k: plugin_dict(p, "type") for k, p in resolved.schedules.items()}
    return _lists_for_tuples(out)


def _lists_for_tuples(value: Any) -> Any:
    """Tuples (``optimizer.betas``) as lists, as YAML and JSON give them back: the saved
    config of a run must compare equal to the config that wrote it."""
    if isinstance(value, dict):
        return {k: _lists_for_tuples(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_lists_for_tuples(v) for v in value]
    return value


def to_plain(value: Any) -> Any:
    if isinstance(value, (DictConfig, ListConfig)):
        return OmegaConf.to_container(value, resolve=True)
    return value
