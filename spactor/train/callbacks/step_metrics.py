"""The step's losses, metrics and gradient norm, averaged over the logging window."""

from __future__ import annotations

from typing import Any

import torch

from spactor.train.callbacks.base import Callback, LoopState
from spactor.train.metrics import MetricWindow


class StepMetrics(Callback):
    """Adds each step's recorded values (``StepOutput.logged``: the loss, the losses, the
    gradient norm and the objectives' metrics, each with its reduction) to a
    :class:`MetricWindow` (on the device, no host read), and logs their means over the
    window with the learning rate.

    The window is per-rank state (each rank's sums are its shares of the global values)
    and goes into the rank's local checkpoint file: a run resumed inside a window logs
    the mean over the whole window, as if it had not stopped. A checkpoint written by
    another number of ranks starts a fresh window."""

    name = "metrics"
    per_rank = True

    def __init__(self, optimizer: torch.optim.Optimizer, device: torch.device) -> None:
        self.optimizer = optimizer
        self.device = device
        self.window = MetricWindow()

    def post_step(self, state: LoopState, out: Any) -> None:
        self.window.add(out.logged)

    def log(self, state: LoopState, record: dict[str, Any]) -> None:
        values = self.window.read()  # one all-reduce per reduction kind and one host sync per logging window
        record["loss"] = values.pop("loss")
        grad_norm = values.pop("grad_norm")
        record.update(values)
        record["lr"] = self.optimizer.param_groups[0]["lr"]
        record["grad_norm"] = grad_norm

    def state_dict(self) -> dict[str, Any]:
        return self.window.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.window.load_state_dict(state, self.device)
