"""Multi-rank training on CPU with gloo, launched with torchrun as a user would."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

HERE = Path(__file__).parent


def torchrun(nproc: int, *args: str, timeout: int = 600) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
           "--master_port", str(29500 + os.getpid() % 1000), *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(check=False, args=cmd, capture_output=True, text=True, timeout=timeout, env=env)


def spactor(*args: str, timeout: int = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(check=False, args=[sys.executable, "-m", "spactor", *args], capture_output=True, text=True, timeout=timeout)


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize(("recipe", "overrides"), [
    ("sc", []),
    ("spactor", []),  # stage 1, the generator's sampling included
    # DeBERTa-v3 sharing: D's input is stop_grad(E_G[ids]) + E_D[ids], both embedders sharded
    ("spactor", ["objectives.rtd.embedding_sharing=gdes"]),
    ("causal_lm", ["lr_schedule.warmup_steps=1", "lr_schedule.lr=1e-2"]),  # llama: one FSDP unit per decoder block
    ("ul2_decoder", ["lr_schedule.warmup_steps=1", "lr_schedule.lr=1e-2"]),  # llama with the bidirectional-prefix mask
    ("sc", ["model.arch=t5gemma"]),  # RoPE encoder-decoder, no mask for its unpadded input
], ids=["sc", "spactor", "spactor-gdes", "causal_lm", "ul2_decoder", "sc-t5gemma"])
def test_two_ranks_match_one_rank_on_the_same_global_batch(tmp_path, recipe, overrides):
    one, two = tmp_path / "one.json", tmp_path / "two.json"
    script = str(HERE / "dist_equivalence.py")
    for nproc, out in ((1, one), (2, two)):
        # one rank: a plain module; two: FSDP2
        done = torchrun(nproc, script, str(out), "--recipe", recipe, *overrides)
        assert done.returncode == 0, done.stderr[-3000:]
    steps_one, steps_two = json.loads(one.read_text()), json.loads(two.read_text())
    assert [sorted(s) for s in steps_one] == [sorted(s) for s in steps_two]
    for a, b in zip(steps_one, steps_two):
        assert a == pytest.approx(b, rel=1e-5, abs=1e-6)
    assert steps_one[-1]["loss"] < steps_one[0]["loss"]
    if recipe == "spactor":
        assert {"loss/rtd", "loss/rtd_generator", "loss/span_corruption"} <= set(steps_one[0])


def test_a_whole_recipe_run_on_two_ranks_matches_one_rank(tiny_overrides, tmp_path):
    """The loader gives every world size the same global batches (rank r: block r), so
    `spactor train sc` on 2 gloo ranks logs the training losses of the 1-rank run; a
    resume on 1 rank continues the same data stream."""
    common = [*tiny_overrides, "runtime.count_flops=false", "trainer.max_steps=4", "trainer.eval_every=2",
              "lr_schedule.warmup_steps=100"]
    one, two = tmp_path / "one", tmp_path / "two"
    done = torchrun(1, "-m", "spactor", "train", "sc", *common, f"run.dir={one}")
    assert done.returncode == 0, done.stderr[-3000:]
    done = torchrun(2, "-m", "spactor", "train", "sc", *common, f"run.dir={two}")
    assert done.returncode == 0, done.stderr[-3000:]
    a, b = metrics(one), metrics(two)
    # Adafactor's first update is lr·RMS(p)·sign(g) (v = g² at step 1), so fp32 reduction
    # order, which differs between world sizes, can flip near-zero entries: the runs agree
    # to ~1e-4 after a few steps. Another data order moves the losses by > 1e-2.
    assert [r["loss"] for r in a] == pytest.approx([r["loss"] for r in b], rel=1e-3, abs=1e-6)
    # Validation corrupts each rank's rows by their global index too.
    val_a = [r["val/loss/span_corruption"] for r in a if "val/loss/span_corruption" in r]
    val_b = [r["val/loss/span_corruption"] for r in b if "val/loss/span_corruption" in r]
    assert len(val_b) == 2 and val_a == pytest.approx(val_b, rel=1e-3)

    # Two more steps: straight on, and on 1 rank from the 2-rank checkpoint. The data
    # stream continues (same batches), so the losses agree with the straight run.
    for run_dir in (one, two):
        resumed = spactor("train", "--resume", str(run_dir), "trainer.max_steps=6")
        assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "different number of ranks" in resumed.stdout
    a, b = metrics(one), metrics(two)
    assert [r["step"] for r in b] == list(range(1, 7))
    assert [r["loss"] for r in a] == pytest.approx([r["loss"] for r in b], rel=1e-3, abs=1e-6)


def test_two_stage_switch_on_two_ranks_then_resume_on_one(tiny_overrides, tmp_path):
    run_dir = tmp_path / "run"
    done = torchrun(2, "-m", "spactor", "train", "spactor", *tiny_overrides, f"run.dir={run_dir}",
                    "schedules.two_stage.tau=3", "trainer.max_steps=5", "lr_schedule.warmup_steps=100")
    assert done.returncode == 0, done.stderr[-3000:]
    records = metrics(run_dir)
    assert [r["stage"] for r in records] == [1, 1, 1, 2, 2]
    assert "loss/rtd" in records[2] and "loss/rtd" not in records[3]
    assert records[3]["released"] == ["mlm_mask", "rtd"]

    resumed = spactor("train", "--resume", str(run_dir), "trainer.max_steps=7")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "different number of ranks" in resumed.stdout
    records = metrics(run_dir)
    assert [r["step"] for r in records] == list(range(1, 8))
    assert all(r["stage"] == 2 for r in records[3:])


def test_sigkill_at_a_random_step_then_resume_matches(tiny_overrides, tmp_path):
    common = [*tiny_overrides, "trainer.checkpoint_every=1", "trainer.max_steps=12", "lr_schedule.warmup_steps=100"]
    full = tmp_path / "full"
    assert spactor("train", "sc", *common, f"run.dir={full}").returncode == 0

    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "spactor", "train", "sc", *common, f"run.dir={killed}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    kill_after = 3 + (os.getpid() % 5)  # some step in the middle, not a fixed one
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        log = killed / "metrics.jsonl"
        if log.exists() and len(log.read_text().splitlines()) >= kill_after:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert len(metrics(killed)) < 12, "the run finished before it could be killed"

    resumed = spactor("train", "--resume", str(killed))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert [r["loss"] for r in metrics(killed)] == [r["loss"] for r in metrics(full)]


def test_rank0_alone_reads_weights_from_a_checkpoint_without_collectives(tmp_path):
    """Downstream evaluation (``load_model_weights``) and the FLOPs count (the generator's
    ``load_generator_weights``) read a checkpoint on rank 0 only, while the other ranks
    wait elsewhere: a ``dcp.load`` on the default group would wait for them forever."""
    out = tmp_path / "read.json"
    done = torchrun(2, str(HERE / "dist_rank0_reads.py"), str(out), str(tmp_path / "checkpoints"), timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(out.read_text()) == {"model": True, "generator": True}


def test_every_rank_runs_the_same_collectives_with_dtypes_nccl_reduces(tiny_overrides, tmp_path):
    """A run with validation, periodic checkpoints and a resume: the ranks call the same
    collectives in the same order with the same tensor shapes (a mismatch hangs NCCL), and
    every tensor handed to one is on the rank's device and of a dtype NCCL takes (no bool)."""
    common = [*tiny_overrides, "runtime.count_flops=true", "trainer.max_steps=4", "trainer.eval_every=2",
              "trainer.checkpoint_every=2", "trainer.log_every=2", "lr_schedule.warmup_steps=100"]
    script = str(HERE / "dist_collective_log.py")
    run_dir = tmp_path / "run"
    for i, args in enumerate([["train", "spactor", *common, f"run.dir={run_dir}"],
                              ["train", "--resume", str(run_dir), "trainer.max_steps=6"]]):
        logs = tmp_path / f"logs{i}"
        logs.mkdir()
        done = torchrun(2, script, str(logs), *args)
        assert done.returncode == 0, done.stderr[-3000:]
        rank0, rank1 = (json.loads((logs / f"rank{r}.json").read_text()) for r in (0, 1))
        assert rank0 == rank1
        ops = {c["op"] for c in rank0}
        assert {"all_reduce", "barrier", "broadcast_object_list"} <= ops
        for call in rank0:
            for dtype, _, device in call["tensors"]:
                assert dtype != "torch.bool" and device == "cpu", call


def test_downstream_evaluation_on_two_ranks(tiny_overrides, tmp_path):
    """``trainer.downstream_every`` under torchrun: rank 0 fine-tunes from the checkpoint
    while rank 1 waits in the gloo group; both run the same collectives and the scores
    are logged."""
    run_dir = tmp_path / "run"
    logs = tmp_path / "logs"
    logs.mkdir()
    done = torchrun(2, str(HERE / "dist_collective_log.py"), str(logs), "--tiny-finetune", "train", "sc",
                    *tiny_overrides, "runtime.count_flops=false", "trainer.max_steps=2",
                    "trainer.downstream_every=2", f"run.dir={run_dir}", timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    rank0, rank1 = (json.loads((logs / f"rank{r}.json").read_text()) for r in (0, 1))
    assert rank0 == rank1 and "new_group" in {c["op"] for c in rank0}
    scored = [r for r in metrics(run_dir) if "eval/pydoc_module/score" in r]
    assert [r["step"] for r in scored] == [2]
