"""The forward and losses of ``TrainModules`` trace into one graph: no graph break for
the recipes the GPU step is built for (static shapes: MLM positions as a fixed-size
index, counter-based sampling noise, metrics off between logging steps)."""

from __future__ import annotations

import pytest
import torch

from spactor.train.step import corrupt_local_rows, row_noise_seeds

from test_host_syncs import build_step  # tests/train is on sys.path (rootdir conftest, no package)


@pytest.mark.parametrize(("recipe", "overrides"), [
    ("sc", []),
    ("spactor", []),
    ("spactor", ["schedules.two_stage.tau=0"]),
    ("electra", []),
    ("fast_electra", []),
    ("sc", ["model.arch=t5gemma"]),  # RoPE, per-layer masks, no padding mask
    ("spactor", ["model.arch=t5gemma"]),
])
def test_train_modules_forward_has_no_graph_break(recipe, overrides, tiny_overrides, tmp_path):
    modules, _, ctx, batches = build_step(recipe, [*overrides, "optimizer.type=adamw"], tiny_overrides,
                                          tmp_path)
    objectives = dict(modules.objectives.items())
    batch = corrupt_local_rows(objectives, next(batches), ctx.transform_rng, ctx.dist)
    batch["noise_seed"] = row_noise_seeds(ctx.modify_rng, batch["encoder_input"].shape[0], ctx.dist)

    mb_ctx = modules.context(batch)
    weights = modules.loss_weights(mb_ctx.counts)  # the step's, read outside the forward

    def forward_and_loss(batch, mb_ctx):
        losses, _ = modules(batch, ctx.modify_rng, mb_ctx)
        return sum(weights[name] * total for name, (total, _) in losses.items())

    torch._dynamo.reset()
    explained = torch._dynamo.explain(forward_and_loss)(batch, mb_ctx)
    torch._dynamo.reset()
    reasons = [f"{b.reason.splitlines()[0]} at {b.user_stack[-1] if b.user_stack else '?'}"
               for b in explained.break_reasons]
    assert explained.graph_break_count == 0, reasons
    assert explained.graph_count == 1
