"""Where a spactor run keeps its checkpoints, and what a checkpoint holds: the one place
that spells the layout. Every module that reads or writes a checkpoint calls these.

::

    RUN/checkpoints/step_NNNNNNNN/          one checkpoint (8-digit step)
        manifest.json                       step, world_size, shared state, file sizes, CRC-32s
        dcp/                                torch.distributed.checkpoint files (dcp/.metadata)
        local_rankNNNNN.pt                  each rank's data-loader state and RNG
    RUN/checkpoints/.tmp_step_NNNNNNNN/     a save in progress (renamed into place when complete)
    RUN/checkpoints/.old_step_NNNNNNNN/     the step being replaced by a re-save of it

The DCP state is ``{"model": <TrainModules' state dict>, "optim": <the optimizer's>}``;
``TrainModules`` (``spactor.train.step``) holds the discriminator as ``model`` and the
objectives as ``objectives``, so a discriminator tensor is ``model.model.<param>`` in the
DCP files and ``model.<param>`` in TrainModules' state dict (a ``.pt`` of a whole run's
``model``), an objective's ``[model.]objectives.<name>.<param>``.

Core: standard library only, so that the trainer (which writes), the tools and the plugins
(a Fast-ELECTRA generator loads a trained run's) all read the layout from here.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

CHECKPOINTS = "checkpoints"  # a run directory's folder of checkpoints
MANIFEST = "manifest.json"  # written last: a step directory with one is complete
DCP = "dcp"  # the torch.distributed.checkpoint folder of a step directory
DCP_METADATA = ".metadata"  # torch.distributed.checkpoint's index file in that folder
STEP_DIR = re.compile(r"^step_(\d{8})$")
TMP_DIR = re.compile(r"^\.tmp_step_(\d{8})$")
OLD_DIR_PREFIX = ".old_step_"

# Top-level keys of the DCP state, and the key prefixes inside TrainModules' state dict.
MODEL_STATE = "model"
OPTIM_STATE = "optim"
DISCRIMINATOR_KEY = "model."  # TrainModules.model
OBJECTIVES_KEY = "objectives."  # TrainModules.objectives
DISCRIMINATOR_PREFIX = f"{MODEL_STATE}.{DISCRIMINATOR_KEY}"  # a discriminator tensor in the DCP files
OPTIM_STATE_PREFIX = f"{OPTIM_STATE}.state."  # optim.state.<parameter fqn>.<state key>
OPTIM_GROUPS_PREFIX = f"{OPTIM_STATE}.param_groups."  # optim.param_groups.<i>.<key>


# ----------------------------------------------------------------------------- paths
def checkpoints_dir(run_dir: str | Path) -> Path:
    """The folder of ``run_dir``'s checkpoints."""
    return Path(run_dir) / CHECKPOINTS


def step_dir_name(step: int) -> str:
    return f"step_{step:08d}"


def tmp_dir_name(step: int) -> str:
    return f".tmp_step_{step:08d}"


def old_dir_name(step: int) -> str:
    return f"{OLD_DIR_PREFIX}{step:08d}"


def step_dir(root: str | Path, step: int) -> Path:
    """The checkpoint of ``step`` in the checkpoints folder ``root``."""
    return Path(root) / step_dir_name(step)


def step_of(step_dir: str | Path) -> int | None:
    """The step a step directory's name says; None for any other name."""
    match = STEP_DIR.match(Path(step_dir).name)
    return int(match.group(1)) if match else None


def step_dirs(root: str | Path) -> list[Path]:
    """The step directories under the checkpoints folder ``root``, oldest first (complete
    or not: the caller verifies)."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted((p for p in root.iterdir() if p.is_dir() and STEP_DIR.match(p.name)), key=lambda p: p.name)


def is_stale_dir(path: Path) -> bool:
    """A leftover of an interrupted save (``.tmp_step_*``) or re-save (``.old_step_*``)."""
    return bool(TMP_DIR.match(path.name)) or path.name.startswith(OLD_DIR_PREFIX)


def manifest_path(step_dir: str | Path) -> Path:
    return Path(step_dir) / MANIFEST


def dcp_dir(step_dir: str | Path) -> Path:
    """The DCP folder of a step directory."""
    return Path(step_dir) / DCP


def dcp_metadata(dcp_folder: str | Path) -> Path:
    """The index file of a DCP folder."""
    return Path(dcp_folder) / DCP_METADATA


def is_dcp_dir(path: str | Path) -> bool:
    """``path`` is a DCP folder (it has DCP's index file)."""
    return dcp_metadata(path).is_file()


def is_checkpoint_dir(path: str | Path) -> bool:
    """``path`` is a step directory the runner finished writing (it writes the manifest
    last and renames the directory into place only then). Not a verification: see
    ``spactor.train.checkpoint.verify``."""
    return manifest_path(path).is_file()


def has_weights(step_dir: str | Path) -> bool:
    """A finished step directory with its DCP index: what a reader of its weights needs
    (a lighter check than ``spactor.train.checkpoint.verify``, for plugins)."""
    return is_checkpoint_dir(step_dir) and is_dcp_dir(dcp_dir(step_dir))


def step_dir_of(dcp_folder: str | Path) -> Path | None:
    """The step directory a DCP folder belongs to; None for a DCP folder elsewhere."""
    parent = Path(dcp_folder).parent
    return parent if is_checkpoint_dir(parent) else None


# ----------------------------------------------------------------------------- manifest
def read_manifest(step_dir: str | Path) -> dict[str, Any]:
    """The parsed manifest (OSError / ValueError when missing or not JSON)."""
    manifest = json.loads(manifest_path(step_dir).read_text())
    if not isinstance(manifest, dict):
        raise ValueError(f"{manifest_path(step_dir)}: not a JSON object")
    return manifest


def manifest_step(step_dir: str | Path) -> int:
    """The step the manifest records (KeyError / ValueError / TypeError when it has none)."""
    return int(read_manifest(step_dir)["step"])


def manifest_shared(step_dir: str | Path) -> dict[str, Any]:
    """The state every rank shares (stage, schedules, counters, FLOPs) the manifest holds."""
    shared = read_manifest(step_dir).get("shared", {})
    return shared if isinstance(shared, dict) else {}


# ----------------------------------------------------------------------------- keys
def objective_key(name: str) -> str:
    """The prefix of objective ``name``'s tensors in TrainModules' state dict."""
    return f"{OBJECTIVES_KEY}{name}."
