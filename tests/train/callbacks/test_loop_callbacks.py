"""The loop with callbacks end to end: a run's own callback sees the named points in
order and its state resumes; a resume inside a logging window logs what an
uninterrupted run logs."""

from __future__ import annotations

import json
import shutil

from spactor.config import load_config
from spactor.plugins import load_plugins
from spactor.train.callbacks import Callback, LoopState
from spactor.train.metrics import read_metrics
from spactor.train.loop import train

load_plugins()


class Recorder(Callback):
    """Writes down every point it is called at, and counts logged records (its state)."""

    name = "recorder"

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.records = 0

    def pre_train(self, state: LoopState) -> None:
        self.calls.append(f"pre_train {state.step}")

    def pre_step(self, state: LoopState) -> None:
        self.calls.append(f"pre_step {state.step}")

    def check_step(self, state: LoopState, out) -> None:
        self.calls.append(f"check_step {state.step}")

    def post_step(self, state: LoopState, out) -> None:
        self.calls.append(f"post_step {state.step}")

    def log(self, state: LoopState, record: dict) -> None:
        self.calls.append(f"log {state.step}")
        self.records += 1
        record["recorder/records"] = self.records  # a field of its own, written with the rest

    def post_log(self, state: LoopState, record: dict) -> None:
        self.calls.append(f"post_log {state.step}")

    def end_step(self, state: LoopState) -> None:
        self.calls.append(f"end_step {state.step}")

    def pre_checkpoint(self, state: LoopState) -> None:
        self.calls.append(f"pre_checkpoint {state.step}")

    def post_checkpoint(self, state: LoopState, path) -> None:
        self.calls.append(f"post_checkpoint {path.name}")

    def post_train(self, state: LoopState) -> None:
        self.calls.append(f"post_train {state.step}")

    def close(self) -> None:
        self.calls.append("close")

    def state_dict(self) -> dict:
        return {"records": self.records}

    def load_state_dict(self, state: dict) -> None:
        self.records = state["records"]


def test_a_run_s_own_callback_sees_the_points_in_order_and_resumes(tiny_overrides, tmp_path):
    run_dir = tmp_path / "run"
    common = [*tiny_overrides, f"run.dir={run_dir}", "runtime.count_flops=false", "trainer.log_every=2"]
    first = Recorder()
    train(load_config("sc", [*common, "trainer.max_steps=3", "trainer.checkpoint_every=2"]), callbacks=[first])
    step = ["pre_step {0}", "check_step {0}", "post_step {1}"]
    logged = ["log {0}", "post_log {0}"]
    expected = ["pre_train 0"]
    for s, (logs, saves) in enumerate([(False, False), (True, True), (True, False)]):
        expected += [c.format(s, s + 1) for c in step]
        expected += [c.format(s + 1) for c in logged] if logs else []
        if saves:  # the built-in Checkpointing's end_step runs before this one's
            expected += ["pre_checkpoint 2", "post_checkpoint step_00000002"]
        expected += [f"end_step {s + 1}"]
    expected += ["pre_checkpoint 3", "post_checkpoint step_00000003", "post_train 3", "close"]
    assert first.calls == expected
    manifest = json.loads((run_dir / "checkpoints" / "step_00000003" / "manifest.json").read_text())
    assert manifest["shared"]["recorder"] == {"records": 2}

    second = Recorder()
    train(load_config("sc", [*common, "trainer.max_steps=4"]), resume_dir=run_dir, callbacks=[second])
    assert second.calls[0] == "pre_train 3" and second.records == 3  # resumed at 2, then one more
    assert [r["recorder/records"] for r in read_metrics(run_dir / "metrics.jsonl")] == [1, 2, 3]


def test_a_resume_inside_a_logging_window_logs_the_whole_window(tiny_overrides, tmp_path):
    """Checkpoints at steps 2, 4, 6; logging every 4: the one at step 6 is inside the
    window 5-8. Resumed from it, step 8's record averages steps 5-8 (the window's sums
    and step counts come back from the checkpoint), as the uninterrupted run's does."""
    common = [*tiny_overrides, "runtime.count_flops=false", "trainer.max_steps=8", "trainer.log_every=4",
              "trainer.checkpoint_every=2", "trainer.keep_checkpoints=3", "model.dropout=0.1"]
    full = tmp_path / "full"
    train(load_config("sc", [*common, f"run.dir={full}"]))
    part = tmp_path / "part"
    shutil.copytree(full, part)
    shutil.rmtree(part / "checkpoints" / "step_00000008")  # as if stopped after the save at step 6
    (part / "metrics.jsonl").write_text((full / "metrics.jsonl").read_text())
    result = train(load_config("sc", [*common, f"run.dir={part}"]), resume_dir=part)
    assert result.start_step == 6
    timing = {"tokens_per_s", "time/step_s", "time/data_s"}
    a, b = (read_metrics(d / "metrics.jsonl") for d in (full, part))
    assert [r["step"] for r in b] == [4, 8]
    assert [{k: v for k, v in r.items() if k not in timing} for r in a] == \
        [{k: v for k, v in r.items() if k not in timing} for r in b]  # bitwise on CPU


