"""``trainer.downstream_every``: score the checkpoint just saved on downstream tasks while
pre-training runs, each task the way ``spactor evaluate`` scores it (fine-tuned with the
default budget, or zero-shot). The training loop receives :func:`downstream_scores` from
the CLI or a study (the loop never imports evaluation)."""

from __future__ import annotations

from pathlib import Path

import torch

from spactor.evaluation.finetune import evaluate_run
from spactor.evaluation.zero_shot import evaluate_zero_shot_run, is_zero_shot


def downstream_scores(run_dir: Path, step: int, tasks: list[str], seeds: int = 1) -> dict[str, float]:
    """Evaluate the checkpoint of ``step`` on each task, on rank 0, and return
    ``eval/<task>/score`` and ``eval/<task>/std`` (the results are also written where
    ``spactor evaluate`` writes them). The global RNG streams are restored afterwards, so
    the training run continues as it would have (dropout draws included)."""
    cpu_state = torch.get_rng_state()
    cuda_states = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    try:
        out = {}
        for name in tasks:
            if is_zero_shot(name):  # scored as it is: one score per checkpoint
                [(_, result)] = evaluate_zero_shot_run(run_dir, name, step=step)
            else:
                [(_, result)] = evaluate_run(run_dir, name, step=step, seeds=seeds, show_progress=False)
            out[f"eval/{name}/score"] = result.score
            out[f"eval/{name}/std"] = result.std
        return out
    finally:
        torch.set_rng_state(cpu_state)
        if cuda_states is not None:
            torch.cuda.set_rng_state_all(cuda_states)
