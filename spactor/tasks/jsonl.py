"""``jsonl``: a downstream task from the user's own JSON-lines files.

Text-to-text: ``input_field`` and ``target_field``. Classification: ``text_field`` and
``label_field`` (labels are compared as strings; numbers are converted). Set exactly one
of the two pairs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

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
    name: str = "jsonl"  # results go to RUN_DIR/eval/<name>/


def read_examples(path: str, source_field: str, target_field: str) -> list[Example]:
    file = Path(path)
    if not path:
        raise ValueError("task jsonl: set train=PATH and test=PATH")
    if not file.is_file():
        raise ValueError(f"task jsonl: no such file: {path}")
    examples = []
    with open(file, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
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
            examples.append(Example(str(record[source_field]), str(record[target_field])))
    if not examples:
        raise ValueError(f"task jsonl: {path} holds no examples")
    return examples


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
    train = read_examples(cfg.train, *fields)
    test = read_examples(cfg.test, *fields)
    return Task(cfg.name, kind, cfg.metric or default_metric, train, test,
                description=f"{cfg.train} / {cfg.test}")