class HostSyncs(Callback):
    """Counts host reads of device values (``aten._local_scalar_dense``: ``.item()``,
    ``float(t)``, ``bool(t)``) from ``pre_step`` of step ``first`` to the ``end_step`` of
    step ``last``: the whole loop body, every built-in callback included."""

    name = "host_syncs"

    def __init__(self, first: int, last: int) -> None:
        self.first, self.last = first, last
        self.syncs: list[str] = []
        self._mode = None

    def pre_step(self, state: LoopState) -> None:
        if state.step + 1 == self.first:
            from torch.utils._python_dispatch import TorchDispatchMode

            syncs = self.syncs

            class Counting(TorchDispatchMode):
                def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                    if func.overloadpacket.__name__ in ("_local_scalar_dense", "item"):
                        syncs.append(func.overloadpacket.__name__)
                    return func(*args, **(kwargs or {}))

            self._mode = Counting()
            self._mode.__enter__()

    def end_step(self, state: LoopState) -> None:
        if state.step == self.last and self._mode is not None:
            self._mode.__exit__(None, None, None)
            self._mode = None

    def close(self) -> None:
        if self._mode is not None:
            self._mode.__exit__(None, None, None)


def test_a_steady_state_step_of_the_loop_syncs_once(tiny_overrides, tmp_path):
    """Steps 3-5 of a SpacTor run in stage 1 (no logging, checkpoint or evaluation
    step among them): the callbacks add no host read to the step's one."""
    counter = HostSyncs(first=3, last=5)
    train(load_config("spactor", [*tiny_overrides, f"run.dir={tmp_path / 'run'}", "runtime.count_flops=false",
                                  "optimizer.type=adafactor", "trainer.max_steps=6", "trainer.log_every=100"]),
          callbacks=[counter])
    assert counter._mode is None and len(counter.syncs) == 3, counter.syncs


def test_validation_keeps_its_own_cadence_off_the_logging_steps(tiny_overrides, tmp_path):
    """eval_every=3, log_every=5, max_steps=12 through ``spactor train``: validation runs
    at 3, 6, 9 and 12 and each reaches metrics.jsonl (3, 6, 9 as records of their own,
    12 in the last logging record); before, only step 12's was logged."""
    from spactor.cli import main

    run = tmp_path / "run"
    assert main(["train", "quickstart", *tiny_overrides, "runtime.count_flops=false", "trainer.eval_every=3",
                 "trainer.log_every=5", "trainer.max_steps=12", f"run.dir={run}"]) == 0
    records = read_metrics(run / "metrics.jsonl")
    val_steps = [r["step"] for r in records if any(k.startswith("val/loss/") for k in r)]
    assert val_steps == [3, 6, 9, 12]
    assert [r["step"] for r in records if "loss" in r] == [5, 10, 12]  # logging keeps its own cadence
    own = [r for r in records if r["step"] in (3, 6, 9)]
    assert all(set(r) >= {"step", "stage"} and "loss" not in r for r in own)


def test_a_resume_between_logging_steps_relogs_the_validation_records(tiny_overrides, tmp_path):
    """Checkpoints every 3 steps, logging every 5, validation every 3: resumed from step 6
    (a validation record of its own, no logging record), the run's metrics.jsonl is the
    uninterrupted run's, validation records included (bitwise on CPU)."""
    common = [*tiny_overrides, "runtime.count_flops=false", "trainer.max_steps=12", "trainer.log_every=5",
              "trainer.eval_every=3", "trainer.checkpoint_every=3", "trainer.keep_checkpoints=4",
              "model.dropout=0.1"]
    full = tmp_path / "full"
    train(load_config("quickstart", [*common, f"run.dir={full}"]))
    part = tmp_path / "part"
    shutil.copytree(full, part)
    for step in (9, 12):
        shutil.rmtree(part / "checkpoints" / f"step_{step:08d}")  # as if stopped after the save at step 6
    result = train(load_config("quickstart", [*common, f"run.dir={part}"]), resume_dir=part)
    assert result.start_step == 6
    timing = {"tokens_per_s", "time/step_s", "time/data_s"}
    a, b = (read_metrics(d / "metrics.jsonl") for d in (full, part))
    assert [r["step"] for r in b] == [3, 5, 6, 9, 10, 12]
    assert [{k: v for k, v in r.items() if k not in timing} for r in a] == \
        [{k: v for k, v in r.items() if k not in timing} for r in b]
