"""trainer.eval_passes: the clean validation pass is a configured evaluation pass, run by
the validation callback from the config (not by the step), and can be turned off."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from spactor.cli import main
from spactor.config import EVAL_PASSES, load_config
from spactor.plugins import load_plugins
from spactor.schedules.base import ScheduleSet
from spactor.train.eval_passes import CleanPass, build_eval_passes
from spactor.train.loop import train
from spactor.train.metrics import read_metrics

KNOBS = {"objectives.span_corruption.weight": 10.0, "objectives.mlm_mask.ratio": 0.15,
         "objectives.rtd.weight": 10.0}


def test_the_clean_pass_is_declared_by_default_and_evaluates_the_last_stage() -> None:
    load_plugins()
    assert load_config("spactor").cfg.trainer.eval_passes == ["clean"] and EVAL_PASSES == ("clean",)
    stages = ScheduleSet({}, KNOBS).stages  # the implicit curriculum: stage 2 runs span corruption
    objectives = {name: SimpleNamespace() for name in ("span_corruption", "mlm_mask", "rtd")}
    assert build_eval_passes(["clean"], stages, objectives) == [CleanPass(["span_corruption"])]
    assert build_eval_passes([], stages, objectives) == []


@pytest.mark.parametrize(("value", "message"), [
    ("[dirty]", "trainer.eval_passes: 'dirty' — must be one of clean"),
    ("[clean,clean]", "trainer.eval_passes: ['clean', 'clean'] — names a pass twice"),
])
def test_an_unknown_pass_is_one_line_exit_2(value, message, capsys, tmp_path) -> None:
    code = main(["train", "spactor", f"trainer.eval_passes={value}", f"run.dir={tmp_path / 'run'}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0], err
    assert not (tmp_path / "run").exists()


def test_eval_passes_empty_turns_the_clean_pass_off(tiny_overrides, tmp_path) -> None:
    load_plugins()

    def run(name: str, *extra: str) -> dict:
        overrides = [*tiny_overrides, f"run.dir={tmp_path / name}", "trainer.max_steps=1",
                     "runtime.count_flops=false", *extra]
        train(load_config("spactor", overrides))
        (record,) = read_metrics(tmp_path / name / "metrics.jsonl")
        return record

    on, off = run("on"), run("off", "trainer.eval_passes=[]")
    assert on["stage"] == 1 and "val/clean/loss/span_corruption" in on
    assert not any(key.startswith("val/clean/") for key in off)
    # the pass adds its own keys and changes nothing else: same losses, same validation
    assert set(on) - set(off) == {k for k in on if k.startswith("val/clean/")}
    numbers = [k for k in off if k.startswith(("loss", "val/", "grad_norm", "stage", "step"))]
    assert "val/loss/span_corruption" in numbers and all(on[k] == off[k] for k in numbers)
