"""Build on the meta device, shard, then materialise and initialise on the target device.

torchtitan's order (``with torch.device("meta")``, ``fully_shard``, ``to_empty``,
initialise), so that no rank ever holds the full model in host memory, with one
addition: the initial weights are *exactly* those the eager build gives for the same
seed. An eager build draws from the global RNG twice per weight — torch's default
``reset_parameters`` of every ``nn.Linear``/``nn.Embedding`` as it is constructed, then
the architecture's own ``init_weights`` — and the values of a weight depend on every
draw before it. So while the modules are built on ``meta`` the ``nn.init`` calls that
write parameters are recorded, in order (:class:`InitProgram`); after sharding the
program is replayed on the real storage from the RNG state the build started with.
Each recorded call overwrites its whole parameter; a sharded (DTensor) parameter is
initialised as a full tensor on the device, one parameter at a time, and the rank
keeps its shard, so the initial model does not depend on the number of ranks either.

A call that writes a parameter in any other way (``copy_``, ``mul_``) cannot be
replayed: recording stops with :class:`NotReplayable` and the caller builds eagerly.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode


def _has_src_data_rank() -> bool:
    import inspect

    try:
        from torch.distributed.tensor import distribute_tensor
    except ImportError:  # a build without distributed
        return False
    return "src_data_rank" in inspect.signature(distribute_tensor).parameters


_HAS_SRC_DATA_RANK = _has_src_data_rank()

# Calls that overwrite every element of their first argument (so replaying them on a
# fresh tensor gives the same value) and consume the RNG exactly as on the real tensor.
_OVERWRITING: frozenset[Callable[..., Any]] = frozenset(
    {
        nn.init.normal_,
        nn.init.uniform_,
        nn.init.trunc_normal_,
        nn.init.constant_,
        nn.init.ones_,
        nn.init.zeros_,
        nn.init.kaiming_uniform_,
        nn.init.kaiming_normal_,
        nn.init.xavier_uniform_,
        nn.init.xavier_normal_,
        torch.Tensor.normal_,
        torch.Tensor.uniform_,
        torch.Tensor.fill_,
        torch.Tensor.zero_,
    }
)


_NOT_WRITES = frozenset({"requires_grad_", "share_memory_", "retain_grad"})  # in-place, but not on the data


def _writes(func: Any) -> bool:
    name = getattr(func, "__name__", "")
    return name.endswith("_") and not name.startswith("__") and name not in _NOT_WRITES


class NotReplayable(RuntimeError):
    """The build wrote a parameter in a way the init program cannot replay."""


@dataclass
class _Call:
    param: torch.Tensor | None  # the meta parameter while recording; None once bound
    func: Callable[..., Any]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    shape: torch.Size
    dtype: torch.dtype
    name: str | None = None  # the parameter's path in the bound root (None: not part of it)


class _Recorder(TorchFunctionMode):
    def __init__(self, calls: list[_Call]) -> None:
        super().__init__()
        self.calls = calls

    def __torch_function__(self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        # nn.init passes its tensor by keyword when it defers to a mode
        target = args[0] if args else kwargs.get("tensor")
        if isinstance(target, nn.Parameter):
            if func in _OVERWRITING:
                if kwargs.get("generator") is not None:
                    raise NotReplayable(f"{func.__name__} with an explicit generator")
                rest = {k: v for k, v in kwargs.items() if k != "tensor"}
                self.calls.append(_Call(target, func, tuple(args[1:]), rest, target.shape, target.dtype))
            elif _writes(func):
                raise NotReplayable(f"{func.__name__} writes a parameter during the build")
        return func(*args, **kwargs)


class InitProgram:
    """The parameter writes of one build, replayable on materialised (and sharded) modules."""

    def __init__(self) -> None:
        self.calls: list[_Call] = []
        self.cpu_rng_state = torch.get_rng_state()
        self.cuda_rng_states = (
            torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
        )

    def bind(self, root: nn.Module) -> None:
        """Name every recorded parameter by its path in ``root`` (call before any module is
        dropped or sharded: the names survive both; the meta parameters are released)."""
        names: dict[int, str] = {}
        for name, param in root.named_parameters(remove_duplicate=False):
            names.setdefault(id(param), name)
        for call in self.calls:
            if call.param is not None:
                call.name = names.get(id(call.param))
                call.param = None

    def materialize(self, root: nn.Module, device: torch.device) -> None:
        """Allocate ``root``'s storage on ``device`` (only the local shard of a sharded
        parameter) and replay the program there. Buffers built off ``meta`` (explicit
        ``device=``) keep their values; a buffer left on ``meta`` is an error."""
        kept = {name: buf for name, buf in root.named_buffers() if not buf.is_meta}
        on_meta = [name for name, buf in root.named_buffers() if buf.is_meta]
        if on_meta:
            raise RuntimeError(
                f"buffer {on_meta[0]} was built on the meta device and cannot be restored: "
                "build it with an explicit device= (its value is not a parameter init)"
            )
        root.to_empty(device=device)
        with torch.no_grad():
            for name, value in kept.items():
                _lookup(root, name, buffer=True).copy_(value)
        written: set[str] = set()
        devices = [device.index if device.index is not None else torch.cuda.current_device()] \
            if device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), torch.no_grad():
            torch.set_rng_state(self.cpu_rng_state)
            if device.type == "cuda" and self.cuda_rng_states is not None:
                torch.cuda.set_rng_state(self.cuda_rng_states[devices[0]], devices[0])
            for call in self.calls:
                target = _lookup(root, call.name) if call.name is not None else None
                _replay(call, target, device)
                if target is not None:
                    written.add(call.name)  # type: ignore[arg-type]
        missing = [n for n, _ in root.named_parameters() if n not in written]
        if missing:
            raise RuntimeError(
                f"parameter {missing[0]} is never initialised by its module "
                f"({len(missing)} such); give the module an init that writes it with nn.init"
            )


def _lookup(root: nn.Module, name: str, buffer: bool = False) -> torch.Tensor | None:
    module_path, _, attr = name.rpartition(".")
    try:
        module = root.get_submodule(module_path) if module_path else root
    except AttributeError:
        return None
    table = module._buffers if buffer else module._parameters
    return table.get(attr)


def _replay(call: _Call, target: torch.Tensor | None, device: torch.device) -> None:
    from torch.distributed.tensor import DTensor, distribute_tensor

    if target is not None and not isinstance(target, DTensor):
        call.func(target, *call.args, **call.kwargs)
        return
    # A dropped module's parameter (the RNG must still advance) or a sharded one: the
    # whole tensor on the device, then this rank's shard of it.
    full = torch.empty(call.shape, dtype=call.dtype, device=device)
    call.func(full, *call.args, **call.kwargs)
    if target is not None:
        # every rank computed the same full tensor: keep the local shard, no scatter
        # (src_data_rank arrived in torch 2.7; before it, rank 0's copy is scattered)
        extra = {"src_data_rank": None} if _HAS_SRC_DATA_RANK else {}
        shard = distribute_tensor(full, target.device_mesh, target.placements, **extra)
        target.to_local().copy_(shard.to_local())


@contextlib.contextmanager
def record_init() -> Iterator[InitProgram]:
    """Build the modules created inside on ``meta`` and record their initialisation."""
    program = InitProgram()
    with torch.device("meta"), _Recorder(program.calls):
        yield program
