"""What keeps a run directory one run: a writer lock, a recorded identity, and the rules
for what a resume may change.

* **Lock** (:class:`RunDirLock`): ``run.dir/.lock``, held with ``flock`` by the process
  that writes the directory (rank 0 under torchrun). The OS releases it when that
  process dies, however it dies, so a stale lock never blocks a run; the holder's PID
  and host are written into the file so the refusal can name them.
* **Identity** (``identity.json``): written once when a run starts, never rewritten by
  a resume: the architecture and its dimensions, the vocabulary and the sha256 of the
  run's own ``spiece.model``, the objectives and their settings, the input length. A
  recipe that differs in any of these is another run, refused on a directory that holds
  its checkpoints.
* **Resume compatibility** (:func:`compare_configs`): the run's saved ``config.yaml``
  against the config a resume would train under. Keys that only shape the future
  (:data:`MUTABLE`: steps, cadences, schedules' future values, runtime knobs that do not
  change the math) are applied and reported; any other difference is refused in one
  line naming each key and both values, before anything in the directory is written.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import hashlib
import json
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spactor.checkpoint_layout import manifest_step
from spactor.config import ConfigError, Resolved, as_dict, upgrade_saved
from spactor.data.tokenizer import Tokenizer, TokenizerFileError

LOCK_FILE = ".lock"
IDENTITY_FILE = "identity.json"
CONFIG_FILE = "config.yaml"
TOKENIZER_FILE = "spiece.model"

# Keys a resume may change: they decide what happens from the resumed step on, not what
# the checkpoint holds or how the data stream it restores is cut. fnmatch patterns.
MUTABLE: tuple[str, ...] = (
    "trainer.max_steps",
    "trainer.log_every",
    "trainer.eval_every",
    "trainer.eval_batches",
    "trainer.eval_passes",
    "trainer.checkpoint_every",
    "trainer.keep_checkpoints",
    "trainer.nonfinite",
    "trainer.max_consecutive_skips",
    "trainer.grad_accum_steps",  # the global batch stays; only its micro-batching changes
    "schedules.*.*",  # future values; a schedule's type and knob are checked separately
    "lr_schedule.*",
    "runtime.progress",
    "runtime.count_flops",
    "runtime.peak_tflops",
    "runtime.compile",
    "runtime.activation_checkpointing",
    "run.tensorboard",
    "run.plot",
)
# Not compared at all: where the run lives and whether to start over are the request.
IGNORED: tuple[str, ...] = ("run.dir", "run.fresh")
# Within a schedule, these say what it is, not what it will do.
SCHEDULE_STRUCTURE: tuple[str, ...] = ("type", "knob")

# The part of a config that makes a run that run (besides its tokenizer).
IDENTITY: tuple[str, ...] = ("model.*", "objectives.*", "data.input_length")


class RunDirError(ConfigError):
    """A run directory that cannot be used as asked; one line, exit code 2."""


# --------------------------------------------------------------------------- lock


class RunDirLock:
    """An exclusive ``flock`` on ``run_dir/.lock``. ``acquire`` fails at once when another
    process holds it; ``release`` (or the death of the process) frees it. The file is
    emptied on release so a finished run leaves it as it found it."""

    def __init__(self) -> None:
        self._fd: int | None = None
        self.path: Path | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self, run_dir: Path) -> None:
        import fcntl

        path = Path(run_dir) / LOCK_FILE
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)  # no O_TRUNC: the holder wrote its name
        except OSError as e:
            raise RunDirError(
                f"run.dir {run_dir}: cannot create its lock file {path} ({e.strerror})"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise RunDirError(
                f"run.dir {run_dir} is in use by another spactor train ({holder}); "
                "wait for it to finish or choose another run.dir"
            ) from None
        except OSError:  # a filesystem without flock: run unlocked rather than not at all
            os.close(fd)
            return
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} host {socket.gethostname()}\n".encode(), 0)
        self._fd, self.path = fd, path

    def release(self) -> None:
        if self._fd is None:
            return
        import fcntl

        try:
            os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            os.close(self._fd)
            self._fd = None


class CreatedPaths:
    """What a command created for its run directory (the directory, missing parents, its
    ``.lock``) until the run writes into it: a command refused before then removes them
    (:meth:`undo`), so it leaves nothing behind. :meth:`keep` once the run is started."""

    def __init__(self) -> None:
        self.dirs: list[Path] = []  # outermost first
        self.lock_file: Path | None = None
        self.kept = False

    def note(self, run_dir: Path) -> None:
        """Before anything is created: what does not exist yet."""
        missing = [p for p in (Path(run_dir), *Path(run_dir).parents) if not p.exists()]
        self.dirs = list(reversed(missing))
        lock = Path(run_dir) / LOCK_FILE
        self.lock_file = None if lock.exists() else lock

    def keep(self) -> None:
        self.kept = True

    def undo(self, lock: RunDirLock) -> None:
        """Remove what was created, innermost first; a directory that holds anything
        else (another process's files) stays. The lock file goes only while this process
        holds it (never another run's), removed before the lock is released."""
        if self.kept:
            return
        if self.lock_file is not None and lock.held and lock.path == self.lock_file:
            try:
                self.lock_file.unlink()
            except OSError:
                pass
        lock.release()
        for path in reversed(self.dirs):
            try:
                path.rmdir()
            except OSError:  # not empty, or already gone: leave it
                break
        self.kept = True


def _read_holder(fd: int) -> str:
    try:
        text = os.pread(fd, 256, 0).decode(errors="replace").strip()
    except OSError:
        text = ""
    parts = text.split()
    if len(parts) >= 4 and parts[0] == "pid" and parts[2] == "host":
        return f"PID {parts[1]} on host {parts[3]}"
    return "a process that has not written its PID yet"


# --------------------------------------------------------------------------- identity


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts → ``{"a.b.c": leaf}``; lists are leaves."""
    if not isinstance(data, dict):
        return {prefix: data}
    out: dict[str, Any] = {}
    for key, value in data.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict) and value:
            out.update(flatten(value, path))
        else:
            out[path] = value
    return out


def unflatten(flat: dict[str, Any]) -> dict[str, Any]:
    """:func:`flatten`'s inverse."""
    out: dict[str, Any] = {}
    for key, value in flat.items():
        *parents, leaf = key.split(".")
        node = out
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out


def _matches(key: str, patterns: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatchcase(key, p) for p in patterns)


def identity_of(resolved: Resolved, tokenizer_sha256: str, vocab_size: int) -> dict[str, Any]:
    config = {k: v for k, v in flatten(as_dict(resolved)).items() if _matches(k, IDENTITY)}
    return {"config": config, "vocab_size": vocab_size, "tokenizer_sha256": tokenizer_sha256}


def write_identity(run_dir: Path, identity: dict[str, Any]) -> None:
    _write_text(run_dir / IDENTITY_FILE, json.dumps(identity, indent=1, sort_keys=True) + "\n")


def read_identity(run_dir: Path) -> dict[str, Any] | None:
    path = run_dir / IDENTITY_FILE
    if not path.is_file():
        return None
    try:
        identity = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise RunDirError(f"{path}: unreadable ({e}); run.fresh=true starts a new run there") from None
    return identity if isinstance(identity, dict) else None


def identity_differences(saved: dict[str, Any], resolved: Resolved) -> list[str]:
    """``key: saved → new`` for each identity key the new config changes."""
    new = {k: v for k, v in flatten(as_dict(resolved)).items() if _matches(k, IDENTITY)}
    old = flatten(upgrade_saved(unflatten(saved.get("config", {}))))  # keys moved since it was written
    differences = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k, _ABSENT), new.get(k, _ABSENT)
        if a == b or _field_of_another_version(k, a, b, old, new):
            continue
        differences.append(_describe(k, a, b))
    return differences


def check_tokenizer(run_dir: Path, resolved: Resolved) -> Path:
    """The tokenizer a resumed run uses: its own ``spiece.model``. A ``data.tokenizer``
    whose file differs from it is refused (never adopted, never copied over it)."""
    saved = run_dir / TOKENIZER_FILE
    if not saved.is_file():
        raise RunDirError(
            f"run.dir {run_dir}: its tokenizer {saved} is missing; the run cannot resume without it"
        )
    load_run_tokenizer(run_dir)
    given = resolved.cfg.data.tokenizer
    if given:
        path = Path(given).expanduser()
        if path.is_file() and path.resolve() != saved.resolve():
            new_sha, own_sha = file_sha256(path), file_sha256(saved)
            if new_sha != own_sha:
                raise RunDirError(
                    f"data.tokenizer: {given} (sha256 {new_sha[:12]}) is not the tokenizer this run was "
                    f"trained with ({saved}, sha256 {own_sha[:12]}); a run keeps its tokenizer "
                    "(run.fresh=true or another run.dir starts a new run with this one)"
                )
    return saved


def load_run_tokenizer(run_dir: Path) -> Tokenizer:
    """A run directory's own ``spiece.model``, loaded. One that is empty, truncated or
    unreadable is a :class:`RunDirError` naming that file: the data-loading path would
    report it under ``data.tokenizer`` (which a resume points at it) and a SentencePiece
    training hint, though the user set neither."""
    path = Path(run_dir) / TOKENIZER_FILE
    try:
        return Tokenizer.load(path)
    except (TokenizerFileError, OSError) as e:
        reason = e.reason if isinstance(e, TokenizerFileError) else (e.strerror or str(e))
        try:
            sha = (read_identity(Path(run_dir)) or {}).get("tokenizer_sha256")
        except RunDirError:  # the tokenizer is the problem to report; the hint is optional
            sha = None
        fix = (f"; restore the file the run was trained with (sha256 {str(sha)[:12]}..., in "
               f"{Path(run_dir) / IDENTITY_FILE})" if sha else "")
        raise RunDirError(f"{path}: the run directory's tokenizer file is empty or unreadable: "
                          f"{reason}{fix}") from None


# --------------------------------------------------------------------------- resume


_ABSENT = object()


def _show(value: Any) -> str:
    return "(unset)" if value is _ABSENT else json.dumps(value) if not isinstance(value, str) else value


def _describe(key: str, old: Any, new: Any) -> str:
    return f"{key} {_show(old)} -> {_show(new)}"


def _mutable(key: str) -> bool:
    if _matches(key, MUTABLE):
        parts = key.split(".")
        return not (parts[0] == "schedules" and parts[-1] in SCHEDULE_STRUCTURE)
    return False


def compare_configs(saved: dict[str, Any], resolved: Resolved) -> tuple[list[str], list[str]]:
    """(changes a resume applies, changes it refuses), each ``key old -> new``."""
    old = {k: v for k, v in flatten(saved).items() if not _matches(k, IGNORED)}
    new = {k: v for k, v in flatten(as_dict(resolved)).items() if not _matches(k, IGNORED)}
    applied, refused = [], []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key, _ABSENT), new.get(key, _ABSENT)
        if a == b:
            continue
        if a is _ABSENT or b is _ABSENT:
            if _field_of_another_version(key, a, b, old, new):
                continue
            instance = _instance(key)
            change = f"{instance[:-1]} {'added' if a is _ABSENT else 'removed'}"
            if change not in refused:
                refused.append(change)
            continue
        (applied if _mutable(key) else refused).append(_describe(key, a, b))
    return applied, refused


