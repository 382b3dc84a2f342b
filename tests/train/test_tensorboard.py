"""TensorBoard events beside metrics.jsonl (``run.tensorboard=true``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from spactor.train import metrics as metrics_module
from spactor.train.metrics import MetricsWriter, TensorBoardWriter


def scalars(log_dir: Path, tag: str) -> list[tuple[int, float]]:
    accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    events = accumulator.EventAccumulator(str(log_dir))
    events.Reload()
    return [(e.step, e.value) for e in events.Scalars(tag)]


def test_records_become_scalars_and_a_resume_hides_the_lost_steps(tmp_path):
    pytest.importorskip("tensorboard")
    writer = MetricsWriter(tmp_path / "metrics.jsonl", tensorboard=True)
    writer.open(resume_step=None)
    for step in range(1, 6):
        writer.write(
            {
                "step": step,
                "stage": 1,
                "loss/span_corruption": float(step),
                "released": ["rtd"],
                "knob/objectives.rtd.weight": 10.0,
            }
        )
    writer.close()
    # Killed after step 5, resumed from the checkpoint of step 2: steps 3-4 are logged again.
    writer = MetricsWriter(tmp_path / "metrics.jsonl", tensorboard=True)
    writer.open(resume_step=2)
    for step in (3, 4):
        writer.write({"step": step, "stage": 1, "loss/span_corruption": 10.0 + step})
    writer.close()

    log_dir = tmp_path / "tensorboard"
    assert scalars(log_dir, "loss/span_corruption") == [(1, 1.0), (2, 2.0), (3, 13.0), (4, 14.0)]
    assert scalars(log_dir, "knob/objectives.rtd.weight")[0] == (1, 10.0)
    assert [s for s, _ in scalars(log_dir, "stage")] == [1, 2, 3, 4]
    assert (tmp_path / "metrics.jsonl").read_text().count("\n") == 4


def test_off_by_default_and_off_on_other_ranks(tmp_path):
    MetricsWriter(tmp_path / "a" / "metrics.jsonl").tensorboard.write({"step": 1, "loss": 1.0})
    writer = MetricsWriter(tmp_path / "metrics.jsonl", enabled=False, tensorboard=True)
    writer.open(None)
    writer.write({"step": 1, "loss": 1.0})
    writer.close()
    assert not (tmp_path / "tensorboard").exists()


def test_without_the_package_it_says_so_once_and_does_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(metrics_module, "tensorboard_available", lambda: False)
    monkeypatch.setattr(TensorBoardWriter, "_warned", False)
    for name in ("a", "b"):
        writer = TensorBoardWriter(tmp_path / name)
        writer.open()
        writer.write({"step": 1, "loss": 1.0})
        writer.close()
    err = capsys.readouterr().err
    assert err.count("tensorboard package is not installed") == 1
    assert not any(tmp_path.iterdir())


def test_run_tensorboard_is_a_config_key():
    from spactor.config import load_config
    from spactor.plugins import load_plugins

    load_plugins()
    assert load_config("quickstart").cfg.run.tensorboard is False
    assert load_config("quickstart", ["run.tensorboard=true"]).cfg.run.tensorboard is True
