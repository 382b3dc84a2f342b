"""Process groups, FSDP2, activation checkpointing and per-block compile.

Applied in this order, as torchtitan does: activation checkpointing wraps each block,
then each block is compiled, then ``fully_shard`` shards each block and finally the
root. The root is :class:`~spactor.train.loop.TrainModules`, whose ``forward`` runs
the whole step, so parameters outside the blocks (the shared token embedder, the tied
head, relative-bias tables, final norms) are gathered once per step by the root and
every use of them — the discriminator's and the generator's — sees the full tensor.
The generator and the RTD head are FSDP units of their own so that the switch to stage
2 can drop them whole.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from spactor.architectures.flex_dense import DenseFlex


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: torch.device) -> DistInfo:
    """Join the process group torchrun describes in the environment (NCCL on GPUs, gloo
    on CPU); a plain ``spactor train`` is a world of one and needs no group."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend=backend)
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank)


def rank_device(device: torch.device, info: DistInfo) -> torch.device:
    if device.type == "cuda" and info.world_size > 1:
        return torch.device("cuda", info.local_rank)
    if device.type == "cuda" and device.index is None:
        # one process: the current device, by index (torch.cuda.set_device refuses a bare "cuda")
        return torch.device("cuda", torch.cuda.current_device())
    return device


def shutdown_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def world_info() -> DistInfo:
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
    return DistInfo()


def all_reduce_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """Sum a (small, stacked) tensor over ranks in place, in one collective; no host
    sync (a no-op in a world of one)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(tensor)
    return tensor


# --------------------------------------------------------------------------- wrapping


def _selective_policy(ctx: Any, op: Any, *args: Any, **kwargs: Any) -> Any:
    from torch.utils.checkpoint import CheckpointPolicy

    return CheckpointPolicy.MUST_SAVE if op in _SAVED_OPS else CheckpointPolicy.PREFER_RECOMPUTE


_SAVED_OPS = {torch.ops.aten.mm.default, torch.ops.aten.addmm.default, torch.ops.aten.bmm.default,
              torch.ops.aten._scaled_dot_product_efficient_attention.default,
              torch.ops.aten._scaled_dot_product_flash_attention.default}


def _dense_flex(forward: Any, *args: Any, **kwargs: Any) -> Any:
    with DenseFlex():
        return forward(*args, **kwargs)


def apply_activation_checkpointing(blocks: Iterable[nn.Module], mode: str) -> None:
    """``full`` recomputes each block's forward in the backward; ``selective`` keeps the
    matmul outputs and recomputes the cheap element-wise ops (norms, activations)."""
    if mode == "none":
        return
    if mode not in ("full", "selective"):
        raise ValueError(f"runtime.activation_checkpointing must be none, full or selective, got {mode!r}")
    from torch.utils.checkpoint import checkpoint, create_selective_checkpoint_contexts

    # A partial of module-level functions, not a closure: Dynamo traces a checkpoint only
    # with a context_fn it can resolve (per-block and whole-forward compile).
    extra = {"context_fn": functools.partial(create_selective_checkpoint_contexts, _selective_policy)} \
        if mode == "selective" else {}

    for block in blocks:
        forward = block.forward
        # attention modules name their backend (layers.Attention, attention.SelfAttention)
        flex = any(getattr(m, "backend", None) == "flex" for m in block.modules())
        dense_flex = mode == "selective" and flex

        def checkpointed(*args: Any, _forward: Any = forward, _dense: bool = dense_flex,
                         **kwargs: Any) -> Any:
            if _dense and not torch.compiler.is_compiling():
                # Eager selective recomputation cannot replay FlexAttention with a trained
                # score_mod table (T5's positions): flex runs as SDPA on its dense mask, in the
                # forward and its recomputation alike (a compiled block traces flex into its
                # graph and keeps the kernel).
                return checkpoint(_dense_flex, _forward, *args, use_reentrant=False, **extra, **kwargs)
            return checkpoint(_forward, *args, use_reentrant=False, **extra, **kwargs)

        block.forward = checkpointed  # type: ignore[method-assign]


def apply_compile(blocks: Iterable[nn.Module]) -> None:
    """Compile each block on its own: the blocks are identical, so one graph serves all,
    and FSDP's per-block communication stays outside the graphs."""
    for block in blocks:
        block.compile()


def apply_fsdp(
    root: nn.Module,
    units: list[nn.Module],
    forward_methods: dict[nn.Module, tuple[str, ...]],
    param_dtype: torch.dtype | None,
    device: torch.device,
    blocks: Iterable[nn.Module] = (),
) -> None:
    """Shard every unit (blocks, generator, RTD head), then the root.

    The precision policy (the same residual stream as one device under autocast):
    ``blocks`` — the repeated transformer blocks, nearly all the parameters — are
    all-gathered in ``param_dtype`` (bf16: half the traffic, and autocast would cast
    them anyway); every other unit and the root (token and position embeddings,
    relative-bias tables, final norms, heads: small) keep fp32, so the embeddings enter
    the residual stream in fp32 and the final norms return fp32, as on one device.
    Gradients are reduced in fp32 and the sharded master weights and optimizer state
    stay fp32."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method

    if not dist.is_initialized():
        # runtime.fsdp=true in one process, not under torchrun: a world of one (without a
        # group, init_device_mesh would rendezvous through torchrun's environment variables)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", store=dist.HashStore(),
                                rank=0, world_size=1)
    mesh = init_device_mesh(device.type, (world_info().world_size,))
    # cast_forward_inputs=False: a block must not cast the residual stream it receives
    low = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32, cast_forward_inputs=False)
    full = MixedPrecisionPolicy(param_dtype=None, reduce_dtype=torch.float32)
    in_low = {id(b) for b in blocks}
    for unit in units:
        fully_shard(unit, mesh=mesh, mp_policy=low if id(unit) in in_low else full)
    fully_shard(root, mesh=mesh, mp_policy=full)
    for module, methods in forward_methods.items():
        for method in methods:
            register_fsdp_forward_method(module, method)
