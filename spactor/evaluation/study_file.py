"""A study file (``spactor study STUDY.yaml``; its format is in :mod:`spactor.evaluation.study`):
reading and checking it, and the arms' overrides and run directories it implies."""

from __future__ import annotations

import importlib.resources
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

STUDY_KEYS = ("name", "recipe", "overrides", "steps", "checkpoints", "baseline", "tasks", "seeds", "finetune",
              "random_control", "pretrain_seeds", "hardware", "arms")
HARDWARE_KEYS = ("gpu", "gpus", "mfu")  # hardware: {gpu: H100-SXM, gpus: 1, mfu: 0.25}
ARM_KEYS = ("recipe", "overrides")  # an arm given as {recipe: ..., overrides: ...}


class StudyError(ValueError):
    """A bad study file: one line naming the key, exit 2."""


@dataclass
class Hardware:
    """The machine a study is sized for: ``gpus`` of ``gpu`` (a name in
    ``spactor.train.flops.mfu.PEAK_TFLOPS``) at a stated model-FLOPs utilisation."""

    gpu: str
    gpus: int = 1
    mfu: float = 0.3

    @property
    def peak_flops(self) -> float:
        from spactor.train.flops.mfu import PEAK_TFLOPS

        return PEAK_TFLOPS[self.gpu] * 1e12 * self.gpus

    def seconds(self, flops: float) -> float:
        return flops / (self.peak_flops * self.mfu)


def _hardware(raw: Any, file: Path) -> Hardware | None:
    from spactor.train.flops.mfu import PEAK_TFLOPS

    if raw is None:
        return None
    if not isinstance(raw, dict) or "gpu" not in raw:
        raise StudyError(f"{file}: hardware must be a mapping with gpu (and gpus, mfu), got {raw!r}")
    unknown = sorted(set(raw) - set(HARDWARE_KEYS))
    if unknown:
        raise StudyError(f"{file}: hardware: unknown key '{unknown[0]}'; valid keys: {', '.join(HARDWARE_KEYS)}")
    if raw["gpu"] not in PEAK_TFLOPS:
        raise StudyError(f"{file}: hardware.gpu '{raw['gpu']}' is not in the peak table; valid: "
                         f"{', '.join(PEAK_TFLOPS)}")
    gpus, mfu = raw.get("gpus", 1), raw.get("mfu", 0.3)
    if not isinstance(gpus, int) or isinstance(gpus, bool) or gpus < 1:
        raise StudyError(f"{file}: hardware.gpus must be a positive integer, got {gpus!r}")
    if not isinstance(mfu, (int, float)) or isinstance(mfu, bool) or not 0 < mfu <= 1:
        raise StudyError(f"{file}: hardware.mfu must be in (0, 1], got {mfu!r}")
    return Hardware(str(raw["gpu"]), gpus, float(mfu))


