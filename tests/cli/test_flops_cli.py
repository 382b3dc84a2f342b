"""``spactor flops``: the architecture's analytic count beside fvcore's, per stage, and an
op without an fvcore handle named (not silently counted as 0). Tiny shapes, in-process."""

from __future__ import annotations

import json

import pytest

from spactor.cli import main as cli_main
from spactor.plugins import load_plugins
from spactor.train.flops import counting
from spactor.train.flops.handles import ATTENTION_OPS

load_plugins()

TINY = ["model.size=tiny", "data.input_length=64", "data.tokenizer_vocab_size=512", "trainer.batch_size=4",
        "trainer.max_steps=100"]  # fmt: skip


def flops_json(capsys: pytest.CaptureFixture[str], *args: str) -> dict:
    assert cli_main(["flops", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_flops_prints_the_analytic_count_per_stage(capsys):
    data = flops_json(capsys, "spactor", *TINY)
    tokens = data["tokens_per_step"]
    assert tokens == 4 * data["raw_length"]
    # The baseline (plain SC) runs the model and nothing else, every target through the
    # head: fvcore's count is the analytic one. SpacTor's stage 1 adds the generator and head.
    assert data["baseline_measured_over_analytic"] == pytest.approx(1.0, rel=1e-12)
    stage1 = data["stages"][0]
    assert stage1["analytic_flops_per_step"] == data["baseline_analytic_flops_per_step"]  # same model forward
    assert stage1["analytic_flops_per_token"] == pytest.approx(stage1["analytic_flops_per_step"] / tokens)
    assert stage1["measured_over_analytic"] == pytest.approx(stage1["flops_per_step"] / stage1["analytic_flops_per_step"])
    assert 1.2 < stage1["measured_over_analytic"] < 1.6
    assert stage1["model_lengths"] == [64, stage1["model_lengths"][1]] and stage1["model_lengths"][1] > 0

    assert cli_main(["flops", "spactor", *TINY]) == 0
    text = capsys.readouterr().out
    rows = {line.split("  ")[0]: line.split() for line in text.splitlines()}
    assert "analytic MFLOP/step" in rows and "measured / analytic" in rows and "analytic FLOP/token" in rows
    assert rows["measured / analytic"][-2:] == [f"{stage1['measured_over_analytic']:.3f}", "1.000"]
    assert "no handle" not in text


def test_a_decoder_only_model_is_counted_over_its_one_sequence(capsys):
    data = flops_json(capsys, "causal_lm", *TINY)
    stage1 = data["stages"][0]
    assert stage1["model_lengths"] == [64, 0]
    assert stage1["measured_over_analytic"] == pytest.approx(1.0, rel=1e-12)


def test_an_op_without_a_handle_is_named_and_the_analytic_count_stands(capsys, monkeypatch):
    """A plugin's model calling an op nobody gave a handle: fvcore counts it as 0. The
    report names it (text and JSON), and the analytic count still gives the number."""
    honest = flops_json(capsys, "sc", *TINY)

    real = counting.op_handles

    def without_attention(elementwise: bool = False):
        return {op: h for op, h in real(elementwise).items() if op not in ATTENTION_OPS}

    monkeypatch.setattr(counting, "op_handles", without_attention)
    data = flops_json(capsys, "sc", *TINY)
    stage1 = data["stages"][0]
    assert "aten::scaled_dot_product_attention" in stage1["unsupported_ops"]
    assert "aten::scaled_dot_product_attention" in data["baseline_unsupported_ops"]
    assert stage1["analytic_flops_per_step"] == honest["stages"][0]["analytic_flops_per_step"]
    assert stage1["flops_per_step"] < honest["stages"][0]["flops_per_step"]  # attention's matmuls dropped
    assert stage1["measured_over_analytic"] < 1.0
    assert any("no handle for aten::scaled_dot_product_attention" in n for n in data["notes"])

    assert cli_main(["flops", "sc", *TINY]) == 0
    text = capsys.readouterr().out
    note = next(line for line in text.splitlines() if "no handle" in line)
    assert note.startswith("note: fvcore has no handle for aten::scaled_dot_product_attention (x")
    assert "counted as 0 FLOPs" in note and "spactor/train/flops/handles.py" in note


def test_the_per_size_table_has_stage_1_over_the_analytic_count(capsys):
    overrides = ["data.input_length=64", "data.tokenizer_vocab_size=512", "trainer.batch_size=4"]
    [row] = flops_json(capsys, "sc", *overrides, "--sizes", "tiny")["sizes"]  # on meta
    assert row["stage1_analytic_flops_per_step"] == pytest.approx(row["stage1_flops_per_step"], rel=1e-12)
    assert row["stage1_measured_over_analytic"] == pytest.approx(1.0, rel=1e-12)
    assert cli_main(["flops", "sc", *overrides, "--sizes", "tiny"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].rstrip().endswith("stage 1 / analytic") and lines[2].rstrip().endswith("1.000")
