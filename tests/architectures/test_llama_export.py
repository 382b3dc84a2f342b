"""A trained tiny ``causal_lm`` run exported with ``spactor export --format hf`` loads in
``LlamaForCausalLM`` (and its tokenizer in ``AutoTokenizer``) and scores held-out text as
the run itself scored it: the exported weights are the trained ones, under the same RoPE
and norm conventions."""

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


def test_trained_causal_lm_run_exports_and_scores_held_out_text_in_transformers(
    transformers, tmp_path, tiny_overrides
):
    from spactor.config import load_config
    from spactor.data.tokenizer import Tokenizer
    from spactor.plugins import load_plugins
    from spactor.train.batches import build_data
    from spactor.train.loop import train
    from spactor.train.metrics import read_metrics

    load_plugins()
    run = tmp_path / "run"
    overrides = [*tiny_overrides, f"run.dir={run}", f"trainer.max_steps={STEPS}", "trainer.batch_size=8",
                 "lr_schedule.warmup_steps=5", "lr_schedule.decay_steps=25", "runtime.count_flops=false"]
    resolved = load_config("causal_lm", overrides)
    train(resolved)
    records = read_metrics(run / "metrics.jsonl")
    train_loss = sum(r["loss"] for r in records if "loss" in r and r["step"] > STEPS - 5) / 5
    val_loss = [r for r in records if "val/loss/causal_lm" in r][-1]["val/loss/causal_lm"]
    assert train_loss < records[0]["loss"] - 0.5  # it learned something to export

    out = tmp_path / "hf"
    done = subprocess.run(
        [sys.executable, "-m", "spactor", "export", str(run), "--format", "hf", str(out)],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert f"exported step {STEPS}" in done.stdout and "LlamaForCausalLM" in done.stdout
    assert json.loads((out / "config.json").read_text())["model_type"] == "llama"
    hf = transformers.LlamaForCausalLM.from_pretrained(out).eval()
    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    tok = Tokenizer.load(run / "spiece.model")
    text = "The model learns to predict the next token of a held-out sentence."
    assert hf_tok(text).input_ids == tok.encode(text) + [tok.eos_id]  # same ids, EOS and no BOS

    # Held-out text: the run's validation chunks (documents it never trained on).
    data = build_data(resolved, device=torch.device("cpu"), run_dir=None)
    data.start(resolved.cfg.data.input_length + 1, batch_size=8)
    total = count = 0.0
    with torch.no_grad():
        for _, batch in zip(range(resolved.cfg.trainer.eval_batches), data.validation_batches()):
            chunk = batch["original"]
            logits = hf(chunk[:, :-1]).logits
            total += F.cross_entropy(logits.flatten(0, 1), chunk[:, 1:].flatten(), reduction="sum").item()
            count += chunk[:, 1:].numel()
    hf_nll = total / count
    assert hf_nll == pytest.approx(val_loss, abs=2e-3)  # the run's own evaluation of the same text
    assert hf_nll < train_loss + 0.25  # held out, as well as the run scored its training data
