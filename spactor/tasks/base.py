"""What a downstream task is: fixed train/test examples, a kind and a metric.

A task is a plugin (``spactor.registry.TASKS``): a config dataclass and a factory that
returns a :class:`Task`. ``spactor evaluate`` fine-tunes a pre-trained discriminator on
``train`` and scores ``test``:

``classification``  every example has a ``label`` from a fixed set ``labels``. A T5
    predicts the label as text with its decoder; an encoder-only model uses a linear
    head on its mean-pooled encoder output.
``generation``  the target is free text (text-to-text); only models with a decoder.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from spactor.tasks.metrics import metric

KINDS = ("classification", "generation")


@dataclass(frozen=True)
class Example:
    input: str
    target: str  # the label for classification tasks


@dataclass
class Task:
    name: str
    kind: str
    metric: str
    train: list[Example]
    test: list[Example]
    labels: list[str] = field(default_factory=list)  # classification: every label, sorted
    description: str = ""
    # The user's files it was read from: {"split", "path" (absolute), "sha256"}; none for
    # a built-in task (its data is the running Python's docstrings).
    files: list[dict[str, str]] = field(default_factory=list)
    result_name: str = ""  # its folder under RUN_DIR/eval/; "" = name

    @property
    def results(self) -> str:
        return self.result_name or self.name

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"task '{self.name}': kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        metric(self.metric)  # validates the name
        if not self.train or not self.test:
            raise ValueError(f"task '{self.name}': empty train or test split "
                             f"({len(self.train)} train, {len(self.test)} test examples)")
        if self.kind == "classification" and not self.labels:
            self.labels = sorted({e.target for e in self.train} | {e.target for e in self.test})

    def score(self, predictions: list[str]) -> float:
        return metric(self.metric)(predictions, [e.target for e in self.test])

    def majority_baseline(self) -> float:
        """The metric of always predicting the most frequent training target."""
        most_common = Counter(e.target for e in self.train).most_common(1)[0][0]
        return self.score([most_common] * len(self.test))

    def chance_level(self) -> float | None:
        """Classification: the expected accuracy of a uniformly random label."""
        return 1.0 / len(self.labels) if self.kind == "classification" else None

    def summary(self) -> str:
        chance = self.chance_level()
        parts = [f"{self.name}: {self.kind}, {len(self.train)} train / {len(self.test)} test examples",
                 f"metric {self.metric}", f"majority baseline {self.majority_baseline():.3f}"]
        if chance is not None:
            parts.insert(1, f"{len(self.labels)} labels")
            parts.append(f"chance {chance:.3f}")
        return ", ".join(parts)
