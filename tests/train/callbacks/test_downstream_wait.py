"""Under torchrun, rank 0 fine-tunes for downstream scores while the other ranks wait: in a
barrier of their own with a long timeout, not in the next step's first collective, which
would time out (NCCL's default is minutes; a Base evaluation takes hours)."""

from __future__ import annotations

import datetime
import os
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from ports import free_port  # tests/ports.py: tests/ is on sys.path (rootdir conftest)

COLLECTIVE_TIMEOUT_S = 2
EVALUATION_S = 5  # longer than the collective timeout


def _rank(rank: int, port: int, out: str) -> None:
    from spactor.train.callbacks.base import LoopState
    from spactor.train.callbacks.downstream import DownstreamEval

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2,
                            timeout=datetime.timedelta(seconds=COLLECTIVE_TIMEOUT_S))

    def slow_scores(run_dir, step, tasks):
        time.sleep(EVALUATION_S)
        return {"eval/pydoc_module/score": 0.5}

    written = []
    callback = DownstreamEval(2, ["pydoc_module"], run_dir=None, save=lambda: None, write=written.append,
                              score=slow_scores)
    state = LoopState(step=2, max_steps=4, world_size=2, is_main=rank == 0)
    state.last_checkpoint_step = 2
    callback.end_step(state)
    total = torch.ones(())
    dist.all_reduce(total)  # the next step's first collective: must not time out
    with open(f"{out}.{rank}", "w") as f:
        f.write(f"{float(total)} {len(written)}")
    dist.destroy_process_group()


def test_other_ranks_wait_for_rank0s_evaluation_beyond_the_collective_timeout(tmp_path):
    out = str(tmp_path / "rank")
    mp.spawn(_rank, args=(free_port(), out), nprocs=2, join=True)
    assert open(f"{out}.0").read() == "2.0 1"  # rank 0 wrote the scores
    assert open(f"{out}.1").read() == "2.0 0"


def test_downstream_every_needs_a_scorer_from_the_caller():
    """The loop does not import the evaluation layer: whoever sets ``downstream_every``
    hands it the scorer (``spactor train`` does); without one it says so up front."""
    from spactor.train.callbacks.downstream import DownstreamEval

    with pytest.raises(ValueError, match="trainer.downstream_every is set but train\\(\\) was given no downstream"):
        DownstreamEval(2, ["pydoc_module"], run_dir=None, save=lambda: None, write=print, score=None)
    DownstreamEval(0, ["pydoc_module"], run_dir=None, save=lambda: None, write=print, score=None)  # off: fine
