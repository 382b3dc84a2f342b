"""``jsonl``: a downstream task from the user's own JSON-lines files.

Text-to-text: ``input_field`` and ``target_field``. Classification: ``text_field`` and
``label_field`` (labels are compared as strings; numbers are converted). Set exactly one
of the two pairs. Results go to ``RUN_DIR/eval/<name>-<digest>/``: the digest (12 hex
digits of a sha256) covers the two files' sha256, the fields and the metric, so other
data never overwrites them; each result lists the files (path, sha256).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spactor.registry import TASKS
from spactor.tasks.base import Example, Task


@dataclass
class JsonlTaskConfig:
    train: str = ""  # a .jsonl file, one example per line
    test: str = ""
    input_field: str | None = None  # text-to-text
    target_field: str | None = None
    text_field: str | None = None  # classification
    label_field: str | None = None
    metric: str | None = None  # accuracy | exact_match | f1 | rouge_l; None: accuracy / exact_match
    name: str = "jsonl"  # results go to RUN_DIR/eval/<name>-<digest of the files, fields, metric>/


DIGEST_CHARS = 12  # hex digits of the digest in the result folder's name


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    return {list: "a list", dict: "an object"}.get(type(value), type(value).__name__)


def read_file(path: str) -> bytes:
    """The bytes of one split's file; a path that is not a readable file is one line."""
    file = Path(path)
    if not path:
        raise ValueError("task jsonl: set train=PATH and test=PATH")
    if file.is_dir():
        raise ValueError(f"task jsonl: {path} is a directory, not a .jsonl file")
    if not file.exists():
        raise ValueError(f"task jsonl: no such file: {path}")
    try:
        return file.read_bytes()
    except OSError as e:
        raise ValueError(f"task jsonl: {path}: cannot read it ({e.strerror or e})") from None


def parse_examples(data: bytes, path: str, source_field: str, target_field: str) -> list[Example]:
    """One example per non-blank line. The source (text / input) must be a string; the
    target (label / target) a string or a number, which is compared as its text. Anything
    else is refused as ``file:line``, the field and what it holds: ``str()`` of a list
    would quietly become a label."""
    examples = []
    for line_no, raw in enumerate(data.split(b"\n"), 1):
        if line_no == 1 and raw.startswith(b"\xef\xbb\xbf"):  # a BOM some editors write
            raw = raw[3:]
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ValueError(f"task jsonl: {path}:{line_no} is not valid UTF-8 "
                             f"(byte {e.start + 1} of the line is {raw[e.start]:#04x})") from None
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            raise ValueError(f"task jsonl: {path}:{line_no} is not valid JSON") from None
        if not isinstance(record, dict):
            raise ValueError(f"task jsonl: {path}:{line_no} is not a JSON object")
        for key in (source_field, target_field):
            if key not in record or record[key] is None:
                raise ValueError(f"task jsonl: {path}:{line_no} has no field '{key}'")
        text, target = record[source_field], record[target_field]
        if not isinstance(text, str):
            raise ValueError(f"task jsonl: {path}:{line_no}: field '{source_field}' must be a string, "
                             f"got {_kind(text)} ({json.dumps(text)[:40]})")
        if not isinstance(target, (str, int, float)):
            raise ValueError(f"task jsonl: {path}:{line_no}: field '{target_field}' must be a string or a "
                             f"number, got {_kind(target)} ({json.dumps(target)[:40]})")
        examples.append(Example(text, str(target)))
    if not examples:
        raise ValueError(f"task jsonl: {path} holds no examples")
    return examples


def read_examples(path: str, source_field: str, target_field: str) -> list[Example]:
    return parse_examples(read_file(path), path, source_field, target_field)


@TASKS.register("jsonl", JsonlTaskConfig)
def jsonl_task(cfg: JsonlTaskConfig) -> Task:
    """Your own train/test .jsonl files: text-to-text or classification."""
    text_to_text = cfg.input_field is not None or cfg.target_field is not None
    classification = cfg.text_field is not None or cfg.label_field is not None
    if text_to_text == classification:
        raise ValueError("task jsonl: set either input_field and target_field (text-to-text) "
                         "or text_field and label_field (classification)")
    if text_to_text:
        if cfg.input_field is None or cfg.target_field is None:
            raise ValueError("task jsonl: text-to-text needs both input_field and target_field")
        fields, kind, default_metric = (cfg.input_field, cfg.target_field), "generation", "exact_match"
    else:
        if cfg.text_field is None or cfg.label_field is None:
            raise ValueError("task jsonl: classification needs both text_field and label_field")
        fields, kind, default_metric = (cfg.text_field, cfg.label_field), "classification", "accuracy"
    splits, files = [], []
    for split, path in (("train", cfg.train), ("test", cfg.test)):
        data = read_file(path)
        splits.append(parse_examples(data, path, *fields))
        files.append({"split": split, "path": str(Path(path).resolve()),
                      "sha256": hashlib.sha256(data).hexdigest()})
    metric = cfg.metric or default_metric
    # Results of other data (or other fields, or another metric) must not overwrite these:
    # they go to eval/<name>-<digest>/, the digest of what was scored.
    scored = {"files": [[f["split"], f["sha256"]] for f in files], "fields": list(fields), "metric": metric}
    digest = hashlib.sha256(json.dumps(scored, sort_keys=True).encode()).hexdigest()[:DIGEST_CHARS]
    return Task(cfg.name, kind, metric, splits[0], splits[1], description=f"{cfg.train} / {cfg.test}",
                files=files, result_name=f"{cfg.name}-{digest}")
