"""The ``spactor`` command line, run as a user would (subprocess, exit codes)."""

from __future__ import annotations

import json
import subprocess
import sys


def spactor(*args: str, cwd=None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(check=False, args=[sys.executable, "-m", "spactor", *args], capture_output=True, text=True, cwd=cwd, timeout=600)


def test_unknown_key_is_one_line_exit_2_no_traceback(tmp_path):
    out = spactor("train", "sc", "trainer.max_step=5", cwd=tmp_path)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert "trainer.max_step" in lines[0] and "max_steps" in lines[0]
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "runs").exists()  # failed before any work


def test_debug_shows_the_traceback(tmp_path):
    out = spactor("--debug", "train", "sc", "trainer.max_step=5", cwd=tmp_path)
    assert out.returncode == 2 and "Traceback" in out.stderr


def test_components_lists_every_plugin_with_fields():
    out = spactor("components")
    assert out.returncode == 0, out.stderr
    for text in ("objective:", "span_corruption", "noise_density = 0.15", "schedule:", "two_stage",
                 "architecture:", "t5", "optimizer:", "adafactor", "lr_schedule:", "rsqrt", "source:", "builtin"):
        assert text in out.stdout, text


def test_preview_json_has_original_encoder_input_decoder_target(tiny_data):
    out = spactor("preview", "sc", *tiny_data, "--n", "3", "--json")
    assert out.returncode == 0, out.stderr
    examples = [json.loads(line) for line in out.stdout.splitlines()]
    assert len(examples) == 3
    for ex in examples:
        assert len(ex["original"]) == 70 and len(ex["encoder_input"]) == 64
        assert ex["decoder_target"][-1] == 1  # EOS


def test_preview_text_shows_sentinels(tiny_data):
    out = spactor("preview", "sc", *tiny_data, "--n", "1")
    assert out.returncode == 0, out.stderr
    assert "<extra_id_0>" in out.stdout and "encoder_input" in out.stdout


def test_train_runs_and_summarises(tiny_data, tmp_path):
    run_dir = tmp_path / "run"
    out = spactor("train", "quickstart", *tiny_data, "trainer.max_steps=4", f"run.dir={run_dir}")
    assert out.returncode == 0, out.stderr
    assert "loss" in out.stdout and str(run_dir) in out.stdout
    assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == 4
    # the quickstart ends by drawing its curves and saying where
    assert f"loss curves: {run_dir / 'curves.png'}" in out.stdout
    assert (run_dir / "curves.png").stat().st_size > 10_000


def test_resume_flag_continues_the_run(tiny_data, tmp_path):
    run_dir = tmp_path / "run"
    assert spactor("train", "quickstart", *tiny_data, "trainer.max_steps=3", f"run.dir={run_dir}").returncode == 0
    out = spactor("train", "--resume", str(run_dir), "trainer.max_steps=5")
    assert out.returncode == 0, out.stderr
    assert "resumed from" in out.stdout
    steps = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5]


def test_missing_tokenizer_file_is_a_clear_error(tmp_path):
    out = spactor("train", "sc", "data.tokenizer=/nonexistent/spiece.model", "model.size=tiny", cwd=tmp_path)
    assert out.returncode == 2
    assert "data.tokenizer" in out.stderr and "Traceback" not in out.stderr


def test_preview_of_a_decoder_recipe_shows_its_one_sequence_and_targets(tiny_data):
    out = spactor("preview", "ul2_decoder", *tiny_data, "model.size=tiny", "--n", "1")
    assert out.returncode == 0, out.stderr
    assert "--- lm_input" in out.stdout and "--- lm_target" in out.stdout and "encoder_input" not in out.stdout
    assert "[R]" in out.stdout or "[S]" in out.stdout or "[X]" in out.stdout  # the mode token starts it
    assert "<pad><pad>" not in out.stdout  # padding folded: <pad>×N
    out = spactor("preview", "causal_lm", *tiny_data, "model.size=tiny", "--n", "1", "--json")
    example = json.loads(out.stdout.splitlines()[0])
    assert set(example) == {"original", "lm_input", "lm_target"}
    assert example["lm_target"][:-1] == example["lm_input"][1:]  # the next token
