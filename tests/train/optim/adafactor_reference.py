"""Mesh TensorFlow's ``AdafactorOptimizer`` (mesh_tensorflow/optimize.py), re-written
from its definition in float64, one parameter at a time, as the oracle for spactor's
Adafactor: decay rate ``1 − (step + 1)^-0.8`` at 0-based global step, ε1 = 1e-30 added to
grad², second moments factored over the two largest dims when the second largest is
≥ min_dim_size_to_factor (``vr`` reduces the largest dim ``d0``, ``vc`` the second
``d1``, normalised by the mean of ``vr`` over ``d1``), update clipping at RMS 1,
parameter scale max(RMS(p), ε2 = 1e-3), no momentum. Shared by the one-rank tests and
the torchrun script."""

from __future__ import annotations

import torch

# (shape, why it is there)
SHAPES: list[tuple[tuple[int, ...], str]] = [
    ((200, 64), "a dim < 128: unfactored"),
    ((32, 12), "T5's relative-bias table: unfactored"),
    ((160, 130), "both dims >= 128: factored"),
    ((96,), "a vector"),
    ((131, 128), "factored, dim 0 odd: uneven shards"),
    ((1, 130), "dim 0 of size 1: an empty shard on rank 1"),
    ((4, 130, 140), "3-D: factored over its two largest dims (1, 2)"),
    ((150, 3, 129), "3-D: factored over dims 0 and 2, dim 0 sharded"),
]


def rms(x: torch.Tensor) -> torch.Tensor:
    return x.square().mean().sqrt()


class MeshTFAdafactor:
    def __init__(self, params: list[torch.Tensor], min_dim_size_to_factor: int = 128) -> None:
        self.params = [p.detach().double().clone() for p in params]
        self.min_dim = min_dim_size_to_factor
        self.global_step = 0  # tf.train.get_or_create_global_step() before this update
        self.slots: list[dict[str, torch.Tensor]] = [{} for _ in params]

    def factored_dims(self, shape: tuple[int, ...]) -> tuple[int, int] | None:
        if len(shape) < 2:
            return None
        sorted_dims = sorted(range(len(shape)), key=lambda d: -shape[d])
        if shape[sorted_dims[1]] < self.min_dim:
            return None
        return sorted_dims[0], sorted_dims[1]

    def apply(self, grads: list[torch.Tensor], learning_rate: float) -> None:
        decay_rate = 1.0 - (self.global_step + 1.0) ** -0.8
        mixing_rate = 1.0 - decay_rate
        for var, grad, slots in zip(self.params, grads, self.slots):
            grad = grad.double()
            grad_squared = grad.square() + 1e-30
            update_scale = torch.clamp(rms(var), min=1e-3) * learning_rate
            dims = self.factored_dims(tuple(var.shape))
            if dims is not None:
                d0, d1 = dims
                vr = slots.get("vr", torch.zeros_like(grad_squared.mean(d0, keepdim=True)))
                vc = slots.get("vc", torch.zeros_like(grad_squared.mean(d1, keepdim=True)))
                new_vr = vr * decay_rate + grad_squared.mean(d0, keepdim=True) * mixing_rate
                new_vc = vc * decay_rate + grad_squared.mean(d1, keepdim=True) * mixing_rate
                slots["vr"], slots["vc"] = new_vr, new_vc
                long_term_mean = new_vr.mean(d1, keepdim=True)
                x = grad * torch.rsqrt(new_vr / long_term_mean) * torch.rsqrt(new_vc)
            else:
                v = slots.get("v", torch.zeros_like(grad))
                new_v = v * decay_rate + grad_squared * mixing_rate
                slots["v"] = new_v
                x = grad * torch.rsqrt(new_v)
            x = x / torch.clamp(rms(x) / 1.0, min=1.0)
            var -= x * update_scale
        self.global_step += 1


def make_params(shapes: list[tuple[int, ...]], seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=g) * 0.5 for s in shapes]


def make_grads(shapes: list[tuple[int, ...]], step: int) -> list[torch.Tensor]:
    """The same gradients on every rank; a zero row (an unused embedding row) in each
    matrix, and one all-zero gradient, as a parameter outside the loss has."""
    g = torch.Generator().manual_seed(1000 + step)
    grads = [torch.randn(s, generator=g) * (0.1 + i) for i, s in enumerate(shapes)]
    for grad in grads:
        if grad.dim() >= 2:
            grad[0] = 0.0
    grads[-1 if len(grads) > 1 else 0] = grads[-1] * (step % 2)  # zero on even steps
    return grads


LRS = [1e-2, 1e-2, 5e-3, 1e-2, 2e-2, 1e-2]
