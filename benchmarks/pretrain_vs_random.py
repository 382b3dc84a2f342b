"""Does a short pre-training beat random initialisation downstream, at tiny size?

Pre-trains one tiny run (``sc`` or ``mlm`` on the built-in corpus) once, then fine-tunes
its final checkpoint and the same architecture from random init with the same budget
over K seeds, for each budget given, and prints mean ± sample std of both. The README
"Results" section reports what it measured::

    OMP_NUM_THREADS=1 python benchmarks/pretrain_vs_random.py --recipe sc --steps 300 \\
        --out /tmp/pvr_sc300 --budget task=pydoc_module,steps=300,max_input_length=64,max_target_length=4
    OMP_NUM_THREADS=1 python benchmarks/pretrain_vs_random.py --recipe sc --steps 1000 \\
        --out /tmp/pvr_sc1000 --budget task=pydoc_cloze,steps=300,max_input_length=64,max_target_length=8

A budget is ``task=NAME`` plus ``FinetuneConfig`` fields, and optionally ``n_train=N``:
every (len(train) // N)-th training example, N of them (a few-shot variant; the test
split stays whole). ``--pretrain`` adds overrides to the pre-training run.
``--linear-probe`` (encoder-only runs) trains only the classification head, the
encoder frozen: pre-trained features against random ones. ``--sentinel-marker``
(a diagnostic for ``pydoc_cloze``) encodes the task's blank as the sentinel id
``<extra_id_0>`` instead of the text ``____``: the input span corruption trains on.
``spactor evaluate`` encodes inputs as plain text, so the shipped task cannot do this.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from spactor.config import load_config
from spactor.plugins import load_plugins
from spactor.evaluation import finetune as evaluate
from spactor.evaluation.finetune import FinetuneConfig, evaluate_weights, load_model_weights, open_run
from spactor.train.loop import train
from spactor.tasks import build_task


def parse_budget(text: str) -> tuple[str, int | None, FinetuneConfig]:
    fields = dict(item.split("=", 1) for item in text.split(","))
    task = fields.pop("task")
    n_train = int(fields.pop("n_train")) if "n_train" in fields else None
    typed = {k: (float(v) if k in ("lr", "weight_decay", "clip_grad_norm", "dropout") else int(v))
             for k, v in fields.items()}
    return task, n_train, FinetuneConfig(**typed)


def freeze_encoders() -> None:
    """Every model ``evaluate`` builds has frozen weights and only the head is optimised."""
    build = evaluate.build_model

    def frozen(run):  # type: ignore[no-untyped-def]
        model = build(run)
        model.requires_grad_(False)
        return model

    evaluate.build_model = frozen
    evaluate.Finetuner.parameters = lambda self: list(self.head.parameters())  # type: ignore[method-assign]


def encode_marker_as_sentinel(tokenizer) -> None:  # type: ignore[no-untyped-def]
    """``tokenizer.encode`` maps each ``CLOZE_MARKER`` to the first sentinel's id."""
    from spactor.data.pydoc_tasks import CLOZE_MARKER

    encode, sentinel = tokenizer.encode, tokenizer.sentinel_id(0)

    def with_sentinel(text: str) -> list[int]:
        ids: list[int] = []
        for i, part in enumerate(text.split(CLOZE_MARKER)):
            ids += ([sentinel] if i else []) + (encode(part) if part else [])
        return ids

    tokenizer.encode = with_sentinel


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--recipe", default="sc")
    p.add_argument("--steps", type=int, default=300, help="pre-training steps")
    p.add_argument("--vocab", type=int, default=2000, help="built-in tokenizer pieces")
    p.add_argument("--out", required=True, help="the pre-training run directory (reused if it exists)")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--budget", action="append", required=True)
    p.add_argument("--pretrain", nargs="*", default=[], help="more key=value overrides for pre-training")
    p.add_argument("--linear-probe", action="store_true", help="train only the head (encoder-only runs)")
    p.add_argument("--sentinel-marker", action="store_true",
                   help="pydoc_cloze: encode the blank as <extra_id_0> (a diagnostic)")
    ns = p.parse_args()
    if ns.linear_probe:
        freeze_encoders()
    load_plugins()
    out = Path(ns.out)
    if not (out / "checkpoints").exists():
        start = time.time()
        train(load_config(ns.recipe, [
            "model.size=tiny", "data.input_length=64", "trainer.batch_size=16",
            f"trainer.max_steps={ns.steps}",
            f"trainer.checkpoint_every={ns.steps}", "trainer.eval_every=0", "runtime.device=cpu",
            "runtime.progress=false", "runtime.count_flops=false", f"data.tokenizer_vocab_size={ns.vocab}",
            f"run.dir={out}", *ns.pretrain]))
        print(f"pre-trained {ns.recipe} for {ns.steps} steps in {time.time() - start:.0f}s", flush=True)
    run = open_run(out)
    if ns.sentinel_marker:
        encode_marker_as_sentinel(run.tokenizer)
    base = evaluate.build_model(run)
    load_model_weights(base, sorted((out / "checkpoints").iterdir())[-1])
    for text in ns.budget:
        name, n_train, cfg = parse_budget(text)
        task = build_task(name, None)
        if n_train:
            task.train = task.train[:: max(1, len(task.train) // n_train)][:n_train]
        line = []
        for label, model in (("pre-trained", base), ("random", None)):
            start = time.time()
            scores = evaluate_weights(model, run, task, cfg, ns.seeds, label, show_progress=False)
            std = statistics.stdev(scores) if len(scores) > 1 else 0.0
            line.append(f"{label} {statistics.fmean(scores):.3f} ± {std:.3f} "
                        f"{[round(s, 3) for s in scores]} ({time.time() - start:.0f}s)")
        print(f"{text}: " + " | ".join(line), flush=True)


if __name__ == "__main__":
    main()
