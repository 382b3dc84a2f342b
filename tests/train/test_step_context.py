"""The runner <-> objective contract (issue 24, item 2): per micro-batch the runner counts
once and hands every objective one frozen ``MicroBatchContext`` (counts, pad id,
with_metrics); ``modify``/``loss`` never count again and nothing is set on an objective;
the losses are weighted by the runner's own mapping, by loss name."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import spactor.objectives.base as objectives_base
from spactor.objectives.base import MicroBatchContext, Objective
from spactor.objectives.span_corruption import SpanCorruption
from spactor.train.step import train_step

from test_host_syncs import ADAMW, build_step  # tests/train is on sys.path (rootdir conftest, no package)


def _spy_on(modules, monkeypatch):
    """Record, for every objective, the contexts its modify/loss get and every count or
    aux_counts call made while a modify/loss runs."""
    seen: dict[str, list] = {"contexts": [], "counted_in_forward": [], "loss_counts": 0}
    in_forward = {"on": False}
    for obj in modules.objectives.values():
        for role in ("modify", "loss"):
            def wrapped(*args, _original=getattr(obj, role), **kwargs):
                seen["contexts"].append(args[-1])
                in_forward["on"] = True
                try:
                    return _original(*args, **kwargs)
                finally:
                    in_forward["on"] = False
            monkeypatch.setattr(obj, role, wrapped)
        for method in ("count", "aux_counts"):
            def counted(batch, _original=getattr(obj, method), _name=f"{obj.name}.{method}"):
                if in_forward["on"]:
                    seen["counted_in_forward"].append(_name)
                return _original(batch)
            monkeypatch.setattr(obj, method, counted)
    original = objectives_base.loss_counts

    def loss_counts(objectives, batch):
        seen["loss_counts"] += 1
        return original(objectives, batch)

    monkeypatch.setattr(objectives_base, "loss_counts", loss_counts)
    return seen


@pytest.mark.parametrize("with_metrics", [False, True])
@pytest.mark.parametrize("recipe", ["sc", "spactor"])
def test_the_runner_counts_once_per_micro_batch_and_the_forward_never(recipe, with_metrics, tiny_overrides,
                                                                       tmp_path, monkeypatch):
    modules, opt, ctx, batches = build_step(recipe, ADAMW, tiny_overrides, tmp_path)
    ctx = dataclasses.replace(ctx, grad_accum_steps=2)
    seen = _spy_on(modules, monkeypatch)
    out = train_step(modules, opt, next(batches), ctx, with_metrics=with_metrics)
    assert out.applied
    assert seen["counted_in_forward"] == []  # loss_term/aux_term read ctx.counts
    assert seen["loss_counts"] == 2  # once per micro-batch, for every objective at once
    contexts = {id(c): c for c in seen["contexts"]}
    assert len(contexts) == 2  # one context per micro-batch, shared by every modify and loss
    for c in contexts.values():
        assert isinstance(c, MicroBatchContext) and c.with_metrics is with_metrics
        assert c.pad_id == modules.pad_id
        assert "span_corruption" in c.counts
        with pytest.raises(dataclasses.FrozenInstanceError):
            c.with_metrics = not with_metrics  # type: ignore[misc]
    assert ("span_corruption/accuracy" in out.logged) is with_metrics


def test_a_step_sets_no_attribute_on_an_objective(tiny_overrides, tmp_path):
    modules, opt, ctx, batches = build_step("spactor", ADAMW, tiny_overrides, tmp_path)
    assert not hasattr(Objective, "compute_metrics")
    before = {name: set(vars(obj)) for name, obj in modules.objectives.items()}
    for with_metrics in (True, False):
        train_step(modules, opt, next(batches), ctx, with_metrics=with_metrics)
    after = {name: set(vars(obj)) for name, obj in modules.objectives.items()}
    assert after == before
    assert not any(hasattr(obj, "compute_metrics") for obj in modules.objectives.values())


def test_the_step_weights_the_losses_from_the_runners_mapping(tiny_overrides, tmp_path, monkeypatch):
    """The step reads ``TrainModules.loss_weights`` once and applies it by loss name: an
    objective's own weight is not consulted during the step."""
    modules, opt, ctx, batches = build_step("sc", [*ADAMW, "objectives.span_corruption.z_loss=1e-3"],
                                            tiny_overrides, tmp_path)
    ctx = dataclasses.replace(ctx, grad_accum_steps=2)
    names = ["span_corruption", "span_corruption_z"]
    assert modules.loss_weights(names) == {"span_corruption": 1.0, "span_corruption_z": 1.0}
    calls = []

    def runners_weights(names) -> dict[str, float]:
        calls.append(sorted(names))
        return {"span_corruption": 0.5, "span_corruption_z": 1.0}

    def not_read(self):
        raise AssertionError("the step read an objective's weight")

    monkeypatch.setattr(modules, "loss_weights", runners_weights)
    monkeypatch.setattr(SpanCorruption, "weight", property(not_read))
    out = train_step(modules, opt, next(batches), ctx, with_metrics=False)
    assert calls == [names]  # once per step, not per micro-batch or per loss
    sc, z = out.logged.local_value("loss/span_corruption"), out.logged.local_value("loss/span_corruption_z")
    assert float(z) > 0
    torch.testing.assert_close(out.loss, 0.5 * sc + z)


def test_each_objective_names_the_weight_of_each_of_its_losses(tiny_overrides, tmp_path):
    modules, *_ = build_step("spactor", [*ADAMW, "objectives.rtd.generator_z_loss=1e-3"], tiny_overrides,
                             tmp_path)
    rtd = modules.objectives["rtd"]
    rtd.set_knob("generator_weight", 2.5)
    rtd.set_knob("weight", 7.0)
    modules.objectives["span_corruption"].set_knob("weight", 3.0)
    weights = modules.loss_weights(["rtd", "rtd_generator", "rtd_generator_z", "span_corruption",
                                     "span_corruption_z", "aux_of_nobody"])
    assert weights["aux_of_nobody"] == 1.0  # a loss no objective weights
    assert weights["rtd"] == 7.0 and weights["rtd_generator"] == weights["rtd_generator_z"] == 2.5
    assert weights["span_corruption"] == weights["span_corruption_z"] == 3.0  # its z-loss by its weight
    frozen, *_ = build_step("fast_electra", ADAMW, tiny_overrides, tmp_path / "frozen")
    assert frozen.loss_weights(["rtd_generator"]) == {"rtd_generator": 0.0}  # a frozen generator: untrained
