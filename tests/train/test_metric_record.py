"""Logged numbers are recorded where they are computed with a declared reduction
(``spactor.metric_record``), combined over micro-batches by the step and reduced over
ranks once per logging window (``MetricWindow``): issue 24."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from spactor.config import load_config
from spactor.metric_record import MetricRecord, Reduce
from spactor.plugins import load_plugins
from spactor.train.loop import train
from spactor.train.metrics import MetricWindow, read_metrics
from ports import free_port  # tests/ports.py: tests/ is on sys.path (rootdir conftest)

load_plugins()

SPACTOR = Path(__file__).resolve().parents[2] / "spactor"


def one_step(values: dict[str, tuple[list[float], Reduce]]) -> MetricRecord:
    """A step whose micro-batches record ``values[name][0]`` in turn."""
    record = MetricRecord()
    for name, (per_micro_batch, reduce) in values.items():
        for value in per_micro_batch:
            record.record(name, torch.tensor(value), reduce)
    return record


def test_each_reduction_over_two_micro_batches_and_two_steps():
    window = MetricWindow()
    window.add(one_step({"s": ([1.0, 2.0], Reduce.SUM), "m": ([0.2, 0.4], Reduce.MEAN),
                         "x": ([5.0, 3.0], Reduce.MAX)}))
    assert window.read() == pytest.approx({"s": 3.0, "m": 0.3, "x": 5.0})
    # Over a window of two steps: the mean per step of each step's reduced value.
    window.add(one_step({"s": ([1.0, 2.0], Reduce.SUM), "m": ([0.2, 0.4], Reduce.MEAN),
                         "x": ([5.0, 3.0], Reduce.MAX)}))
    window.add(one_step({"s": ([3.0, 4.0], Reduce.SUM), "m": ([0.6, 0.8], Reduce.MEAN),
                         "x": ([1.0, 7.0], Reduce.MAX)}))
    assert window.read() == pytest.approx({"s": 5.0, "m": 0.5, "x": 6.0})


def test_a_name_keeps_one_reduction():
    record = MetricRecord()
    record.record("a", torch.tensor(1.0), Reduce.SUM)
    with pytest.raises(ValueError, match="'a' is recorded with Reduce.SUM and Reduce.MAX"):
        record.record("a", torch.tensor(1.0), Reduce.MAX)


def test_a_window_resumed_mid_way_reads_the_same():
    first = MetricWindow()
    first.add(one_step({"m": ([0.2, 0.4], Reduce.MEAN), "x": ([5.0, 3.0], Reduce.MAX)}))
    second = MetricWindow()
    second.load_state_dict(first.state_dict())
    for window in (first, second):
        window.add(one_step({"m": ([0.6, 0.8], Reduce.MEAN), "x": ([1.0, 7.0], Reduce.MAX)}))
    assert first.read() == second.read() == pytest.approx({"m": 0.5, "x": 6.0})


def test_a_window_saved_before_reductions_were_declared_loads_as_sums():
    window = MetricWindow()
    window.load_state_dict({"sums": {"loss": torch.tensor(3.0, dtype=torch.float64),
                                     "grad_norm": torch.tensor(4.0, dtype=torch.float64)},
                            "steps": {"loss": 2, "grad_norm": 2}})
    window.add(one_step({"loss": ([1.0], Reduce.SUM), "grad_norm": ([6.0], Reduce.MAX)}))
    assert window.read() == {"loss": 4.0 / 3, "grad_norm": 6.0}  # grad_norm's old shares dropped


def _rank(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    calls = []
    real = dist.all_reduce

    def counted(tensor, op=dist.ReduceOp.SUM, **kwargs):
        calls.append(str(op))
        return real(tensor, op=op, **kwargs)

    dist.all_reduce = counted
    try:
        window = MetricWindow()
        r = float(rank)  # rank 0's micro-batches: 1, 2; rank 1's: 2, 3
        window.add(one_step({f"{k}{i}": ([1.0 + r, 2.0 + r], red) for k, red in
                             (("s", Reduce.SUM), ("m", Reduce.MEAN), ("x", Reduce.MAX)) for i in range(3)}))
        values = window.read()
        if rank == 0:
            torch.save({"values": values, "calls": calls}, out)
    finally:
        dist.all_reduce = real
        dist.destroy_process_group()


def test_each_reduction_over_two_gloo_ranks_with_one_all_reduce_per_kind(tmp_path):
    out = str(tmp_path / "rank0.pt")
    mp.spawn(_rank, args=(free_port(), out), nprocs=2, join=True)
    got = torch.load(out)
    for i in range(3):
        assert got["values"][f"s{i}"] == 8.0  # 1 + 2 + 2 + 3
        assert got["values"][f"m{i}"] == 2.0  # the mean of the four
        assert got["values"][f"x{i}"] == 3.0
    assert sorted(got["calls"]) == sorted([str(dist.ReduceOp.SUM), str(dist.ReduceOp.MAX)])


# -- every key of a SpacTor run is namespaced and grep-able (README "metrics.jsonl") --------

RUN_LEVEL = {"step", "stage", "loss", "lr", "grad_norm", "tokens_seen", "tokens_per_s", "time/step_s",
             "time/data_s", "mfu", "flops_cum", "flops_normalized", "stage_switch_step", "released"}


def grep_pattern(key: str, instances: list[str]) -> str:
    """What README "metrics.jsonl" says to grep for ``key``."""
    if key in RUN_LEVEL:
        return f'"{key}"'
    if key.startswith("knob/"):
        assert key.split("/", 1)[1].split(".")[1] in instances, key  # knob/objectives.<instance>.<knob>
        return '"knob/'
    if key.startswith("val/"):
        grep_pattern(key.removeprefix("val/").removeprefix("clean/"), instances)  # a namespaced loss
        return '"val/'
    if key.startswith("loss/"):
        name = key.removeprefix("loss/")
        instance = max((i for i in instances if name == i or name.startswith(i + "_")), key=len, default=None)
        assert instance is not None, f"{key} is not loss/<instance>[_<aux>]"
        return '"loss/' if name == instance else f'{name[len(instance):]}"'  # an aux loss: its suffix
    instance, _, metric = key.partition("/")
    assert instance in instances and metric, f"{key} is neither run-level nor <instance>/<metric>"
    return f'/{metric}"'


def test_every_key_a_spactor_run_logs_is_namespaced_and_greppable(tiny_overrides, tmp_path):
    resolved = load_config("spactor", [*tiny_overrides, f"run.dir={tmp_path}", "trainer.max_steps=2",
                                       "trainer.eval_every=2", "lr_schedule.warmup_steps=100",
                                       "runtime.count_flops=false"])
    train(resolved)
    keys = {k for record in read_metrics(tmp_path / "metrics.jsonl") for k in record}
    instances = list(resolved.cfg.objectives)
    assert {"rtd/generator_accuracy", "loss/rtd_generator", "val/clean/loss/span_corruption"} <= keys
    source = "\n".join(p.read_text(encoding="utf-8") for p in SPACTOR.rglob("*.py"))
    for key in sorted(keys):
        pattern = grep_pattern(key, instances)
        assert re.search(re.escape(pattern), source), f"{key}: grep -rn '{pattern}' spactor finds nothing"
