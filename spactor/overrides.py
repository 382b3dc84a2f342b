"""Functions that a ``TorchFunctionMode`` sees as one call, as it sees torch's own.

A mode (``torch.overrides.TorchFunctionMode``) receives each torch function a program
calls; :func:`overridable` gives a function of ours the same protocol
(``torch.overrides.handle_torch_function``), so code that needs another form of a
computation (the FLOP tracer in ``spactor.train.flops``, which cannot see a fused
autograd ``Function`` or FlexAttention) substitutes it from outside, and the model and
loss code keep one form and know nothing about who watches. With no mode active the
check is one C call (and a constant under ``torch.compile``).

A mode that lets such a call through should run :data:`IMPLEMENTATIONS` ``[func]``
under itself (``with mode:``): calling ``func`` again would hand the call back to the
mode, and calling it with the mode popped (torch's default) would hide every torch call
inside from the mode. :class:`SubstitutingMode` does both.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any, TypeVar

import torch
from torch.overrides import TorchFunctionMode, handle_torch_function

Fn = TypeVar("Fn", bound=Callable[..., Any])

# public function -> the implementation it wraps
IMPLEMENTATIONS: dict[Callable[..., Any], Callable[..., Any]] = {}


def overridable(fn: Fn) -> Fn:
    """``fn``, visible to an active ``TorchFunctionMode`` as ``func is <the returned function>``."""

    @functools.wraps(fn)
    def public(*args: Any, **kwargs: Any) -> Any:
        if torch._C._is_torch_function_mode_enabled():
            return handle_torch_function(public, (), *args, **kwargs)
        return fn(*args, **kwargs)

    IMPLEMENTATIONS[public] = fn
    return public  # type: ignore[return-value]


class SubstitutingMode(TorchFunctionMode):
    """A mode that runs ``forms[func]`` in place of each overridable ``func`` it lists,
    and every other overridable function's own implementation, both under itself (so
    the torch calls inside are seen as every other call is); anything else goes to
    :meth:`passthrough`."""

    forms: dict[Callable[..., Any], Callable[..., Any]] = {}

    def __torch_function__(
        self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None
    ) -> Any:
        kwargs = kwargs or {}
        form = self.forms.get(func, IMPLEMENTATIONS.get(func))
        if form is None:
            return self.passthrough(func, types, args, kwargs)
        with self:
            return form(*args, **kwargs)

    def passthrough(self, func: Any, types: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        return func(*args, **kwargs)


def bound_arguments(
    func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> dict[str, Any]:
    """The arguments of a call to the overridable ``func``, by parameter name, defaults filled in."""
    bound = inspect.signature(IMPLEMENTATIONS[func]).bind(*args, **kwargs)
    bound.apply_defaults()
    return dict(bound.arguments)
