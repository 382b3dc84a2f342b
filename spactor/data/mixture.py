"""The ``mixture`` source: several sources interleaved by weight, deterministically.

::

    data:
      source: mixture
      source_options:
        seed: 0
        sources:
          - {type: jsonl, weight: 0.8, paths: ["c4/en/c4-train.*.json.gz"]}
          - {type: prepared, weight: 0.15, paths: [caches/wiki]}
          - {type: builtin, weight: 0.05}

The mixture is a sequence of *slots*; slot ``t`` is mixture document ``t`` and takes the
next document of the part the schedule gives it. The schedule is a smooth weighted
round-robin over a period of ``P`` slots in which part ``k`` gets exactly ``W_k`` slots
(``W`` the weights as the smallest proportional integers, ``P = ΣW``; weights that need
more than 10,000 slots are rounded to that resolution). Every period holds the exact
proportions, and shorter windows stay within a document or two per part of them. ``seed`` rotates where in the period the mixture starts and breaks ties. The slot
→ (part, position in part) map is arithmetic, so a loader resuming at document ``t``
knows where every part stands without replaying the schedule; parts are then read up to
that point (a ``prepared`` part jumps there directly).

``until``: ``first_exhausted`` (default) ends the mixture when the first part runs
out, so proportions hold throughout and every document appears at most once per
epoch (the tails of the other parts are not used; set the weights accordingly).
``all_exhausted`` restarts a part that runs out (upsampling small parts) and ends when
every part has been read once; the parts are counted once at the start to know where.
A repeated document gets a new mixture number, so with ``validation_fraction > 0`` a
repeat may land in the other split: hold out a separate source instead.

Sharding works on mixture numbers like any source, but each shard reads every part to
keep its place in each (text and JSON lines are parsed by every loader worker and
rank): for large corpora, mix ``prepared`` caches, which are read without parsing.
Skipped records are counted by the shard that owns the slot whose read met them.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from itertools import islice
from typing import Any

import numpy as np

from spactor.data.sources import DataError, Source, probing
from spactor.registry import SOURCES, RegistryError

MAX_PERIOD = 10_000
UNTIL = ("first_exhausted", "all_exhausted")


# --------------------------------------------------------------------------- schedule


def integer_weights(weights: Sequence[float], max_period: int = MAX_PERIOD) -> list[int]:
    """The smallest integers in the proportions of ``weights`` (read as the decimals
    they print as: 0.7/0.3 → 7/3, 1/2/0.5 → 2/4/1). If those sum to more than
    ``max_period``, the largest-remainder rounding to ``max_period`` slots (every part
    keeps at least one)."""
    if not weights:
        raise DataError("source 'mixture' needs at least one source")
    for w in weights:
        if not (isinstance(w, (int, float)) and not isinstance(w, bool) and math.isfinite(w) and w > 0):
            raise DataError(f"source 'mixture': every weight must be a positive number, got {w!r}")
    fractions = [Fraction(repr(float(w))) for w in weights]
    denominator = math.lcm(*(f.denominator for f in fractions))
    ints = [int(f * denominator) for f in fractions]
    ints = _reduce(ints)
    if sum(ints) <= max_period:
        return ints
    total = sum(weights)
    exact = [w / total * max_period for w in weights]
    ints = [max(1, math.floor(x)) for x in exact]
    while sum(ints) > max_period:  # the max(1, ...) lifts may overshoot: take from the largest
        ints[ints.index(max(ints))] -= 1
    by_remainder = sorted(range(len(exact)), key=lambda k: (ints[k] - exact[k], k))
    for k in by_remainder[: max_period - sum(ints)]:
        ints[k] += 1
    return _reduce(ints)


def _reduce(ints: list[int]) -> list[int]:
    g = math.gcd(*ints)
    return [i // g for i in ints]


class Schedule:
    """Which part each mixture slot reads, and how far each part is at any slot.

    One period is built by smooth weighted round-robin (each step every part gains its
    weight in credit; the richest part, ties broken in a seeded order, takes the slot
    and pays the period), which gives part ``k`` exactly ``W_k`` of the ``P`` slots,
    spread as evenly as integers allow. The sequence is that period repeated, entered at
    a seeded ``offset``.
    """

    def __init__(self, weights: Sequence[float], seed: int = 0, max_period: int = MAX_PERIOD) -> None:
        self.quotas = np.array(integer_weights(weights, max_period), dtype=np.int64)
        self.period = int(self.quotas.sum())
        rng = np.random.default_rng([int(seed), 0x6D6978])  # "mix"
        tie_rank = rng.permutation(len(self.quotas)).tolist()
        credit = [0] * len(self.quotas)
        quotas = self.quotas.tolist()
        order = np.empty(self.period, dtype=np.int32)
        for slot in range(self.period):
            for k, q in enumerate(quotas):
                credit[k] += q
            k = max(range(len(quotas)), key=lambda i: (credit[i], -tie_rank[i]))
            credit[k] -= self.period
            order[slot] = k
        self.order = order
        # Positions of each part's slots within the period, for counting.
        self.positions = [np.flatnonzero(order == k) for k in range(len(quotas))]
        self.offset = int(rng.integers(self.period)) if self.period > 1 else 0
        self._before_offset = self._virtual_counts(self.offset)

    def _virtual_counts(self, v: int) -> np.ndarray:
        """Slots of each part among virtual positions [0, v)."""
        q, r = divmod(v, self.period)
        return q * self.quotas + np.array([np.searchsorted(p, r) for p in self.positions], dtype=np.int64)

    def part(self, t: int) -> int:
        """The part slot ``t`` reads."""
        return int(self.order[(t + self.offset) % self.period])

    def counts_before(self, t: int) -> np.ndarray:
        """How many of slots [0, t) each part has: where each part stands at slot ``t``."""
        return self._virtual_counts(t + self.offset) - self._before_offset

    def slot_of(self, k: int, n: int) -> int:
        """The slot that reads part ``k``'s ``n``-th document (0-based)."""
        q, r = divmod(n + int(self._before_offset[k]), int(self.quotas[k]))
        return q * self.period + int(self.positions[k][r]) - self.offset