def _field_of_another_version(key: str, a: Any, b: Any, old: dict[str, Any], new: dict[str, Any]) -> bool:
    """Whether ``key``, set on one side only, is a field one spactor version has and the
    other not (its default applies: e.g. a generator's ``sizing``, added after runs were
    saved with explicit sizes). An objective or schedule added or removed is not: it
    changes what the run is."""
    if a is not _ABSENT and b is not _ABSENT:
        return False
    instance = _instance(key)
    lacking = old if a is _ABSENT else new
    return instance is None or any(k.startswith(instance) for k in lacking)


def _instance(key: str) -> str | None:
    """``objectives.rtd.`` for ``objectives.rtd.weight``: the plugin instance a key is in."""
    parts = key.split(".")
    if parts[0] in ("objectives", "schedules") and len(parts) >= 2:
        return f"{parts[0]}.{parts[1]}."
    return None


def read_saved_config(run_dir: Path) -> dict[str, Any] | None:
    path = run_dir / CONFIG_FILE
    if not path.is_file():
        return None
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        data = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    except (OmegaConfBaseException, ValueError, OSError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise RunDirError(f"{path}: unreadable ({first}); the run cannot be checked") from None
    return upgrade_saved(data) if isinstance(data, dict) else None


def check_resume(run_dir: Path, resolved: Resolved, explicit: bool) -> list[str]:
    """Refuse a resume that would change what the checkpoints in ``run_dir`` are; return
    the changes it applies. ``explicit``: asked for with ``--resume`` (else a start on a
    directory that already holds a run)."""
    identity = read_identity(run_dir)
    if identity is not None and not explicit:
        different = identity_differences(identity, resolved)
        if different:
            raise RunDirError(
                f"run.dir {run_dir} holds checkpoints of another run ({'; '.join(different)}); "
                "run.fresh=true starts over there, or choose another run.dir"
            )
    saved = read_saved_config(run_dir)
    if saved is None:
        return []
    applied, refused = compare_configs(saved, resolved)
    if refused:
        how = f"--resume {run_dir}" if explicit else f"resuming the run in {run_dir}"
        raise RunDirError(
            f"{how}: cannot change {'; '.join(refused)} (the checkpoints depend on "
            f"{'it' if len(refused) == 1 else 'them'}); run.fresh=true or another run.dir starts a new run"
        )
    return applied


def write_config(run_dir: Path, resolved: Resolved) -> None:
    _write_text(run_dir / CONFIG_FILE, resolved.to_yaml())


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


# --------------------------------------------------------------------------- opening


@dataclass
class OpenedRunDir:
    resume_from: Path | None  # the checkpoint to resume from; None: a new run
    step: int  # the checkpoint's step (0 for a new run)
    applied: list[str]  # config changes the resume applies, ``key old -> new``
    tokenizer: str | None  # the run's own spiece.model when resuming
    finished: str | None  # set when there is nothing to train: what to tell the user


def open_run_dir(run_dir: Path, resolved: Resolved, checkpointer: Any, explicit: bool,
                 lock: RunDirLock, is_main: bool) -> OpenedRunDir:
    """Lock an existing run directory, find the checkpoint to resume from and check that
    the config may resume it; writes nothing. ``explicit``: ``--resume``. Raises
    :class:`RunDirError` for a directory that must not be used as asked."""
    cfg = resolved.cfg
    # a new directory is locked when it is created
    _on_rank0(is_main, lambda: lock.acquire(run_dir) if run_dir.is_dir() else None)
    resume_from = None
    if explicit or not cfg.run.fresh:
        resume_from, skipped = checkpointer.latest_valid()
        for problem in skipped if is_main else []:
            print(f"skipping checkpoint {problem}", flush=True)
    if resume_from is None and checkpointer.list() and (explicit or not cfg.run.fresh):
        raise RuntimeError(
            f"every checkpoint in {checkpointer.root} failed verification; refusing to start over "
            "on top of them (run.fresh=true starts a new run there)"
        )
    if resume_from is None:
        if explicit:
            raise RunDirError(f"--resume {run_dir}: no checkpoint in {run_dir}, nothing to resume "
                              "(its files are left as they are)")
        metrics = run_dir / "metrics.jsonl"
        if not cfg.run.fresh and metrics.is_file() and metrics.stat().st_size > 0:
            raise RunDirError(
                f"run.dir {run_dir} holds the metrics of a run that has no checkpoint to resume; "
                "run.fresh=true starts over there (erasing them), or choose another run.dir"
            )
        return OpenedRunDir(None, 0, [], None, None)
    applied: list[str] = []

    def checks() -> None:
        applied.extend(check_resume(run_dir, resolved, explicit))
        check_tokenizer(run_dir, resolved)

    _on_rank0(is_main, checks)
    tokenizer = str(run_dir / TOKENIZER_FILE)
    step = manifest_step(resume_from)
    finished = None
    if step >= cfg.trainer.max_steps:
        finished = (f"{run_dir}: the run is at step {step} and trainer.max_steps is {cfg.trainer.max_steps}: "
                    "nothing to train (raise trainer.max_steps to continue it)")
    return OpenedRunDir(resume_from, step, applied, tokenizer, finished)


def _on_rank0(is_main: bool, check: Any) -> None:
    """Run ``check`` on rank 0 and raise its :class:`RunDirError` on every rank (under
    torchrun the others would otherwise wait for rank 0 at their next collective)."""
    verdict: list[str | None] = [None]
    if is_main:
        try:
            check()
        except RunDirError as e:
            verdict[0] = str(e)
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.broadcast_object_list(verdict, src=0)
    if verdict[0] is not None:
        raise RunDirError(verdict[0])


def start_run_dir(run_dir: Path, resolved: Resolved, tokenizer: Any) -> None:
    """A new run: its config, its own tokenizer and its identity."""
    write_config(run_dir, resolved)
    tokenizer.save(run_dir / TOKENIZER_FILE)  # the run directory is self-contained
    sha = file_sha256(run_dir / TOKENIZER_FILE)
    write_identity(run_dir, identity_of(resolved, sha, int(tokenizer.vocab().size)))


def with_tokenizer(resolved: Resolved, tokenizer: str | None) -> Resolved:
    """``resolved`` reading its tokenizer from ``tokenizer`` (a resumed run's own), the
    rest unchanged; the config recorded in the run keeps its ``data.tokenizer``."""
    if tokenizer is None:
        return resolved
    data = dataclasses.replace(resolved.cfg.data, tokenizer=tokenizer)
    return dataclasses.replace(resolved, cfg=dataclasses.replace(resolved.cfg, data=data))