@dataclass
class Study:
    name: str
    recipe: str
    steps: int
    checkpoints: list[int]
    arms: dict[str, list[str]]  # arm -> its key=value overrides
    overrides: list[str] = field(default_factory=list)
    baseline: str = ""
    tasks: list[str] = field(default_factory=lambda: ["pydoc_module"])
    seeds: int = 3
    finetune: dict[str, Any] = field(default_factory=dict)
    random_control: bool = True
    path: Path | None = None
    arm_recipes: dict[str, str] = field(default_factory=dict)  # arms that train another recipe
    pretrain_seeds: int = 1
    hardware: Hardware | None = None  # what --print-commands estimates each arm's wall time for

    def recipe_of(self, arm: str) -> str:
        return self.arm_recipes.get(arm, self.recipe)

    def runs(self, arm: str, out: Path) -> list[tuple[int | None, Path]]:
        """``(pre-training seed, run directory)`` of each of ``arm``'s runs: the arm's
        directory itself with one seed (the recipe's), ``<arm>/seed<k>`` with several."""
        if self.pretrain_seeds == 1:
            return [(None, out / arm)]
        return [(k, out / arm / f"seed{k}") for k in range(self.pretrain_seeds)]

    def random_control_arms(self) -> list[str]:
        """The arms whose first run also scores its architecture from random init: the
        baseline, and each arm of another recipe (another model, another control)."""
        if not self.random_control:
            return []
        return [a for a in self.arms if a == self.baseline or self.recipe_of(a) != self.recipe_of(self.baseline)]

    def arm_overrides(self, arm: str, run_dir: Path, seed: int | None = None) -> list[str]:
        every = _gcd(self.checkpoints)
        shared = [] if arm in self.arm_recipes else self.overrides  # another recipe brings its own
        return [
            *shared,
            *self.arms[arm],
            *([] if seed is None else [f"trainer.seed={seed}"]),
            f"trainer.max_steps={self.steps}",
            f"trainer.checkpoint_every={every}",
            f"trainer.keep_checkpoints={self.steps // every + 1}",  # every evaluated step stays
            f"run.dir={run_dir}",
            "run.plot=false",
        ]

    @property
    def middle_checkpoint(self) -> int:
        return self.checkpoints[(len(self.checkpoints) - 1) // 2]


def _gcd(values: list[int]) -> int:
    import math

    out = 0
    for v in values:
        out = math.gcd(out, v)
    return out


def _as_dotlist(value: Any, key: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, list):
        if not all(isinstance(v, str) and "=" in v for v in value):
            raise StudyError(f"{key}: a list of key=value strings, got {value!r}")
        return list(value)
    if isinstance(value, dict):
        return [f"{k}={_yaml_value(v)}" for k, v in value.items()]
    raise StudyError(f"{key}: a list of key=value or a mapping, got {value!r}")


def _yaml_value(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return str(value)


def shipped_study(name: str) -> Path | None:
    """A study shipped with spactor (``spactor_tiny``, ``spactor_base``)."""
    candidates = []
    try:
        candidates.append(Path(str(importlib.resources.files("spactor.studies") / f"{name}.yaml")))
    except ModuleNotFoundError:
        pass
    candidates.append(Path(__file__).resolve().parents[2] / "studies" / f"{name}.yaml")  # a source checkout
    return next((c for c in candidates if c.is_file()), None)


def load_study(path: Path) -> Study:
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    file = path
    if not file.is_file():
        found = shipped_study(path.name) if path.suffix == "" and len(path.parts) == 1 else None
        if found is None:
            raise StudyError(f"{path}: no such study file")
        file = found
    try:
        raw = OmegaConf.to_container(OmegaConf.load(file), resolve=True)
    except OmegaConfBaseException as e:
        raise StudyError(f"{file}: cannot parse: {str(e).splitlines()[0]}") from None
    if not isinstance(raw, dict):
        raise StudyError(f"{file}: a study is a mapping (recipe, steps, arms, ...)")
    unknown = sorted(set(raw) - set(STUDY_KEYS))
    if unknown:
        raise StudyError(f"{file}: unknown key '{unknown[0]}'; valid keys: {', '.join(STUDY_KEYS)}")
    for key in ("recipe", "steps", "checkpoints", "arms"):
        if key not in raw:
            raise StudyError(f"{file}: '{key}' is required")
    steps = raw["steps"]
    if not isinstance(steps, int) or steps < 1:
        raise StudyError(f"{file}: steps must be a positive integer, got {steps!r}")
    checkpoints = raw["checkpoints"]
    if (not isinstance(checkpoints, list) or not checkpoints
            or not all(isinstance(c, int) and 0 < c <= steps for c in checkpoints)):
        raise StudyError(f"{file}: checkpoints must be a list of steps in 1..{steps}, got {checkpoints!r}")
    arms_raw = raw["arms"]
    if not isinstance(arms_raw, dict) or not arms_raw:
        raise StudyError(f"{file}: arms must map arm names to their overrides")
    arms, arm_recipes = {}, {}
    for name, value in arms_raw.items():
        if isinstance(value, dict) and "recipe" in value:  # an arm of another recipe
            unknown_arm = sorted(set(value) - set(ARM_KEYS))
            if unknown_arm:
                raise StudyError(f"{file}: arms.{name}: unknown key '{unknown_arm[0]}'; an arm of its own "
                                 f"recipe takes {', '.join(ARM_KEYS)}")
            arm_recipes[str(name)] = str(value["recipe"])
            value = value.get("overrides")
        arms[str(name)] = _as_dotlist(value, f"arms.{name}")
    for name in arms:
        if not name.replace("_", "").replace("-", "").isalnum():
            raise StudyError(f"{file}: arm name '{name}' must be letters, digits, - and _ (a directory name)")
    baseline = str(raw.get("baseline") or next(iter(arms)))
    if baseline not in arms:
        raise StudyError(f"{file}: baseline '{baseline}' is not an arm; arms: {', '.join(arms)}")
    tasks = raw.get("tasks", ["pydoc_module"])
    if not isinstance(tasks, list) or not tasks:
        raise StudyError(f"{file}: tasks must be a non-empty list of task names")
    seeds = raw.get("seeds", 3)
    if not isinstance(seeds, int) or seeds < 1:
        raise StudyError(f"{file}: seeds must be a positive integer, got {seeds!r}")
    pretrain_seeds = raw.get("pretrain_seeds", 1)
    if not isinstance(pretrain_seeds, int) or isinstance(pretrain_seeds, bool) or pretrain_seeds < 1:
        raise StudyError(f"{file}: pretrain_seeds must be a positive integer, got {pretrain_seeds!r}")
    finetune = raw.get("finetune") or {}
    if not isinstance(finetune, dict):
        raise StudyError(f"{file}: finetune must be a mapping of FinetuneConfig fields")
    return Study(
        name=str(raw.get("name") or file.stem), recipe=str(raw["recipe"]), steps=steps,
        checkpoints=sorted(set(checkpoints)), arms=arms, overrides=_as_dotlist(raw.get("overrides"), "overrides"),
        baseline=baseline, tasks=[str(t) for t in tasks], seeds=seeds, finetune=finetune,
        random_control=bool(raw.get("random_control", True)), path=file, arm_recipes=arm_recipes,
        pretrain_seeds=pretrain_seeds, hardware=_hardware(raw.get("hardware"), file),
    )


def validate_study(study: Study, out: Path) -> None:
    """Every arm's config and the tasks and budget, before anything runs."""
    from spactor.config import ConfigError, load_config
    from spactor.plugins import load_plugins
    from spactor.registry import TASKS
    from spactor.evaluation.finetune import EvaluationError

    load_plugins()
    for task in study.tasks:
        if task not in TASKS:
            raise StudyError(f"{study.path}: unknown task '{task}'; valid: {', '.join(TASKS.names())}")
    try:
        _finetune_config(study)
    except (ConfigError, EvaluationError) as e:
        raise StudyError(f"{study.path}: {e}") from None
    for arm in study.arms:
        try:
            seed, run_dir = study.runs(arm, out)[0]
            load_config(study.recipe_of(arm), study.arm_overrides(arm, run_dir, seed))
        except ConfigError as e:
            raise StudyError(f"{study.path}: arm '{arm}': {e}") from None


def _finetune_config(study: Study) -> Any:
    from spactor.config import check_keys, typed
    from spactor.evaluation.finetune import FinetuneConfig

    check_keys(study.finetune, FinetuneConfig, "finetune")
    return typed(FinetuneConfig, study.finetune, "finetune")
