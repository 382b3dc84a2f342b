"""T5's Adafactor (Mesh TensorFlow's ``AdafactorOptimizer``) for plain tensors and for
FSDP2 shards, with a constant number of collectives per step.

The algorithm, per parameter ``p`` with gradient ``g`` at step ``t`` (1-based; all
arithmetic in fp32):

* ``g² + ε1`` (ε1 = 1e-30, added as Mesh TF does, not squared);
* decay ``β_t = 1 − t^-0.8``; the second moment is an exponential average with weight
  ``1 − β_t`` on the new value, so step 1 takes the new statistics whole;
* *factored* when the parameter's two largest dims are both ≥ ``min_dim_size_to_factor``
  (128, T5X and Mesh TF): ``row_var`` averages ``g² + ε1`` over the larger-index one of
  those dims ``b``, ``col_var`` over the smaller-index one ``a``, and the update is
  ``x = g · rsqrt(row_var / mean_a(row_var)) · rsqrt(col_var)`` — that is, ``g / √v̂`` with
  ``v̂ = row_var ⊗ col_var / mean(row_var)``. Mesh TF names the two dims by size rather
  than position; the estimate is symmetric in them, so the result is the same, and for
  the 2-D tensors of a T5 the dims are simply the rows and the columns. For ≥ 3-D
  parameters the two largest dims are reduced (ties: the lower index first, as Python's
  stable sort in Mesh TF does) and the others are kept, as in Mesh TF; otherwise a full
  ``variance`` is kept and ``x = g · rsqrt(v)``;
* update clipping: ``x /= max(1, RMS(x) / clipping_threshold)``;
* ``p -= lr · max(ε2, RMS(p)) · x`` (``multiply_by_parameter_scale``, ε2 = 1e-3, RMS of
  the value before the update). No momentum (T5: β1 = 0).

``lr`` is exactly the group's ``lr`` — the value the runner's ``lr_schedule`` wrote — so
the logged learning rate is the one the update used (``torch.optim.Adafactor`` would
take ``min(lr, 1/√t)`` on top).

FSDP2 (``fully_shard``) shards a parameter on dim 0. Every reduction over a dim other
than 0 is then local to the shard; the sums over dim 0 (``col_var`` when ``a`` = 0, the
mean of ``row_var`` over it) and the RMS values of ``p`` and ``x`` are partial sums that
are added across the shard group. The step packs all the partial sums of all parameters
into one flat buffer per round and all-reduces it once: two all-reduces per step,
whatever the number of parameters. There is no host sync in ``step()``: the step count
lives on the device and the learning rate is the group's python float (or tensor).

State per parameter (the keys of ``torch.optim.Adafactor``): ``step`` (0-d fp32, the same
for every parameter of a group), and either ``row_var`` / ``col_var`` or ``variance``.
For a sharded parameter they are DTensors on its mesh (``Shard(0)`` when they keep dim
0, ``Replicate()`` when it was reduced away) so that ``torch.distributed.checkpoint``
saves and reshards them like the weights, and a run resumes on any number of ranks.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor, Replicate, Shard

STATE_KEYS = ("step", "row_var", "col_var", "variance")


def factored_dims(shape: tuple[int, ...], min_dim_size_to_factor: int) -> tuple[int, int] | None:
    """The two dims (a < b) a factored second moment reduces over, or None to keep it
    whole: Mesh TF's rule, the two largest dims, both at least ``min_dim_size_to_factor``."""
    if len(shape) < 2:
        return None
    by_size = sorted(range(len(shape)), key=lambda i: -shape[i])  # stable: ties keep index order
    first, second = by_size[0], by_size[1]
    if shape[second] < min_dim_size_to_factor:
        return None
    return min(first, second), max(first, second)


@dataclass(frozen=True)
class _Layout:
    """What a parameter's update needs to know about its shape and sharding (no tensors)."""

    shape: tuple[int, ...]  # global shape
    numel: int
    dims: tuple[int, int] | None  # factored over (a, b), or None
    mesh: Any  # DeviceMesh of a DTensor parameter, else None
    group: Any  # the process group its dim 0 is sharded over, or None (local = whole)

    @property
    def sharded(self) -> bool:
        return self.group is not None

    @property
    def col_needs_reduce(self) -> bool:
        # col_var and the mean of row_var reduce over dim a; a = 0 is the sharded dim
        return self.sharded and self.dims is not None and self.dims[0] == 0


