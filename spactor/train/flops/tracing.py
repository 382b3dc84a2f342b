"""What fvcore's trace of a training step needs besides the op handles: which module an
op belongs to when objectives reach a module through a method (:func:`method_scopes`),
and which parameters the trainer's loss trains (:func:`parameters_with_gradients`).
Tracing concerns stay here, in ``spactor.train.flops``, not in model code."""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn


def parameters_with_gradients(loss: torch.Tensor | None) -> set[int]:
    """ids of the parameters that backward from ``loss`` reaches (walks the autograd
    graph without running it)."""
    reached: set[int] = set()
    if loss is None or loss.grad_fn is None:
        return reached
    stack, seen = [loss.grad_fn], set()
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        variable = getattr(node, "variable", None)  # AccumulateGrad: a leaf that trains
        if variable is not None:
            reached.add(id(variable))
        stack.extend(next_node for next_node, _ in node.next_functions)
    return reached


def is_trained(parts: list[nn.Module], reached: set[int]) -> bool:
    """Trained = some parameter of the part gets a gradient from the trainer's loss.
    A part with no gradient (a frozen generator; one whose loss has weight 0) runs
    forward only. Parameter-free parts (losses) sit on the trained path."""
    params = [p for m in parts for p in m.parameters()]
    return not params or any(id(p) in reached for p in params)


def public_methods(module: nn.Module) -> Iterator[str]:
    """Methods a class defines beyond ``nn.Module`` (``lm_logits``, ``project``, ...)."""
    seen: set[str] = set()
    for cls in type(module).__mro__:
        if cls is nn.Module or not issubclass(cls, nn.Module):
            break
        for name, value in vars(cls).items():
            if name in seen or name.startswith("_") or hasattr(nn.Module, name):
                continue
            if inspect.isfunction(value):
                seen.add(name)
                yield name


@contextlib.contextmanager
def method_scopes(owners: dict[str, nn.Module]) -> Iterator[None]:
    """fvcore attributes an op to the module whose ``__call__`` ran it. Objectives call
    modules through methods (``model.lm_logits``, ``generator.project``) whose ops
    would land on the caller; wrap those methods so they push the owner's trace scope."""

    def scoped(method: Callable[..., Any], name: str) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            state = torch._C._get_tracing_state()
            if state is None:
                return method(*args, **kwargs)
            state.push_scope(name)
            try:
                return method(*args, **kwargs)
            finally:
                state.pop_scope()

        return call

    patched: list[tuple[nn.Module, str]] = []
    try:
        for name, module in owners.items():
            for attr in public_methods(module):
                object.__setattr__(module, attr, scoped(getattr(module, attr), name))
                patched.append((module, attr))
        yield
    finally:
        for module, attr in patched:
            vars(module).pop(attr, None)
