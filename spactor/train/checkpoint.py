"""Checkpoints with ``torch.distributed.checkpoint`` (sharded model + optimizer) plus a
small per-rank file (data-loader state, RNG) and a manifest.

A checkpoint is written into a hidden temporary directory (``.tmp_step_*``), its files
are flushed to disk (fsync), and only then is the directory renamed into place, so a
partially written checkpoint is never picked up, not even after a machine crash. The
manifest records each file's size and CRC-32.

On load (``Checkpointer.latest_valid`` / ``load``) every checkpoint is verified
(:func:`verify`), newest first: the manifest must parse, every file must be there with
its recorded size and checksum, and the ``torch.distributed.checkpoint`` metadata must
unpickle and point only at byte ranges that exist. A checkpoint that fails is skipped in
favour of the previous valid one, and the reason is logged and returned
(``Loaded.skipped``). Leftover ``.tmp_step_*`` directories of a crashed save are
ignored and removed by the next save.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict

from spactor.checkpoint_layout import (  # noqa: F401 — MANIFEST: re-exported
    DCP,
    DCP_METADATA,
    MANIFEST,
    MODEL_STATE,
    OPTIM_GROUPS_PREFIX,
    OPTIM_STATE,
    OPTIM_STATE_PREFIX,
    dcp_dir,
    dcp_metadata,
    is_stale_dir,
    manifest_path,
    old_dir_name,
    read_manifest,
    step_dir,
    step_dirs,
    step_of,
    tmp_dir_name,
)
from spactor.config import ConfigError

log = logging.getLogger(__name__)

_CRC_CHUNK = 16 << 20


def _rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def _world() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _barrier() -> None:
    if _world() > 1:
        dist.barrier()


class CheckpointWriteError(RuntimeError):
    """A checkpoint could not be written; the message says why and what is intact."""


_LOW_SPACE = 64 << 20  # below this much free space a failed write is blamed on the disk


def _causes(error: BaseException) -> list[BaseException]:
    """``error``, its chained causes, and the per-rank failures inside a DCP
    ``CheckpointException``, outermost first."""
    seen: list[BaseException] = []
    todo = [error]
    while todo:
        e = todo.pop(0)
        if e is None or any(e is s for s in seen):
            continue
        seen.append(e)
        for wrapped in (getattr(e, "failures", None) or {}).values():
            todo.append(wrapped[0] if isinstance(wrapped, tuple) else wrapped)
        todo.extend(x for x in (e.__cause__, e.__context__) if x is not None)
    return seen


def _free_bytes(path: Path) -> int | None:
    for p in (path, *path.parents):
        try:
            return shutil.disk_usage(p).free
        except OSError:
            continue
    return None


def _human(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return f"{n} B"


@dataclass
class Loaded:
    path: Path
    step: int
    shared: dict[str, Any]  # the same on every rank: schedule state, stage, counters
    local: dict[str, Any] | None  # this rank's: data-loader state, RNG; None if the world size changed
    skipped: list[str]  # newer checkpoints that failed verification


class Checkpointer:
    """Saves into ``root/step_NNNNNNNN/``, keeps the newest ``keep``, loads the newest
    valid one. ``checksums``: record and verify each file's CRC-32 (reads every byte
    once more on save and on verification, ~2 GB/s; off, only sizes and the DCP metadata
    are checked)."""

    def __init__(self, root: Path, keep: int = 2, checksums: bool = True) -> None:
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        self.root = Path(root)
        self.keep = keep
        self.checksums = checksums
        # path -> (signature of its files, verdict): a checkpoint verified by
        # latest_valid() is not hashed again by the load() that follows.
        self._verdicts: dict[Path, tuple[Any, str | None]] = {}

    # ----------------------------------------------------------------------- save
    def save(
        self,
        step: int,
        module: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        shared: dict[str, Any],
        local: dict[str, Any],
    ) -> Path:
        try:
            return self._save(step, module, optimizer, shared, local)
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as e:  # noqa: BLE001 — DCP raises CheckpointException, a BaseException
            if isinstance(e, CheckpointWriteError):
                raise
            if any(isinstance(c, KeyboardInterrupt) for c in _causes(e)):
                # a second Ctrl-C while DCP writes (it wraps it): still an interruption
                shutil.rmtree(self.root / tmp_dir_name(step), ignore_errors=True)
                raise KeyboardInterrupt from None
            raise self._write_error(step, e) from e

    def _write_error(self, step: int, error: BaseException) -> CheckpointWriteError:
        """One line for a failed save: why (no space, permission, a path that is a file,
        or the error itself) and which checkpoint is intact. The half-written
        ``.tmp_step_*`` directory is removed: it holds the space the disk lacked."""
        free = _free_bytes(self.root)  # before the clean-up frees what the write took
        shutil.rmtree(self.root / tmp_dir_name(step), ignore_errors=True)
        causes = _causes(error)
        os_error = next((c for c in causes if isinstance(c, OSError) and c.errno), None)
        if os_error is not None and os_error.errno in (errno.ENOSPC, errno.EDQUOT):
            why = "no space left on device"
        elif os_error is not None and os_error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            why = f"permission denied ({os_error.filename or self.root})"
        elif os_error is not None and os_error.errno in (errno.ENOTDIR, errno.EEXIST):
            why = f"a path there is a file, not a directory ({os_error.filename or self.root})"
        elif free is not None and free < _LOW_SPACE:
            # torch's zip writer reports a short write as "unexpected pos N vs M"
            why = "no space left on device"
        else:
            last = causes[-1] if causes else error
            why = f"{type(last).__name__}: {str(last).strip().splitlines()[-1] if str(last).strip() else ''}"
        if why == "no space left on device" and free is not None:
            why += f" ({_human(free)} free on {self.root})"
        intact = self.list()
        kept = "no earlier checkpoint exists"
        if intact:
            kept = f"the checkpoint of step {step_of(intact[-1])} is intact"
        return CheckpointWriteError(
            f"could not write the checkpoint of step {step} to {self.root}: {why}; {kept}"
        )

    def _save(
        self,
        step: int,
        module: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        shared: dict[str, Any],
        local: dict[str, Any],
    ) -> Path:
        rank, world = _rank(), _world()
        final = step_dir(self.root, step)
        tmp = self.root / tmp_dir_name(step)
        if rank == 0:
            self.root.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
        _barrier()
        model_sd, optim_sd = get_state_dict(module, optimizer)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*torch.distributed is disabled.*")
            dcp.save({MODEL_STATE: model_sd, OPTIM_STATE: optim_sd}, checkpoint_id=dcp_dir(tmp))
        torch.save(local, tmp / f"local_rank{rank:05d}.pt")
        _barrier()
        if rank == 0:
            files = [p for p in sorted(tmp.rglob("*")) if p.is_file()]
            for p in files:
                _fsync(p)  # data on disk before the rename makes the checkpoint visible
            manifest = {
                "step": step,
                "world_size": world,
                "shared": shared,
                "files": {str(p.relative_to(tmp)): p.stat().st_size for p in files},
            }
            if self.checksums:
                manifest["crc32"] = {str(p.relative_to(tmp)): _crc32(p) for p in files}
            _write_atomic(manifest_path(tmp), json.dumps(manifest, indent=1, default=_json_default))
            for d in sorted({p.parent for p in files} | {tmp}):
                _fsync_dir(d)
            old = None
            if final.exists():  # re-saving the same step (e.g. final save after a periodic one)
                old = self.root / old_dir_name(step)
                shutil.rmtree(old, ignore_errors=True)
                os.replace(final, old)  # never a moment without a complete step_N
            os.replace(tmp, final)
            _fsync_dir(self.root)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
            self._verdicts.pop(final, None)
            self._prune(keep_tmp=tmp.name)
        _barrier()
        return final

    def _prune(self, keep_tmp: str | None = None) -> None:
        steps = self.list()
        for path in steps[: max(0, len(steps) - self.keep)]:
            shutil.rmtree(path, ignore_errors=True)
            self._verdicts.pop(path, None)
        # Leftovers of saves that crashed (never renamed into place): dead weight on disk.
        for path in self.root.iterdir():
            if is_stale_dir(path) and path.is_dir() and path.name != keep_tmp:
                log.info("removing %s, left by an interrupted checkpoint save", path)
                shutil.rmtree(path, ignore_errors=True)

    # ----------------------------------------------------------------------- load
    def list(self) -> list[Path]:
        """Complete checkpoint directories, oldest first."""
        return step_dirs(self.root)

    def latest_valid(self) -> tuple[Path | None, list[str]]:
        """The newest checkpoint that passes :func:`verify`, and ``"step_N: problem"`` for
        each newer one that did not."""
        skipped: list[str] = []
        for path in reversed(self.list()):
            problem = self.verify(path)
            if problem is None:
                return path, skipped
            skipped.append(f"{path.name}: {problem}")
            # info, not warning: the caller reports ``skipped`` once (logging's last-resort
            # handler would print every warning a second time, on every rank)
            log.info("checkpoint %s is unusable (%s); trying the previous one", path, problem)
        return None, skipped

    def verify(self, path: Path) -> str | None:
        """:func:`verify`, remembered while no file of the checkpoint changes (name, size
        and mtime of each)."""
        path = Path(path)
        try:
            signature = tuple(
                (str(p.relative_to(path)), st.st_size, st.st_mtime_ns)
                for p in sorted(path.rglob("*"))
                if p.is_file() and (st := p.stat())
            )
        except OSError:
            signature = None
        cached = self._verdicts.get(path)
        if signature is not None and cached is not None and cached[0] == signature:
            return cached[1]
        problem = verify(path, checksums=self.checksums)
        self._verdicts[path] = (signature, problem)
        return problem

    def load(self, module: torch.nn.Module, optimizer: torch.optim.Optimizer, path: Path | None = None) -> Loaded | None:
        skipped: list[str] = []
        if path is None:
            path, skipped = self.latest_valid()
            if path is None:
                return None
        else:
            problem = self.verify(path)
            if problem is not None:
                raise RuntimeError(f"checkpoint {path} is unusable: {problem}")
        manifest = read_manifest(path)
        model_sd, optim_sd = get_state_dict(module, optimizer)
        never_saved = _drop_state_never_saved(path, optim_sd)
        state = {MODEL_STATE: model_sd, OPTIM_STATE: optim_sd}
        _check_optimizer_fits(path, optim_sd)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*torch.distributed is disabled.*")
            dcp.load(state, checkpoint_id=dcp_dir(path))
        set_state_dict(
            module,
            optimizer,
            model_state_dict=state[MODEL_STATE],
            optim_state_dict=state[OPTIM_STATE],
            # dcp.load has checked every model key; strict would refuse the parameters never saved
            options=StateDictOptions(strict=not never_saved),
        )
        local = None
        local_file = path / f"local_rank{_rank():05d}.pt"
        if manifest["world_size"] == _world() and local_file.exists():
            local = torch.load(local_file, weights_only=False)
        return Loaded(path, int(manifest["step"]), manifest["shared"], local, skipped)


def verify(path: Path, checksums: bool = True) -> str | None:
    """None if the checkpoint is complete and intact, else what is wrong with it.

    Checks, cheapest first: the manifest parses and names the step, world size and
    files; every file exists with its recorded size (and CRC-32 when the manifest has
    them and ``checksums``); the DCP ``.metadata`` unpickles, and every byte range it
    points at lies inside an existing file of the checkpoint.
    """
    path = Path(path)
    manifest_file = manifest_path(path)
    if not manifest_file.is_file():
        return "no manifest (incomplete write)"
    try:
        manifest = json.loads(manifest_file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        return f"unreadable manifest ({e})"
    if not isinstance(manifest, dict):
        return "unreadable manifest (not a JSON object)"
    for key in ("step", "world_size", "files"):
        if key not in manifest:
            return f"manifest has no '{key}'"
    files = manifest["files"]
    if not isinstance(files, dict) or not files:
        return "manifest lists no files"
    for name, size in files.items():
        f = path / name
        if not f.is_file():
            return f"missing file {name}"
        if f.stat().st_size != size:
            return f"file {name} has {f.stat().st_size} bytes, expected {size} (truncated?)"
    dcp_problem = _verify_dcp(dcp_dir(path))
    if dcp_problem is not None:
        return dcp_problem
    if checksums:
        for name, expected in (manifest.get("crc32") or {}).items():
            try:
                actual = _crc32(path / name)
            except OSError as e:
                return f"file {name} unreadable ({e})"
            if actual != expected:
                return (
                    f"file {name} fails its checksum (crc32 {actual:08x}, expected {int(expected):08x}): corrupt"
                )
    return None


def _verify_dcp(dcp_dir: Path) -> str | None:
    """Read the DCP metadata and check that the storage it indexes exists."""
    if not dcp_metadata(dcp_dir).is_file():
        return f"no DCP metadata ({DCP}/{DCP_METADATA})"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            metadata = dcp.FileSystemReader(str(dcp_dir)).read_metadata()
    except Exception as e:  # noqa: BLE001 — unpickling garbage raises almost anything
        return f"unreadable DCP metadata ({type(e).__name__}: {e})"
    storage = getattr(metadata, "storage_data", None)
    if not isinstance(storage, dict):
        return "DCP metadata has no storage index"
    needed: dict[str, int] = {}
    for info in storage.values():
        rel = getattr(info, "relative_path", None)
        if rel is None:
            continue
        end = int(getattr(info, "offset", 0)) + int(getattr(info, "length", 0))
        needed[rel] = max(needed.get(rel, 0), end)
    for rel, end in needed.items():
        f = dcp_dir / rel
        if not f.is_file():
            return f"DCP storage file {rel} is missing"
        if f.stat().st_size < end:
            return f"DCP storage file {rel} has {f.stat().st_size} bytes, its index needs {end} (truncated?)"
    return None


def _crc32(path: Path) -> int:
    crc = 0
    with open(path, "rb") as f:
        while chunk := f.read(_CRC_CHUNK):
            crc = zlib.crc32(chunk, crc)
    return crc


def _fsync(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    """Persist a directory's entries (a rename); not every filesystem supports it."""
    _fsync(path)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _json_default(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.tolist()
    raise TypeError(f"cannot store {type(value).__name__} in a checkpoint manifest")


def _drop_state_never_saved(path: Path, optim_sd: dict[str, Any]) -> list[str]:
    """A parameter with no optimizer state in the checkpoint had none when it was saved
    (it never got a gradient: a curriculum holds an objective for a later stage). DCP's
    ``get_state_dict`` gives every parameter a state (a zero-gradient step); leave those
    out so that loading restores no state for them, as in the run that saved it. Returns
    their names."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        saved = dcp.FileSystemReader(str(dcp_dir(path))).read_metadata().state_dict_metadata
    # ``optim.state.<fqn>.<key>``: a parameter saved with other keys (another optimizer)
    # stays, for _check_optimizer_fits to refuse.
    with_state = {
        k[len(OPTIM_STATE_PREFIX):].rsplit(".", 1)[0] for k in saved if k.startswith(OPTIM_STATE_PREFIX)
    }
    states = optim_sd.get("state", {})
    never = [fqn for fqn in states if fqn not in with_state]
    for fqn in never:
        del states[fqn]
    return never


def _check_optimizer_fits(path: Path, optim_sd: dict[str, Any]) -> None:
    """One line instead of DCP's missing-key traceback when the checkpoint's optimizer
    state is not this optimizer's: another optimizer, or the torch.optim.Adafactor that
    spactor used before its own (other state for tensors with a dim < 128, other
    param-group keys)."""
    groups = optim_sd.get("param_groups", [])
    wanted = [f"{OPTIM_GROUPS_PREFIX}{i}.{k}" for i, g in enumerate(groups) for k in g]
    wanted += [f"{OPTIM_STATE_PREFIX}{fqn}.{k}" for fqn, st in optim_sd.get("state", {}).items() for k in st]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        saved = dcp.FileSystemReader(str(dcp_dir(path))).read_metadata().state_dict_metadata
    missing = [k for k in wanted if k not in saved]
    if missing:
        old_adafactor = f"{OPTIM_GROUPS_PREFIX}0.d" in saved and f"{OPTIM_GROUPS_PREFIX}0.eps" in saved
        raise ConfigError(
            f"checkpoint {path}: its optimizer state does not fit this optimizer (no {missing[0]}); "
            + ("it was written by torch.optim.Adafactor, which spactor's Adafactor does not resume"
               if old_adafactor else "it was written with another optimizer")
            + " — resume with the optimizer that wrote it, or start a new run from its weights"
            + " (spactor export, then model.init_from=hf:DIR)"
        )