def _local(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if isinstance(t, DTensor) else t


def _layout_of(p: torch.Tensor, min_dim_size_to_factor: int) -> _Layout:
    shape = tuple(p.shape)
    dims = factored_dims(shape, min_dim_size_to_factor)
    if not isinstance(p, DTensor):
        return _Layout(shape, p.numel(), dims, None, None)
    placements = tuple(p.placements)
    if p.device_mesh.ndim != 1 or placements[0] not in (Shard(0), Replicate()):
        raise NotImplementedError(
            "Adafactor supports parameters sharded on dim 0 over a 1-D mesh (FSDP2), "
            f"not placements {placements}"
        )
    group = p.device_mesh.get_group() if placements[0] == Shard(0) and p.device_mesh.size() > 1 else None
    return _Layout(shape, p.numel(), dims, p.device_mesh, group)


class _Plan:
    """Per-step constants for a fixed list of parameters, built once and reused while the
    parameters with gradients stay the same: their order (sharded first, grouped by
    process group), layouts and the element counts as a device tensor."""

    def __init__(self, layouts: list[_Layout], device: torch.device) -> None:
        # indices into the group's parameters with gradients; no references to the
        # parameters themselves, so that those dropped at the stage switch are freed
        self.order = sorted(range(len(layouts)), key=lambda i: (not layouts[i].sharded, id(layouts[i].group)))
        self.layouts = [layouts[i] for i in self.order]
        self.groups: list[tuple[Any, int, int]] = []  # (process group, first, end) over self.params
        for i, lay in enumerate(self.layouts):
            if not lay.sharded:
                break
            if self.groups and self.groups[-1][0] is lay.group:
                self.groups[-1] = (lay.group, self.groups[-1][1], i + 1)
            else:
                self.groups.append((lay.group, i, i + 1))
        self.numel = torch.tensor([float(lay.numel) for lay in self.layouts], device=device)
        self.factored = [i for i, lay in enumerate(self.layouts) if lay.dims is not None]
        self.whole = [i for i, lay in enumerate(self.layouts) if lay.dims is None]
        # for each factored tensor: its dims (a, b), their global sizes, and whether the
        # sums over a are partial (a = 0, sharded)
        self.dims = [self.layouts[i].dims for i in self.factored]
        self.size_a = [float(self.layouts[i].shape[a]) for i, (a, _) in zip(self.factored, self.dims)]
        self.size_b = [float(self.layouts[i].shape[b]) for i, (_, b) in zip(self.factored, self.dims)]
        self.reduce_a = [k for k, i in enumerate(self.factored) if self.layouts[i].col_needs_reduce]


class Adafactor(torch.optim.Optimizer):
    """See the module docstring. ``lr`` is overwritten by the runner before every step."""

    def __init__(
        self,
        params: Iterable[torch.nn.Parameter] | Iterable[dict[str, Any]],
        lr: float = 1e-2,
        eps1: float = 1e-30,
        eps2: float = 1e-3,
        beta2_decay: float = -0.8,
        clipping_threshold: float = 1.0,
        min_dim_size_to_factor: int = 128,
        multiply_by_parameter_scale: bool = True,
        weight_decay: float = 0.0,
    ) -> None:
        defaults = {
            "lr": lr, "eps1": eps1, "eps2": eps2, "beta2_decay": beta2_decay,
            "clipping_threshold": clipping_threshold, "min_dim_size_to_factor": min_dim_size_to_factor,
            "multiply_by_parameter_scale": multiply_by_parameter_scale, "weight_decay": weight_decay,
        }
        super().__init__(params, defaults)
        self._plans: dict[int, tuple[tuple[int, ...], _Plan]] = {}

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for index, group in enumerate(self.param_groups):
            params = [p for p in group["params"] if p.grad is not None]
            if params:
                plan = self._plan(index, group, params)
                self._step_group(plan, [params[i] for i in plan.order], group)
        return loss

    def _plan(self, index: int, group: dict[str, Any], params: list[torch.Tensor]) -> _Plan:
        key = (*(id(p) for p in params), group["min_dim_size_to_factor"])
        cached = self._plans.get(index)
        if cached is None or cached[0] != key:
            layouts = [_layout_of(p, group["min_dim_size_to_factor"]) for p in params]
            cached = (key, _Plan(layouts, _local(params[0]).device))
            self._plans[index] = cached
        return cached[1]

    def _init_state(self, p: torch.Tensor, lay: _Layout) -> dict[str, Any]:
        state = self.state[p]
        if state:
            return state
        local = _local(p)
        zeros = lambda shape: torch.zeros(shape, dtype=torch.float32, device=local.device)  # noqa: E731
        state["step"] = zeros(())
        if lay.dims is None:
            state["variance"] = self._wrap(zeros(local.shape), lay, lay.shape, keeps_dim0=True)
        else:
            a, b = lay.dims
            row, col = _collapse(local.shape, b), _collapse(local.shape, a)
            state["row_var"] = self._wrap(zeros(row), lay, _collapse(lay.shape, b), keeps_dim0=True)
            state["col_var"] = self._wrap(zeros(col), lay, _collapse(lay.shape, a), keeps_dim0=a != 0)
        return state

    @staticmethod
    def _wrap(local: torch.Tensor, lay: _Layout, shape: tuple[int, ...], keeps_dim0: bool) -> torch.Tensor:
        """State of a DTensor parameter as a DTensor on its mesh, so that DCP saves the
        shards of what is sharded and one copy of what is replicated."""
        if lay.mesh is None:
            return local
        placement = Shard(0) if keeps_dim0 and lay.group is not None else Replicate()
        return DTensor.from_local(
            local, lay.mesh, [placement], run_check=False, shape=shape, stride=_strides(shape)
        )

    def _step_group(self, plan: _Plan, ordered: list[torch.Tensor], group: dict[str, Any]) -> None:
        lr, eps1, eps2 = group["lr"], group["eps1"], group["eps2"]
        states = [self._init_state(p, lay) for p, lay in zip(ordered, plan.layouts)]
        device = plan.numel.device
        for s in states:  # e.g. a checkpoint's step loaded onto the CPU
            if s["step"].device != device:
                s["step"] = s["step"].to(device)
        steps = [s["step"] for s in states]
        # One step count for the group (Mesh TF's global step): a parameter that joins
        # later, or skipped a step without a gradient, takes the group's count.
        t = torch.stack(steps).amax() + 1.0
        torch._foreach_copy_(steps, [t] * len(steps))
        mix = t.pow(group["beta2_decay"])  # 1 − β_t, the weight of the new statistics
        decay = 1.0 - mix

        params = [_local(p) for p in ordered]
        grads = [_local(p.grad).float() for p in ordered]
        params32 = [q if q.dtype == torch.float32 else q.float() for q in params]
        grad_sq = torch._foreach_mul(grads, grads)
        torch._foreach_add_(grad_sq, eps1)

        # ---- round 1: Σp² of every tensor; Σ_a (g² + ε1) and Σ_a row_var where a is sharded
        sq_p = torch.stack(torch._foreach_norm(params32)).square()
        factored_grads = [grads[i] for i in plan.factored]
        factored_sq = [grad_sq[i] for i in plan.factored]
        rows = [_local(states[i]["row_var"]) for i in plan.factored]
        cols = [_local(states[i]["col_var"]) for i in plan.factored]
        row_sums: list[torch.Tensor] = []
        col_sums: list[torch.Tensor] = []
        if rows:
            row_means = [g2.sum(dim=b, keepdim=True) for g2, (_, b) in zip(factored_sq, plan.dims)]
            torch._foreach_div_(row_means, plan.size_b)
            _ema_(rows, row_means, decay, mix)
            col_sums = [g2.sum(dim=a, keepdim=True) for g2, (a, _) in zip(factored_sq, plan.dims)]
            row_sums = [r.sum(dim=a, keepdim=True) for r, (a, _) in zip(rows, plan.dims)]
        partial = [col_sums[k] for k in plan.reduce_a] + [row_sums[k] for k in plan.reduce_a]
        sq_p, summed = self._all_reduce(plan, sq_p, partial)
        for j, k in enumerate(plan.reduce_a):
            col_sums[k], row_sums[k] = summed[j], summed[len(plan.reduce_a) + j]

        # ---- the unclipped update x = g / √v̂
        updates: list[torch.Tensor] = [None] * len(params)  # type: ignore[list-item]
        if rows:
            torch._foreach_div_(col_sums, plan.size_a)
            _ema_(cols, col_sums, decay, mix)
            torch._foreach_div_(row_sums, plan.size_a)  # mean_a(row_var) = mean(v̂)
            r_factor = torch._foreach_div(rows, row_sums)
            torch._foreach_rsqrt_(r_factor)
            x = torch._foreach_mul(factored_grads, r_factor)
            torch._foreach_mul_(x, torch._foreach_rsqrt(cols))
            for k, i in enumerate(plan.factored):
                updates[i] = x[k]
        if plan.whole:
            variances = [_local(states[i]["variance"]) for i in plan.whole]
            _ema_(variances, [grad_sq[i] for i in plan.whole], decay, mix)
            x = torch._foreach_rsqrt(variances)
            torch._foreach_mul_(x, [grads[i] for i in plan.whole])
            for k, i in enumerate(plan.whole):
                updates[i] = x[k]
        del grad_sq, factored_sq

        # ---- round 2: Σx² for update clipping
        sq_x = torch.stack(torch._foreach_norm(updates)).square()
        sq_x, _ = self._all_reduce(plan, sq_x, [])
        clip = (sq_x / plan.numel).sqrt_().div_(group["clipping_threshold"]).clamp_min_(1.0)
        if group["multiply_by_parameter_scale"]:
            scale = (sq_p / plan.numel).sqrt_().clamp_min_(eps2).mul_(lr)
        else:
            scale = torch.full_like(clip, 1.0).mul_(lr)
        factor = scale.div_(clip)

        if group["weight_decay"] != 0:
            torch._foreach_mul_(params, 1.0 - lr * group["weight_decay"])
        torch._foreach_mul_(updates, list(factor.unbind(0)))
        torch._foreach_sub_(params, updates)

    @staticmethod
    def _all_reduce(
        plan: _Plan, per_param: torch.Tensor, pieces: list[torch.Tensor]
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Sum over each shard group, in one all-reduce per group: the entries of
        ``per_param`` for its parameters and the partial sums in ``pieces`` (which belong
        to sharded parameters, all of one group in practice)."""
        if not plan.groups:
            return per_param, pieces
        if len(plan.groups) > 1 and pieces:
            raise NotImplementedError("Adafactor: parameters sharded over more than one process group")
        out = per_param.clone()
        for g, (pg, first, end) in enumerate(plan.groups):
            parts = [per_param[first:end]] + ([p.reshape(-1) for p in pieces] if g == 0 else [])
            flat = torch.cat(parts)
            dist.all_reduce(flat, group=pg)
            out[first:end] = flat[: end - first]
            if g == 0 and pieces:
                sizes = [p.numel() for p in pieces]
                pieces = [v.view(p.shape) for v, p in zip(flat[end - first :].split(sizes), pieces)]
        return out, pieces


def _ema_(
    averages: list[torch.Tensor], values: list[torch.Tensor], decay: torch.Tensor, mix: torch.Tensor
) -> None:
    """averages ← averages · β + values · (1 − β), in place (Mesh TF's form)."""
    torch._foreach_mul_(averages, decay)
    torch._foreach_add_(averages, torch._foreach_mul(values, mix))


def _collapse(shape: tuple[int, ...] | torch.Size, dim: int) -> tuple[int, ...]:
    return tuple(1 if i == dim else s for i, s in enumerate(shape))


def _strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    strides, acc = [], 1
    for s in reversed(shape):
        strides.append(acc)
        acc *= max(s, 1)
    return tuple(reversed(strides))