# --------------------------------------------------------------------------- source


@dataclass
class MixtureSourceConfig:
    # Each: {type: text|jsonl|parquet|prepared|builtin|..., weight: float, ...its own fields}
    sources: list[dict[str, Any]] = field(default_factory=list)
    seed: int = 0  # rotates the schedule's start and breaks ties
    until: str = "first_exhausted"  # first_exhausted | all_exhausted


_END = object()


class MixtureSource(Source):
    """Documents of several sources interleaved by weight (see the module docstring)."""

    name = "mixture"
    max_document_chars = None  # each part applies its own

    def __init__(
        self,
        parts: Sequence[Source],
        weights: Sequence[float],
        seed: int = 0,
        until: str = "first_exhausted",
        labels: Sequence[str] | None = None,
    ) -> None:
        if len(parts) != len(weights):
            raise ValueError("one weight per part")
        if until not in UNTIL:
            raise DataError(f"source 'mixture': until must be one of {', '.join(UNTIL)}, got {until!r}")
        self.parts = list(parts)
        self.weights = [float(w) for w in weights]
        self.seed = int(seed)
        self.until = until
        self.labels = list(labels) if labels is not None else [getattr(p, "name", "?") for p in self.parts]
        self.schedule = Schedule(self.weights, self.seed)
        self._sizes: list[int] | None = None

    @property
    def pretokenized(self) -> bool:  # type: ignore[override]
        """Whether some part yields ids (the loader then checks the tokenizer)."""
        return any(getattr(p, "pretokenized", False) for p in self.parts)

    def __iter__(self) -> Iterator[str]:
        if self.pretokenized:
            raise DataError("this mixture has a prepared part (token ids, not text): mix the original sources")
        return super().__iter__()

    def check_tokenizer(self, tokenizer: Any) -> None:
        for part in self.parts:
            if getattr(part, "pretokenized", False):
                part.check_tokenizer(tokenizer)  # type: ignore[attr-defined]

    # -- reading --------------------------------------------------------------------------
    def part_sizes(self) -> list[int]:
        """Documents in each part (``len`` where a part has one, else counted by one
        read that leaves the skip counters as they were)."""
        if self._sizes is None:
            sizes = []
            for part in self.parts:
                try:
                    sizes.append(len(part))  # type: ignore[arg-type]
                except TypeError:
                    with probing(part):
                        sizes.append(sum(1 for _ in part.documents()))
            self._sizes = sizes
        return self._sizes

    def end(self) -> int | None:
        """With ``all_exhausted``: the number of slots (None with ``first_exhausted``,
        whose end is found by reading)."""
        if self.until != "all_exhausted":
            return None
        sizes = self.part_sizes()
        empty = [self.labels[k] for k, n in enumerate(sizes) if n == 0]
        if empty:
            raise DataError(f"source 'mixture': part {empty[0]} has no usable documents")
        return max(self.schedule.slot_of(k, n - 1) for k, n in enumerate(sizes)) + 1

    def _reader(self, k: int, ordinal: int) -> Iterator[Any]:
        """Part ``k``'s documents from its ``ordinal``-th on; with ``all_exhausted``,
        starting over whenever it runs out (``_END`` marks each restart)."""
        part = self.parts[k]
        if self.until == "all_exhausted":
            n = self.part_sizes()[k]
            ordinal %= n
        while True:
            if hasattr(part, "iter_from"):
                yield from part.iter_from(ordinal)  # type: ignore[attr-defined]
            else:
                docs = (doc for _, doc in part.documents())
                skip = islice(docs, ordinal)
                with probing(part):  # what the skipped-over reads meet was counted before
                    for _ in skip:
                        pass
                yield from docs
            yield _END
            if self.until != "all_exhausted":
                return
            ordinal = 0

    def _records(self, start: int, shard: int, num_shards: int) -> Iterator[tuple[int, Any]]:
        schedule = self.schedule
        end = self.end()
        counts = schedule.counts_before(start).tolist()
        readers = [self._reader(k, counts[k]) for k in range(len(self.parts))]
        # A part's skipped records count only on its first pass (repeats re-read them).
        first_pass = [True] * len(self.parts)
        if self.until == "all_exhausted":
            sizes = self.part_sizes()
            first_pass = [counts[k] < sizes[k] for k in range(len(self.parts))]
        t = start
        while end is None or t < end:
            k = schedule.part(t)
            owned = t % num_shards == shard
            before = dict(self.parts[k].skipped)
            doc = next(readers[k])
            if doc is _END:
                self._count_skips(k, before, owned and first_pass[k])
                first_pass[k] = False
                if self.until == "first_exhausted":
                    return
                doc = next(readers[k])  # all_exhausted: the part starts over
                if doc is _END:
                    raise DataError(f"source 'mixture': part {self.labels[k]} has no usable documents")
            self._count_skips(k, before, owned and first_pass[k])
            if owned:
                yield t, doc
            t += 1

    def _count_skips(self, k: int, before: dict[str, int], count: bool) -> None:
        if not count:
            return
        for reason, n in self.parts[k].skipped.items():
            delta = n - before.get(reason, 0)
            if delta > 0:
                self.skipped[reason] = self.skipped.get(reason, 0) + delta

    def describe(self) -> str:
        total = sum(self.weights)
        parts = "; ".join(f"{w / total:.1%} {part.describe()}" for w, part in zip(self.weights, self.parts))
        return f"mixture (seed {self.seed}, {self.until}, period {self.schedule.period}): {parts}" + (
            self._skipped_suffix()
        )


