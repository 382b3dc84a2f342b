"""Logged values stay on the device between logging steps and are averaged over the
window: the record of a logging step equals the mean of the per-step values a
``log_every=1`` run logs."""

from __future__ import annotations

import pytest
import torch

from spactor.config import load_config
from spactor.plugins import load_plugins
from spactor.train.metrics import MetricWindow, read_metrics
from spactor.train.loop import train

load_plugins()


def test_window_averages_each_key_over_its_own_steps():
    window = MetricWindow()
    window.add({"loss": torch.tensor(2.0), "loss/rtd": torch.tensor(1.0)})
    window.add({"loss": torch.tensor(4.0)})  # the stage switch dropped loss/rtd
    assert window.read() == {"loss": 3.0, "loss/rtd": 1.0}
    assert window.read() == {}  # a new window
    window.add({"loss": torch.tensor(float("nan"))})
    assert torch.isnan(torch.tensor(window.read()["loss"]))  # a bad step stays visible


def test_a_logging_step_logs_the_mean_of_its_window(tiny_overrides, tmp_path):
    def run(name, *extra):
        resolved = load_config("sc", [*tiny_overrides, f"run.dir={tmp_path / name}", "trainer.max_steps=4",
                                      "lr_schedule.warmup_steps=100", "runtime.count_flops=false", *extra])
        train(resolved)
        return read_metrics(tmp_path / name / "metrics.jsonl")

    every = run("every", "trainer.log_every=1")
    windows = run("windows", "trainer.log_every=2")
    assert [r["step"] for r in windows] == [2, 4]
    for record, (a, b) in zip(windows, [every[0:2], every[2:4]]):
        for key in ("loss", "loss/span_corruption", "grad_norm"):
            assert record[key] == pytest.approx((a[key] + b[key]) / 2, rel=1e-6), key
        assert record["span_corruption/accuracy"] == b["span_corruption/accuracy"]  # the logging step's own
        assert record["time/step_s"] > 0 and 0 <= record["time/data_s"] <= record["time/step_s"]
