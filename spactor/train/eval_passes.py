"""Evaluation passes beside the validation losses, declared in ``trainer.eval_passes``.

The validation callback runs :func:`spactor.train.step.evaluate` (every loss of the
current stage on the validation batches) and, on the same batches and in the same
reduction, each pass configured here; a pass's losses are logged as
``val/<pass>/loss/<name>``. The passes (names in ``spactor.config.EVAL_PASSES``):

* ``clean`` (default on): the objectives of the run's last stage on the validation input
  without the objectives that rewrite it with a trained module (SpacTor's generator):
  ``val/clean/loss/span_corruption`` is the loss on X_c where ``val/loss/span_corruption``
  is the loss on the generator-replaced X̂_c (the paper's Figure 4). Logged only while
  such an objective runs (SpacTor's stage 1); ``trainer.eval_passes=[]`` turns it off.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from spactor.config import EVAL_PASSES
from spactor.contract import implements
from spactor.objectives.base import Batch
from spactor.schedules.base import Stages
from spactor.train.device import autocast
from spactor.train.parallel import DistInfo
from spactor.train.step import EvalPass, TrainModules, add_loss_sums, corrupt_local_rows


@dataclass
class CleanPass:
    """``val/clean/loss/<name>`` for ``objectives`` (the last stage's: those that outlive
    SpacTor's stage 1, span corruption) on the same raw batches with only their own
    transforms: the encoder reads X_c, not the generator-replaced X̂_c. Each batch's
    transforms start from the random state the noisy pass started from, so with span
    corruption first among the objectives the spans are the same ones. Nothing when no
    active objective left out rewrites the encoder input with a trained module (a
    ``modify``: SpacTor's generator; stage 2 runs without one): the losses would equal
    ``val/loss``."""

    objectives: list[str]
    name: str = "clean"

    def loss_sums(self, modules: TrainModules, batches: list[Batch], rng_states: list[torch.Tensor],
                  rng_device: torch.device, amp_dtype: torch.dtype | None, device: torch.device,
                  dist_info: DistInfo) -> dict[str, torch.Tensor]:
        active = modules.active_objectives()
        kept = {n: o for n, o in active.items() if n in self.objectives}
        # The objectives kept must run alone, as they do in the stage that keeps them.
        rewrites = any(implements(type(o), "modify") for n, o in active.items() if n not in kept)
        if not kept or not rewrites:
            return {}
        clean_rng = torch.Generator(device=rng_device)
        sums: dict[str, torch.Tensor] = {}
        for batch, state in zip(batches, rng_states):
            clean_rng.set_state(state)
            batch = corrupt_local_rows(kept, batch, clean_rng, dist_info)
            with autocast(amp_dtype, device):
                losses, _ = modules(batch, clean_rng, modules.context(batch, only=list(kept)), only=list(kept))
            add_loss_sums(sums, losses)
        return sums


def build_eval_passes(names: Sequence[str], stages: Stages, objectives: Mapping[str, Any]) -> list[EvalPass]:
    """The passes ``trainer.eval_passes`` names, in its order, for a run whose stages are
    ``stages`` (call it with every objective built, before any is released)."""
    builders = {"clean": lambda: CleanPass(stages.final_objectives(objectives))}
    assert set(builders) == set(EVAL_PASSES)  # one list of names for the config check and here
    return [builders[name]() for name in names]
