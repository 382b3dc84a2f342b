"""The runner's input pipeline: prefetching batch i+1 while step i runs (on by default on
CUDA, where the copy runs on a side stream) hands out the same batches, and the state a
checkpoint saves is that after the batches handed out, not after the one fetched ahead."""

from __future__ import annotations

import torch

from spactor.config import load_config
from spactor.plugins import load_plugins
from spactor.train.batches import build_data

load_plugins()


def pipeline(tiny_overrides, tmp_path):
    resolved = load_config("sc", [*tiny_overrides, f"run.dir={tmp_path}"])
    data = build_data(resolved, torch.device("cpu"), None)
    data.start(80, batch_size=4)
    return data


def take(batches, n):
    return [next(batches)["original"].clone() for _ in range(n)]


def test_prefetching_gives_the_same_batches_and_resumable_state(tiny_overrides, tmp_path):
    plain = pipeline(tiny_overrides, tmp_path)
    expected = take(iter(plain.train_batches(prefetch=False)), 6)

    ahead = pipeline(tiny_overrides, tmp_path)
    batches = iter(ahead.train_batches(prefetch=True))
    first = take(batches, 3)
    assert all(torch.equal(a, b) for a, b in zip(first, expected[:3]))
    state = ahead.state_dict()  # after 3 batches handed out, though a 4th was fetched

    resumed = pipeline(tiny_overrides, tmp_path)
    resumed.load_state_dict(state)
    rest = take(iter(resumed.train_batches(prefetch=True)), 3)
    assert all(torch.equal(a, b) for a, b in zip(rest, expected[3:]))


def test_workers_and_pinned_memory_default_on_cuda_only(tiny_overrides, tmp_path):
    data = pipeline(tiny_overrides, tmp_path)
    assert data.cfg.num_workers is None and data.num_workers == 0  # CPU: no workers by default
    data.device = torch.device("cuda")  # the choice only, no device needed
    assert data.num_workers == 2
    data.cfg.num_workers = 0
    assert data.num_workers == 0  # an explicit data.num_workers wins