def build_part(spec: dict[str, Any], position: int) -> tuple[Source, float, str]:
    """One ``sources`` entry → (source, weight, label)."""
    where = f"source 'mixture': sources[{position}]"
    if not isinstance(spec, dict):
        raise DataError(
            f"{where} must be a mapping like {{type: jsonl, weight: 1.0, paths: [...]}}, got {spec!r}"
        )
    spec = dict(spec)
    kind = spec.pop("type", None)
    if kind is None:
        raise DataError(f"{where} needs a type (text, jsonl, parquet, prepared, builtin, ...)")
    weight = spec.pop("weight", 1.0)
    try:
        entry = SOURCES.get(str(kind))
    except RegistryError as e:
        raise DataError(f"{where}: {e}") from None
    fields = {f.name for f in dataclasses.fields(entry.config_cls)}
    unknown = sorted(set(spec) - fields)
    if unknown:
        raise DataError(
            f"{where}: source '{kind}' has no option {unknown[0]!r}; valid: type, weight, {', '.join(sorted(fields))}"
        )
    if not (
        isinstance(weight, (int, float))
        and not isinstance(weight, bool)
        and math.isfinite(weight)
        and weight > 0
    ):
        raise DataError(f"{where}: weight must be a positive number, got {weight!r}")
    return entry.factory(entry.config_cls(**spec)), float(weight), f"{position}:{kind}"


@SOURCES.register("mixture", MixtureSourceConfig)
def mixture_source(cfg: MixtureSourceConfig) -> MixtureSource:
    """Several sources interleaved by weight (seeded weighted round-robin; resumable)."""
    if not cfg.sources:
        raise DataError(
            "source 'mixture' needs data.source_options.sources: a list of {type: ..., weight: ..., ...}"
        )
    built = [build_part(spec, i) for i, spec in enumerate(cfg.sources)]
    return MixtureSource(
        [b[0] for b in built],
        [b[1] for b in built],
        seed=cfg.seed,
        until=cfg.until,
        labels=[b[2] for b in built],
    )
