"""``minimal_pairs``: zero-shot minimal pairs in BLiMP's JSON-lines format.

Each line holds ``sentence_good`` and ``sentence_bad`` (and optionally ``UID``, the
phenomenon, for a per-phenomenon breakdown). A model gets a pair right when it gives the
good sentence a strictly higher log-likelihood than the bad one (a tie is wrong), as
BabyLM's pipeline scores BLiMP. Nothing is fine-tuned: ``spactor evaluate`` scores the
checkpoint as it is (``spactor.evaluation.likelihood``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from spactor.registry import TASKS

ZERO_SHOT_METRIC = "accuracy"


@dataclass(frozen=True)
class MinimalPair:
    good: str
    bad: str
    uid: str = ""


@dataclass
class MinimalPairsTask:
    """Pairs to score zero-shot. ``files``: the user's files they came from (``{"split",
    "path", "sha256"}``, as a fine-tuning task records them); ``result_name``: its folder
    under ``RUN_DIR/eval/`` ("" = ``name``)."""

    name: str
    pairs: list[MinimalPair]
    description: str = ""
    files: list[dict[str, str]] = field(default_factory=list)
    result_name: str = ""
    metric: str = ZERO_SHOT_METRIC
    kind: str = "zero_shot"

    @property
    def results(self) -> str:
        return self.result_name or self.name

    def summary(self) -> str:
        uids = sorted({p.uid for p in self.pairs if p.uid})
        return (f"{self.name}: zero-shot minimal pairs, {len(self.pairs)} pairs"
                + (f" in {len(uids)} phenomena" if uids else "") + ", metric accuracy (ties wrong), chance 0.5")


def score_pairs(pairs: list[MinimalPair], good: list[float], bad: list[float]) -> tuple[float, dict[str, float]]:
    """(accuracy, accuracy per UID): a pair counts when good > bad strictly."""
    if not pairs:
        raise ValueError("no pairs to score")
    right = [g > b for g, b in zip(good, bad)]
    per_uid: dict[str, list[bool]] = {}
    for pair, ok in zip(pairs, right):
        if pair.uid:
            per_uid.setdefault(pair.uid, []).append(ok)
    return sum(right) / len(right), {uid: sum(v) / len(v) for uid, v in sorted(per_uid.items())}


def read_pairs(path: str) -> list[MinimalPair]:
    """The pairs of a BLiMP-style .jsonl file; one line naming file and line for bad input."""
    if not path:
        raise ValueError("task minimal_pairs: set path=FILE (BLiMP's JSON lines: sentence_good, sentence_bad)")
    file = Path(path)
    if file.is_dir():
        raise ValueError(f"task minimal_pairs: {path} is a directory, not a .jsonl file")
    if not file.is_file():
        raise ValueError(f"task minimal_pairs: no such file: {path}")
    pairs = []
    with open(file, "rb") as f:
        for line_no, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise ValueError(f"task minimal_pairs: {path}:{line_no} is not valid UTF-8 ({e.reason})") from None
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError:
                raise ValueError(f"task minimal_pairs: {path}:{line_no} is not valid JSON") from None
            if not isinstance(record, dict):
                raise ValueError(f"task minimal_pairs: {path}:{line_no} is not a JSON object")
            for key in ("sentence_good", "sentence_bad"):
                if not isinstance(record.get(key), str) or not record[key].strip():
                    raise ValueError(f"task minimal_pairs: {path}:{line_no}: '{key}' must be a non-empty string")
            uid = record.get("UID", "")
            if not isinstance(uid, str):
                raise ValueError(f"task minimal_pairs: {path}:{line_no}: 'UID' must be a string")
            pairs.append(MinimalPair(record["sentence_good"], record["sentence_bad"], uid))
    if not pairs:
        raise ValueError(f"task minimal_pairs: {path} holds no pairs")
    return pairs


@dataclass
class MinimalPairsConfig:
    path: str = ""  # BLiMP-style .jsonl
    name: str = "minimal_pairs"  # results go to RUN_DIR/eval/<name>-<digest of the file>/


@TASKS.register("minimal_pairs", MinimalPairsConfig)
def minimal_pairs_task(cfg: MinimalPairsConfig) -> MinimalPairsTask:
    """Zero-shot minimal pairs from a BLiMP-style .jsonl file (path=FILE)."""
    import hashlib

    pairs = read_pairs(cfg.path)
    sha = hashlib.sha256(Path(cfg.path).read_bytes()).hexdigest()
    # Results of another file must not overwrite these (as for the jsonl task).
    return MinimalPairsTask(cfg.name, pairs, description=cfg.path,
                            files=[{"split": "test", "path": str(Path(cfg.path).resolve()), "sha256": sha}],
                            result_name=f"{cfg.name}-{sha[:12]}")
