"""The learning-rate decays and the knob anneals share one set of shapes
(``spactor.schedules.shapes``): a decay from ``lr`` to ``min_lr`` is the anneal of the
same shape between them."""

from __future__ import annotations

import math

import pytest

from spactor.schedules.anneal import Anneal
from spactor.train.optim.optimizers import DecayConfig, cosine_schedule, linear_schedule

CFG = DecayConfig(lr=3e-4, warmup_steps=10, decay_steps=100, min_lr=3e-5)


@pytest.mark.parametrize(("shape", "build"), [("linear", linear_schedule), ("cosine", cosine_schedule)])
def test_decay_is_the_anneal_of_the_same_shape(shape, build):
    schedule = build(CFG)
    anneal = Anneal("lr", CFG.lr, CFG.min_lr, CFG.warmup_steps, CFG.warmup_steps + CFG.decay_steps, shape, 5.0)
    for step in range(CFG.warmup_steps, CFG.warmup_steps + CFG.decay_steps + 5):
        assert schedule(step) == pytest.approx(anneal.value(step), rel=1e-12, abs=0), step
    assert schedule(CFG.warmup_steps + CFG.decay_steps) == CFG.min_lr  # exactly, at the end
    assert schedule(CFG.warmup_steps) == CFG.lr


def test_linear_decay_is_the_closed_form_to_the_bit():
    """ELECTRA's and MLM's schedule: unchanged by sharing the shapes, bit for bit."""
    schedule = linear_schedule(CFG)
    for step in range(CFG.warmup_steps, CFG.warmup_steps + CFG.decay_steps):
        frac = (step - CFG.warmup_steps) / CFG.decay_steps
        assert schedule(step) == CFG.min_lr + (CFG.lr - CFG.min_lr) * (1.0 - frac)


def test_cosine_decay_midpoint():
    schedule = cosine_schedule(CFG)
    assert schedule(CFG.warmup_steps + CFG.decay_steps // 2) == pytest.approx((CFG.lr + CFG.min_lr) / 2, rel=1e-12)
    assert math.isclose(schedule(0), CFG.lr / CFG.warmup_steps)  # warmup unchanged
