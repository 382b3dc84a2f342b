"""``python -m benchmarks.compare`` on a small fabricated pytest-benchmark JSON: the
ratios against SC (time and FLOPs side by side) and against the HF reference."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # benchmarks/ is a package of the checkout, not installed
    sys.path.insert(0, str(ROOT))

from benchmarks.compare import load_run, main, render, sc_ratios  # noqa: E402


def bench(name: str, median: float, flops: float | None, batch: int = 8, **info) -> dict:
    return {
        "name": name, "group": "train_step-tiny",
        "options": {"timer": "time.process_time", "min_rounds": 20},
        "stats": {"median": median, "min": median * 0.9, "rounds": 20},
        "extra_info": {"seq_per_s": batch / median, "flops_per_step": flops, "batch_size": batch, **info},
    }


@pytest.fixture
def results(tmp_path) -> Path:
    path = tmp_path / "out.json"
    path.write_text(json.dumps({"benchmarks": [
        bench("test_train_step[sc-tiny]", 0.100, 1.0e12, recipe="sc", stage=1,
              kind="t5_span_corruption_step"),
        bench("test_train_step[spactor_stage1-tiny]", 0.150, 1.2e12, recipe="spactor", stage=1),
        bench("test_train_step[spactor_stage2-tiny]", 0.100, 1.0e12, recipe="spactor", stage=2),
        bench("test_train_step[electra-tiny]", 0.090, 0.9e12, batch=4, recipe="electra", stage=1),
        bench("test_train_step[fast_electra-tiny]", 0.050, None, recipe="fast_electra", stage=1),
        bench("test_hf_t5_step[tiny]", 0.125, 1.0e12, recipe="hf_t5", kind="t5_span_corruption_step",
              reference=True),
    ]}))
    return path


def test_every_step_against_sc_time_and_flops(results):
    ratios = sc_ratios(load_run(results))
    assert set(ratios) == {"test_train_step[spactor_stage1-tiny]", "test_train_step[spactor_stage2-tiny]",
                           "test_train_step[electra-tiny]", "test_train_step[fast_electra-tiny]"}  # no SC, HF
    stage1 = ratios["test_train_step[spactor_stage1-tiny]"]
    assert stage1.time == pytest.approx(1.5) and stage1.flops == pytest.approx(1.2)
    assert stage1.time_per_flop == pytest.approx(1.25)
    electra = ratios["test_train_step[electra-tiny]"]  # batch 4 vs SC's 8: per sequence
    assert electra.time == pytest.approx(1.8) and electra.flops == pytest.approx(1.8)
    fast = ratios["test_train_step[fast_electra-tiny]"]
    assert fast.time == pytest.approx(0.5) and fast.flops is None and fast.time_per_flop is None


def test_the_table_shows_both_references_and_the_timer(results, capsys):
    text = render([load_run(results)])
    assert "timer time.process_time; rounds 20" in text
    assert "| test_train_step[spactor_stage1-tiny] | train_step-tiny | 1.50x | 1.20x | 1.25 |" in text
    assert "| test_train_step[fast_electra-tiny] | train_step-tiny | 0.50x |  |  |" in text
    sc_row = next(line for line in text.splitlines() if line.startswith("| test_train_step[sc-tiny]"))
    assert "1.25x" in sc_row  # SC's speed over HF's, as before
    assert main([str(results)]) == 0
    assert "against SC" in capsys.readouterr().out


def test_wall_clock_timings_are_flagged(tmp_path):
    path = tmp_path / "wall.json"
    entry = bench("test_train_step[sc-tiny]", 0.1, 1e12, recipe="sc")
    entry["options"]["timer"] = "time.perf_counter"
    path.write_text(json.dumps({"benchmarks": [entry]}))
    text = render([load_run(path)])
    assert "wall clock" in text and "against SC" not in text  # nothing to set against SC
