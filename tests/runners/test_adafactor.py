"""The DTensor-safe Adafactor is torch.optim.Adafactor, step for step."""

from __future__ import annotations

import torch

from spactor.runners.adafactor import DTensorAdafactor


def test_matches_torch_adafactor_on_plain_tensors():
    torch.manual_seed(0)
    shapes = [(16, 8), (8,), (4, 6, 5)]
    ours = [torch.nn.Parameter(torch.randn(s)) for s in shapes]
    ref = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    opt_ours = DTensorAdafactor(ours, lr=1e-2, eps=(1e-15, 1e-3), weight_decay=0.01)
    opt_ref = torch.optim.Adafactor(ref, lr=1e-2, eps=(1e-15, 1e-3), weight_decay=0.01, foreach=False)
    for _ in range(5):
        grads = [torch.randn(s) for s in shapes]
        grads[0][3] = 0  # a row with no gradient (an unused embedding row)
        for p, q, g in zip(ours, ref, grads):
            p.grad, q.grad = g.clone(), g.clone()
        opt_ours.step()
        opt_ref.step()
        for p, q in zip(ours, ref):
            torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
            assert torch.isfinite(p).all()
