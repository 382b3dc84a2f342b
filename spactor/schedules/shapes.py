"""The shapes of a value moving from ``start`` to ``end`` over a span of steps: one
definition for the knob anneals (``schedules.anneal``) and the learning-rate decays
(``lr_schedule: linear | cosine``).

``f(p, rate)`` is the fraction of the way from start to end done at progress ``p`` in
``[0, 1]``; :func:`interpolate` is ``start + (end - start) · f(p)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable


def linear(p: float, rate: float) -> float:
    return p


def cosine(p: float, rate: float) -> float:
    return 0.5 * (1.0 - math.cos(math.pi * p))


def exponential(p: float, rate: float) -> float:
    # expm1 keeps precision when rate·p is small.
    return math.expm1(-rate * p) / math.expm1(-rate)


def step_drop(p: float, rate: float) -> float:
    return 0.0  # p < 1 here; the drop to the end value happens at p = 1


# f(p, rate) in [0, 1]: the fraction of the way from the start value to the end value.
SHAPES: dict[str, Callable[[float, float], float]] = {
    "linear": linear,
    "cosine": cosine,
    "exponential": exponential,
    "step": step_drop,
}


def interpolate(start: float, end: float, p: float, shape: str, rate: float = 5.0) -> float:
    """The value at progress ``p``: exactly ``end`` from ``p = 1`` on (``step`` drops there)."""
    if p >= 1.0:
        return end
    return start + (end - start) * SHAPES[shape](p, rate)
