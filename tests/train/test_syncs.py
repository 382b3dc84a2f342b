"""The one sync counter the host-sync test and the device check share: what it calls a
sync, what a data-dependent shape, and what neither."""

from __future__ import annotations

import torch

from spactor.train.syncs import SyncCounter


def test_reads_are_syncs_and_value_shaped_outputs_are_data_dependent():
    x = torch.tensor([1.0, 0.0, 2.0])
    with SyncCounter() as counter:
        x.sum().item()
        bool(x[0] > 0)
        torch.equal(x, x)
        x.nonzero()
        x[x > 0]
        torch.repeat_interleave(torch.tensor([1, 2]))
    assert counter.syncs == ["_local_scalar_dense", "_local_scalar_dense", "equal"]
    assert counter.data_dependent == ["nonzero", "index(bool mask)", "repeat_interleave"]
    assert counter.counts["_local_scalar_dense"] == 2


def test_static_shapes_count_nothing():
    x = torch.tensor([1.0, 0.0, 2.0])
    with SyncCounter() as counter:
        torch.where(x > 0, x, 0.0)
        x.repeat_interleave(2)
        x.repeat_interleave(torch.tensor([1, 2, 1]), output_size=4)
        torch.nonzero_static(x, size=2)
        x[torch.tensor([0, 2])]
    assert counter.syncs == [] and counter.data_dependent == []
