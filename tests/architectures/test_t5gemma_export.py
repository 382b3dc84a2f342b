"""A trained tiny ``t5gemma`` SC run exported with ``spactor export --format hf`` loads in
``T5GemmaForConditionalGeneration`` (its tokenizer in ``AutoTokenizer``) and scores the
run's validation span-corruption batches — corrupted with the run's own evaluation seed —
as the run itself scored them: the exported weights are the trained ones, under the same
RoPE, norm, embedding-scaling and attention-scale conventions."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

STEPS = 30


@pytest.fixture(scope="module")
def transformers():
    return pytest.importorskip("transformers", reason="pip install -e '.[test]' for the HF interop tests")


def test_trained_t5gemma_sc_run_exports_and_scores_its_validation_batches_in_transformers(
    transformers, tmp_path, tiny_overrides
):
    from spactor.config import load_config
    from spactor.data.tokenizer import Tokenizer
    from spactor.plugins import load_plugins
    from spactor.train.batches import build_data
    from spactor.train.builders import build_model, build_objectives, raw_length_for, seeded_generator
    from spactor.train.loop import train
    from spactor.train.metrics import read_metrics
    from spactor.train.step import apply_transforms

    load_plugins()
    run = tmp_path / "run"
    overrides = [*tiny_overrides, "model.arch=t5gemma", f"run.dir={run}", f"trainer.max_steps={STEPS}",
                 "trainer.batch_size=8", "lr_schedule.warmup_steps=5", "runtime.count_flops=false"]
    resolved = load_config("sc", overrides)
    train(resolved)
    records = read_metrics(run / "metrics.jsonl")
    val_loss = [r for r in records if "val/loss/span_corruption" in r][-1]["val/loss/span_corruption"]
    assert records[-1]["loss"] < records[0]["loss"] - 0.5  # it learned something to export

    out = tmp_path / "hf"
    done = subprocess.run(
        [sys.executable, "-m", "spactor", "export", str(run), "--format", "hf", str(out)],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert f"exported step {STEPS}" in done.stdout and "T5GemmaForConditionalGeneration" in done.stdout
    assert json.loads((out / "config.json").read_text())["model_type"] == "t5gemma"
    hf = transformers.T5GemmaForConditionalGeneration.from_pretrained(out, attn_implementation="eager").eval()
    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    tok = Tokenizer.load(run / "spiece.model")
    text = "Span corruption replaces random spans of the input with sentinel tokens."
    assert hf_tok(text).input_ids == tok.encode(text) + [tok.eos_id]

    # The run's validation pass, replayed: its batches, its corruption seed (trainer.seed + 2).
    data = build_data(resolved, device=torch.device("cpu"), run_dir=None)
    with torch.device("meta"):
        objectives = build_objectives(resolved, data.vocab, build_model(resolved, data.vocab))
    data.start(raw_length_for(objectives, resolved.cfg.data.input_length), batch_size=8)
    rng = seeded_generator(resolved.cfg.trainer.seed + 2, torch.device("cpu"))
    pad = data.vocab.pad_id
    total = count = 0.0
    with torch.no_grad():
        for _, raw in zip(range(resolved.cfg.trainer.eval_batches), data.validation_batches()):
            batch = apply_transforms(objectives, raw, rng)
            target = batch["decoder_target"]
            logits = hf(input_ids=batch["encoder_input"], attention_mask=(batch["encoder_input"] != pad).long(),
                        decoder_input_ids=batch["decoder_input"],
                        decoder_attention_mask=torch.ones_like(batch["decoder_input"])).logits
            total += F.cross_entropy(logits.flatten(0, 1), target.flatten(), ignore_index=pad, reduction="sum").item()
            count += (target != pad).sum().item()
    assert total / count == pytest.approx(val_loss, abs=1e-3)  # the run's own score of the same batches
