"""Adafactor for FSDP2-sharded parameters.

``torch.optim.Adafactor`` is used wherever it works, but its update squares and scales
partial norms in place, which DTensor refuses for parameters sharded by
``fully_shard`` ("in-place operations that require placement changes are not
supported"). This is the same algorithm — torch's single-tensor path, step for step —
written with out-of-place tensor ops so that DTensor can insert the cross-shard
reductions the factored second moments need. A test checks it against
``torch.optim.Adafactor`` on plain tensors.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch


def _scalar(value: torch.Tensor) -> float:
    if hasattr(value, "full_tensor"):
        value = value.full_tensor()
    return float(value)


class DTensorAdafactor(torch.optim.Optimizer):
    def __init__(
        self,
        params: Iterable[torch.nn.Parameter],
        lr: float = 1e-2,
        beta2_decay: float = -0.8,
        eps: tuple[float | None, float] = (None, 1e-3),
        d: float = 1.0,
        weight_decay: float = 0.0,
    ) -> None:
        # The same param-group keys as torch.optim.Adafactor, so that a checkpoint written
        # by one loads into the other (a sharded run resumed on one device, or back).
        defaults = {
            "lr": lr, "beta2_decay": beta2_decay, "eps": eps, "d": d, "weight_decay": weight_decay,
            "foreach": False, "maximize": False,
        }
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is not None:
                    self._update(param, group)
        return loss

    def _update(self, param: torch.Tensor, group: dict[str, Any]) -> None:
        grad = param.grad
        eps1, eps2 = group["eps"]
        if eps1 is None:
            eps1 = torch.finfo(param.dtype).eps
        state = self.state[param]
        if not state:
            state["step"] = torch.tensor(0.0)
            if grad.dim() > 1:
                state["row_var"] = torch.zeros_like(grad.norm(dim=-1, keepdim=True))
                state["col_var"] = torch.zeros_like(grad.norm(dim=-2, keepdim=True))
            else:
                state["variance"] = torch.zeros_like(grad)
        state["step"] += 1
        step = float(state["step"])
        beta2_t = 1.0 - step ** group["beta2_decay"]
        rho_t = min(group["lr"], 1.0 / math.sqrt(step))
        alpha = max(eps2, _scalar(param.norm(2)) / math.sqrt(param.numel())) * rho_t
        if group["weight_decay"] != 0:
            param.mul_(1 - group["lr"] * group["weight_decay"])

        if grad.dim() > 1:
            row_mean = grad.norm(dim=-1, keepdim=True) ** 2 / grad.size(-1)
            col_mean = grad.norm(dim=-2, keepdim=True) ** 2 / grad.size(-2)
            row_var = state["row_var"] + (row_mean - state["row_var"]) * (1 - beta2_t)
            col_var = state["col_var"] + (col_mean - state["col_var"]) * (1 - beta2_t)
            state["row_var"], state["col_var"] = row_var, col_var
            var_estimate = (row_var @ col_var) / row_var.mean(dim=-2, keepdim=True).clamp(min=eps1)
        else:
            variance = state["variance"] + (grad * grad - state["variance"]) * (1 - beta2_t)
            state["variance"] = variance
            var_estimate = variance
        # eps1 is squared because of the rsqrt, as in torch.optim.Adafactor
        update = var_estimate.clamp(min=eps1 * eps1).rsqrt() * grad
        denom = max(1.0, _scalar(update.norm(2)) / (math.sqrt(update.numel()) * group["d"]))
        if hasattr(param, "placements") and update.placements != param.placements:
            # e.g. a (1, n) weight sharded on its single row: the update comes back replicated
            update = update.redistribute(param.device_mesh, param.placements)
        param.add_(update, alpha=-alpha / denom)
