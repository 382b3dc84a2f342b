"""Checkpoints with ``torch.distributed.checkpoint`` (sharded model + optimizer) plus a
small per-rank file (data-loader state, RNG) and a manifest.

A checkpoint is written into a hidden temporary directory and renamed into place only
when every file is complete, so a partially written checkpoint is never picked up. The
manifest records each file's size; on load a checkpoint whose files are missing or
truncated is skipped in favour of the previous valid one.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
STEP_DIR = re.compile(r"^step_(\d{8})$")


def _rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def _world() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _barrier() -> None:
    if _world() > 1:
        dist.barrier()


@dataclass
class Loaded:
    path: Path
    step: int
    shared: dict[str, Any]  # the same on every rank: schedule state, stage, counters
    local: dict[str, Any] | None  # this rank's: data-loader state, RNG; None if the world size changed
    skipped: list[str]  # newer checkpoints that failed verification


class Checkpointer:
    def __init__(self, root: Path, keep: int = 2) -> None:
        self.root = Path(root)
        self.keep = keep

    # ----------------------------------------------------------------------- save
    def save(
        self,
        step: int,
        module: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        shared: dict[str, Any],
        local: dict[str, Any],
    ) -> Path:
        rank, world = _rank(), _world()
        final = self.root / f"step_{step:08d}"
        tmp = self.root / f".tmp_step_{step:08d}"
        if rank == 0:
            self.root.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
        _barrier()
        model_sd, optim_sd = get_state_dict(module, optimizer)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*torch.distributed is disabled.*")
            dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=tmp / "dcp")
        torch.save(local, tmp / f"local_rank{rank:05d}.pt")
        _barrier()
        if rank == 0:
            manifest = {
                "step": step,
                "world_size": world,
                "shared": shared,
                "files": {str(p.relative_to(tmp)): p.stat().st_size for p in sorted(tmp.rglob("*")) if p.is_file()},
            }
            _write_atomic(tmp / MANIFEST, json.dumps(manifest, indent=1, default=_json_default))
            if final.exists():  # re-saving the same step (e.g. final save after a periodic one)
                shutil.rmtree(final)
            os.replace(tmp, final)
            self._prune()
        _barrier()
        return final

    def _prune(self) -> None:
        steps = self.list()
        for path in steps[: max(0, len(steps) - self.keep)]:
            shutil.rmtree(path, ignore_errors=True)

    # ----------------------------------------------------------------------- load
    def list(self) -> list[Path]:
        """Complete checkpoint directories, oldest first."""
        if not self.root.is_dir():
            return []
        found = [p for p in self.root.iterdir() if p.is_dir() and STEP_DIR.match(p.name)]
        return sorted(found, key=lambda p: p.name)

    def latest_valid(self) -> tuple[Path | None, list[str]]:
        skipped: list[str] = []
        for path in reversed(self.list()):
            problem = verify(path)
            if problem is None:
                return path, skipped
            skipped.append(f"{path.name}: {problem}")
            log.warning("checkpoint %s is unusable (%s); trying the previous one", path, problem)
        return None, skipped

    def load(self, module: torch.nn.Module, optimizer: torch.optim.Optimizer, path: Path | None = None) -> Loaded | None:
        skipped: list[str] = []
        if path is None:
            path, skipped = self.latest_valid()
            if path is None:
                return None
        else:
            problem = verify(path)
            if problem is not None:
                raise RuntimeError(f"checkpoint {path} is unusable: {problem}")
        manifest = json.loads((path / MANIFEST).read_text())
        model_sd, optim_sd = get_state_dict(module, optimizer)
        state = {"model": model_sd, "optim": optim_sd}
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*torch.distributed is disabled.*")
            dcp.load(state, checkpoint_id=path / "dcp")
        set_state_dict(
            module,
            optimizer,
            model_state_dict=state["model"],
            optim_state_dict=state["optim"],
            options=StateDictOptions(strict=True),
        )
        local = None
        local_file = path / f"local_rank{_rank():05d}.pt"
        if manifest["world_size"] == _world() and local_file.exists():
            local = torch.load(local_file, weights_only=False)
        return Loaded(path, int(manifest["step"]), manifest["shared"], local, skipped)


def verify(path: Path) -> str | None:
    """None if the checkpoint is complete, else what is wrong with it."""
    manifest_file = path / MANIFEST
    if not manifest_file.is_file():
        return "no manifest (incomplete write)"
    try:
        manifest = json.loads(manifest_file.read_text())
    except (OSError, json.JSONDecodeError) as e:
        return f"unreadable manifest ({e})"
    for name, size in manifest.get("files", {}).items():
        f = path / name
        if not f.is_file():
            return f"missing file {name}"
        if f.stat().st_size != size:
            return f"file {name} has {f.stat().st_size} bytes, expected {size} (truncated?)"
    return None


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _json_default(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.tolist()
    raise TypeError(f"cannot store {type(value).__name__} in a checkpoint manifest")
