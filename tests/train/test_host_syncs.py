"""A steady-state training step makes the host wait for the device at most once (the
update decision) and runs no op whose output shape depends on tensor values.

Counted with ``spactor.train.syncs.SyncCounter`` (the device check's counter too) over
whole ``train_step`` calls after two warm-up steps: syncs are ``_local_scalar_dense``
(what ``.item()``, ``float(t)``, ``bool(t)`` and ``int(t)`` dispatch to), ``equal`` and
``is_nonzero``; ``nonzero``, ``masked_select``, ``unique``, indexing with a boolean mask
and ``repeat_interleave`` by a tensor have data-dependent output shapes (each a sync on a GPU). On CPU every op
dispatches the same way it does on CUDA, so the counts carry over.

Adafactor (spactor's own) reads nothing on the host. AdamW runs ``fused`` as it does by default on CUDA: the foreach path reads each
parameter's step counter with ``.item()`` (a CPU tensor, so no device sync on a GPU, but
it would count here).
"""

from __future__ import annotations

import warnings

import pytest
import torch

from spactor.config import load_config
from spactor.plugins import load_plugins
from spactor.registry import OPTIMIZERS
from spactor.train.batches import build_data
from spactor.train.parallel import DistInfo
from spactor.train.stages import knob_values, trainable_parameters
from stage1 import release_stage1  # tests/train/stage1.py
from spactor.train.step import StepContext, TrainModules, train_step
from spactor.train.syncs import SyncCounter
from spactor.train.builders import build_model, build_objectives, raw_length_for, seeded_generator
from spactor.schedules.base import build as build_schedules

load_plugins()

ADAMW = ["optimizer.type=adamw", "optimizer.fused=true"]
CASES = [
    pytest.param("sc", ADAMW, id="sc-adamw"),
    pytest.param("sc", ["optimizer.type=adafactor"], id="sc-adafactor"),
    # stage 1: span corruption + MLM masking + RTD
    pytest.param("spactor", ADAMW, id="spactor1-adamw"),
    pytest.param("spactor", ["optimizer.type=adafactor"], id="spactor1-adafactor"),
    # stage 2 from the first step
    pytest.param("spactor", ["schedules.two_stage.tau=0", *ADAMW], id="spactor2-adamw"),
    pytest.param("spactor", ["schedules.two_stage.tau=0", "optimizer.type=adafactor"], id="spactor2-adafactor"),
    pytest.param("electra", ADAMW, id="electra-adamw"),  # ELECTRA's own optimizer
    # a frozen generator (its random init: the syncs do not depend on the weights)
    pytest.param("fast_electra", ADAMW, id="fast_electra-adamw"),
    # decoder-only: causal LM, and UL2 in the decoder layout (bidirectional prefix mask)
    pytest.param("causal_lm", ADAMW, id="causal_lm-adamw"),
    pytest.param("ul2_decoder", ADAMW, id="ul2_decoder-adamw"),
    # t5gemma: no padding mask for SC's unpadded input, SpacTor's generator beside it
    pytest.param("sc", [*ADAMW, "model.arch=t5gemma"], id="sc-t5gemma-adamw"),
    pytest.param("spactor", [*ADAMW, "model.arch=t5gemma"], id="spactor1-t5gemma-adamw"),
]


def build_step(recipe: str, overrides: list[str], tiny_overrides: list[str], tmp_path):
    resolved = load_config(recipe, [*tiny_overrides, f"run.dir={tmp_path}", "runtime.count_flops=false",
                                    "trainer.batch_size=2", *overrides])
    cpu = torch.device("cpu")
    data = build_data(resolved, cpu, None)
    torch.manual_seed(0)
    model = build_model(resolved, data.vocab)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # fast_electra: a frozen generator without a checkpoint
        objectives = build_objectives(resolved, data.vocab, model)
    data.start(raw_length_for(objectives, resolved.cfg.data.input_length), batch_size=2)
    modules = TrainModules(model, objectives, data.vocab.pad_id)
    if build_schedules(resolved.schedules, knob_values(objectives), 10).stage(0) == 2:
        release_stage1(modules, objectives, optimizer=None)  # tau = 0: stage 2 from the start
    optimizer = OPTIMIZERS.get(resolved.optimizer.type).factory(resolved.optimizer.config,
                                                                trainable_parameters(modules))
    ctx = StepContext(DistInfo(), seeded_generator(1, cpu), seeded_generator(2, cpu),
                      clip_grad_norm=resolved.cfg.trainer.clip_grad_norm)
    return modules, optimizer, ctx, iter(data.train_batches())


@pytest.mark.parametrize(("recipe", "overrides"), CASES)
def test_steady_state_step_syncs_at_most_once(recipe, overrides, tiny_overrides, tmp_path):
    modules, opt, ctx, batches = build_step(recipe, overrides, tiny_overrides, tmp_path)
    for _ in range(2):  # warm-up: optimizer state, lazy buffers
        train_step(modules, opt, next(batches), ctx, with_metrics=False)
    steps = 3
    counter = SyncCounter()
    with counter:
        for _ in range(steps):
            out = train_step(modules, opt, next(batches), ctx, with_metrics=False)
    assert out.applied
    assert counter.data_dependent == [], counter.data_dependent
    assert len(counter.syncs) <= steps, f"{len(counter.syncs)} host syncs in {steps} steps"


def test_a_logging_step_has_static_shapes_too(tiny_overrides, tmp_path):
    """Metrics (RTD precision/recall/AUC, accuracies) add reads only where the runner
    reads them, and no data-dependent shapes either."""
    modules, opt, ctx, batches = build_step("spactor", ADAMW, tiny_overrides, tmp_path)
    train_step(modules, opt, next(batches), ctx)
    counter = SyncCounter()
    with counter:
        out = train_step(modules, opt, next(batches), ctx, with_metrics=True)
    assert {"rtd/auc", "rtd/precision", "rtd/generator_accuracy", "span_corruption/accuracy"} <= set(out.logged)
    assert counter.data_dependent == [], counter.data_dependent
    assert len(counter.syncs) <= 1
