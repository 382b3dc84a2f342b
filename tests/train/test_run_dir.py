"""A run directory is one run: resumes that would change it are refused without touching
it, one writer at a time, its identity and tokenizer are kept, ``--resume`` says what it
does. Driven through the CLI the way a user types it (``python -m spactor``)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from spactor.plugins import load_plugins
from spactor.train.run_dir import RunDirLock, compare_configs, read_saved_config

load_plugins()

STEPS = 4


def spactor(*args: str, cwd=None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(check=False, args=[sys.executable, "-m", "spactor", *args], capture_output=True,
                          text=True, cwd=cwd, timeout=600, env=env)


def one_error_line(out: subprocess.CompletedProcess[str]) -> str:
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in out.stderr, out.stderr
    return lines[0]


def tree_hash(root: Path) -> dict[str, str]:
    """Every file under ``root`` (hidden ones too) → sha256 of its bytes."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def steps_logged(run_dir: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def tiny(tiny_overrides) -> list[str]:
    return [*tiny_overrides, "runtime.count_flops=false", "lr_schedule.warmup_steps=100"]


@pytest.fixture(scope="module")
def trained(tiny, tmp_path_factory) -> Path:
    """A finished tiny span-corruption run of STEPS steps, checkpointed at steps 2 and 4."""
    run_dir = tmp_path_factory.mktemp("trained") / "run"
    out = spactor("train", "sc", *tiny, f"trainer.max_steps={STEPS}", "trainer.checkpoint_every=2",
                  f"run.dir={run_dir}")
    assert out.returncode == 0, out.stderr
    return run_dir


@pytest.fixture
def run(trained, tmp_path) -> Path:
    """A private copy of ``trained`` for a test to resume (or fail to)."""
    copy = tmp_path / "run"
    shutil.copytree(trained, copy)
    return copy


# --------------------------------------------------------------------------- 1: resume never damages


def test_resume_refuses_a_changed_model_and_loader_and_leaves_the_run_resumable(run):
    before = tree_hash(run)
    out = spactor("train", "--resume", str(run), "model.size=small", "data.num_workers=2",
                  "trainer.max_steps=6")
    assert out.returncode == 2
    line = one_error_line(out)
    assert "model.size tiny -> small" in line and "data.num_workers null -> 2" in line, line
    assert "trainer.max_steps" not in line  # a change a resume may make is not a reason to refuse
    assert tree_hash(run) == before
    out = spactor("train", "--resume", str(run), "trainer.max_steps=6")
    assert out.returncode == 0, out.stderr
    assert steps_logged(run) == [1, 2, 3, 4, 5, 6]


def test_a_refused_resume_stops_every_rank_under_torchrun(run):
    before = tree_hash(run)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_port", str(29500 + os.getpid() % 1000 + 7),
           "-m", "spactor", "train", "--resume", str(run), "model.size=small"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run(check=False, args=cmd, capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode != 0
    refusal = f"spactor: error: --resume {run}: cannot change model.size tiny -> small"
    assert out.stderr.count(refusal) == 2, out.stderr  # both ranks, neither left waiting
    assert tree_hash(run) == before


def test_resume_applies_and_reports_mutable_changes(run):
    out = spactor("train", "--resume", str(run), "trainer.max_steps=6", "trainer.log_every=2")
    assert out.returncode == 0, out.stderr
    assert f"resume applies trainer.max_steps {STEPS} -> 6" in out.stdout
    assert "resume applies trainer.log_every 1 -> 2" in out.stdout
    saved = read_saved_config(run)
    assert saved["trainer"]["max_steps"] == 6 and saved["trainer"]["log_every"] == 2
    assert steps_logged(run) == [1, 2, 3, 4, 6]


def test_compare_configs_sorts_changes_into_applied_and_refused(trained):
    from spactor.config import load_config

    saved = read_saved_config(trained)
    changes = ["trainer.max_steps=9", "trainer.seed=3", "lr_schedule.warmup_steps=50", "trainer.batch_size=8"]
    resolved = load_config(str(trained / "config.yaml"), changes)
    applied, refused = compare_configs(saved, resolved)
    assert applied == ["lr_schedule.warmup_steps 100 -> 50", f"trainer.max_steps {STEPS} -> 9"]
    assert refused == ["trainer.batch_size 4 -> 8", "trainer.seed 0 -> 3"]


def test_compare_configs_names_added_plugins_and_ignores_fields_a_version_lacks():
    from spactor.config import as_dict, load_config

    saved = as_dict(load_config("sc", ["model.size=tiny"]))
    _, refused = compare_configs(saved, load_config("spactor", ["model.size=tiny"]))
    assert refused == ["objectives.mlm_mask added", "objectives.rtd added",
                       "objectives.span_corruption.weight 1.0 -> 10.0", "schedules.two_stage added"]
    del saved["trainer"]["max_consecutive_skips"]  # as written by a spactor without that field
    del saved["objectives"]["span_corruption"]["weight"]
    assert compare_configs(saved, load_config("sc", ["model.size=tiny"])) == ([], [])


# --------------------------------------------------------------------------- 2: one writer


def test_a_second_writer_is_refused_naming_the_holder(run, tiny):
    before = tree_hash(run)
    lock = RunDirLock()
    lock.acquire(run)  # this test process plays the first `spactor train`
    try:
        holding = tree_hash(run)
        out = spactor("train", "sc", *tiny, "trainer.max_steps=6", f"run.dir={run}")
        assert out.returncode == 2
        line = one_error_line(out)
        assert f"PID {os.getpid()} on host {socket.gethostname()}" in line and str(run) in line, line
        out = spactor("train", "--resume", str(run), "trainer.max_steps=6")
        assert out.returncode == 2 and f"PID {os.getpid()}" in one_error_line(out)
        assert tree_hash(run) == holding  # the refused process wrote nothing, not even the lock file
    finally:
        lock.release()
    assert tree_hash(run) == before  # released: the lock file is empty again


def test_the_lock_dies_with_its_holder(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time; from spactor.train.run_dir import RunDirLock; "
         f"RunDirLock().acquire({str(tmp_path)!r}); print('held', flush=True); time.sleep(600)"],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(Exception, match=f"PID {holder.pid} on host"):
            RunDirLock().acquire(tmp_path)
    finally:
        holder.kill()  # SIGKILL: no clean-up code runs
        holder.wait()
    lock = RunDirLock()
    lock.acquire(tmp_path)
    lock.release()


# --------------------------------------------------------------------------- 3: identity


def test_another_recipe_on_a_run_directory_is_refused(run, tiny):
    assert json.loads((run / "identity.json").read_text())["config"]["model.size"] == "tiny"
    before = tree_hash(run)
    out = spactor("train", "spactor", *tiny, "trainer.max_steps=6", f"run.dir={run}")
    assert out.returncode == 2
    line = one_error_line(out)
    assert "holds checkpoints of another run" in line and "objectives.rtd" in line, line
    assert "run.fresh=true" in line
    assert tree_hash(run) == before


def test_a_resumed_run_keeps_its_own_tokenizer(tiny, tmp_path, english_corpus):
    from spactor.data.tokenizer import Tokenizer

    given = next(a.split("=", 1)[1] for a in tiny if a.startswith("data.tokenizer="))
    tokenizer = tmp_path / "tok.model"
    shutil.copy(given, tokenizer)
    run = tmp_path / "run"
    out = spactor("train", "sc", *tiny, "trainer.max_steps=2", f"data.tokenizer={tokenizer}",
                  f"run.dir={run}")
    assert out.returncode == 0, out.stderr
    own = (run / "spiece.model").read_bytes()
    identity = json.loads((run / "identity.json").read_text())
    assert identity["tokenizer_sha256"] == hashlib.sha256(own).hexdigest()

    Tokenizer.train(english_corpus[:40], tokenizer, vocab_size=400, num_threads=1)  # the file is replaced
    before = tree_hash(run)
    out = spactor("train", "--resume", str(run), "trainer.max_steps=3")
    assert out.returncode == 2
    line = one_error_line(out)
    assert line.startswith("spactor: error: data.tokenizer:"), line
    assert "not the tokenizer this run was trained" in line
    assert tree_hash(run) == before

    tokenizer.unlink()  # gone: the run needs only its own copy
    out = spactor("train", "--resume", str(run), "trainer.max_steps=3")
    assert out.returncode == 0, out.stderr
    assert (run / "spiece.model").read_bytes() == own
    assert steps_logged(run) == [1, 2, 3]


# --------------------------------------------------------------------------- 4: --resume says what it does


def test_resume_past_max_steps_says_so_and_changes_nothing(run):
    before = tree_hash(run)
    out = spactor("train", "--resume", str(run), "trainer.max_steps=2")
    assert out.returncode == 0, out.stderr
    assert f"the run is at step {STEPS} and trainer.max_steps is 2: nothing to train" in out.stdout
    assert tree_hash(run) == before


def test_resume_without_a_checkpoint_is_refused_and_keeps_the_metrics(run, tiny):
    shutil.rmtree(run / "checkpoints")
    before = tree_hash(run)
    out = spactor("train", "--resume", str(run))
    assert out.returncode == 2
    assert f"no checkpoint in {run}" in one_error_line(out)
    # and a plain start there does not erase the metrics either
    out = spactor("train", "sc", *tiny, "trainer.max_steps=2", f"run.dir={run}")
    assert out.returncode == 2 and "run.fresh=true" in one_error_line(out)
    assert tree_hash(run) == before
    out = spactor("train", "sc", *tiny, "trainer.max_steps=2", "run.fresh=true", f"run.dir={run}")
    assert out.returncode == 0, out.stderr
    assert steps_logged(run) == [1, 2]


def test_double_ctrl_c_before_the_first_checkpoint_keeps_the_metrics(tiny, tmp_path):
    run = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "spactor", "train", "sc", *tiny, "trainer.max_steps=100000", f"run.dir={run}"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    metrics = run / "metrics.jsonl"
    deadline = time.monotonic() + 300
    while not (metrics.is_file() and metrics.read_text().count("\n") >= 2):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.2)
    # Two interrupts at once (SIGTERM second: two SIGINTs sent together may merge into one):
    # the second stops the run at once, before the step it was in could be checkpointed.
    proc.send_signal(signal.SIGINT)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "Traceback" not in err, err  # interrupted, at any moment
    assert not list(run.glob("checkpoints/step_*")), err
    before = tree_hash(run)
    assert len(steps_logged(run)) >= 2
    out = spactor("train", "--resume", str(run))
    assert out.returncode == 2 and f"no checkpoint in {run}" in one_error_line(out)
    assert tree_hash(run) == before


# --------------------------------------------------------------------------- 7: frozen generators


def test_a_frozen_generator_without_a_checkpoint_is_a_config_error(tiny, tmp_path):
    run = tmp_path / "run"
    out = spactor("train", "fast_electra", *tiny, "trainer.max_steps=1", f"run.dir={run}")
    assert out.returncode == 2
    line = one_error_line(out)
    assert "objectives.rtd.generator_checkpoint: None" in line and "frozen generator" in line, line
    assert not run.exists()  # refused before anything was built or written


def test_a_missing_or_foreign_generator_checkpoint_is_refused_before_start_up(tiny, trained, tmp_path):
    run = tmp_path / "run"
    out = spactor("train", "fast_electra", *tiny, f"objectives.rtd.generator_checkpoint={tmp_path / 'nope'}",
                  f"run.dir={run}")
    assert out.returncode == 2 and "no such file or directory" in one_error_line(out)
    out = spactor("train", "fast_electra", *tiny, f"objectives.rtd.generator_checkpoint={trained}",
                  f"run.dir={run}")
    assert out.returncode == 2
    line = one_error_line(out)
    assert "objectives.rtd.generator_checkpoint" in line and "no complete generator weights" in line, line
    assert not run.exists()


def frozen_generator(tiny, rows_extra: int = 0):
    """fast_electra's generator at tiny size, on CPU, with ``rows_extra`` more vocabulary rows."""
    import torch

    from spactor.config import load_config
    from spactor.data.tokenizer import Tokenizer
    from spactor.objectives.rtd import build_generator
    from spactor.validation import check_model, model_shape

    resolved = load_config("fast_electra", tiny)
    hidden = check_model(resolved.model, resolved.cfg.data.input_length)
    rows = Tokenizer.load(resolved.cfg.data.tokenizer).vocab().size + rows_extra
    embedding, length = torch.nn.Embedding(rows, hidden), resolved.cfg.data.input_length
    shape = model_shape(resolved.model)  # the recipe's generator is sized from D's dimensions
    config = resolved.objectives["rtd"].config
    return build_generator(config, embedding, hidden, length, "objectives.rtd", shape)


def test_a_generator_of_another_vocabulary_is_refused_and_a_matching_one_is_named(tiny, tmp_path):
    import torch

    from spactor.config import ConfigError, load_config
    from spactor.validation import check_files

    wrong, right = tmp_path / "wrong.pt", tmp_path / "right.pt"
    torch.save(frozen_generator(tiny, rows_extra=128).state_dict(), wrong)
    torch.save(frozen_generator(tiny).state_dict(), right)
    resolved = load_config("fast_electra", [*tiny, f"objectives.rtd.generator_checkpoint={wrong}"])
    with pytest.raises(ConfigError, match=r"embedding.weight has shape \[\d+, \d+\].*another vocabulary"):
        check_files(resolved)
    run = tmp_path / "run"
    out = spactor("train", "fast_electra", *tiny, "trainer.max_steps=1", "lr_schedule.warmup_steps=2",
                  f"objectives.rtd.generator_checkpoint={right}", f"run.dir={run}")
    assert out.returncode == 0, out.stderr
    assert f"objectives.rtd: generator loaded from {right}\n" in out.stdout


# --------------------------------------------------------------------------- 8: FLOPs across resumes


@pytest.fixture(scope="module")
def spactor_run(tiny, tmp_path_factory) -> Path:
    """SpacTor(τ=3) for 4 steps, FLOPs counted, checkpoints at step 2 (stage 1) and 4 (stage 2)."""
    run_dir = tmp_path_factory.mktemp("spactor") / "run"
    out = spactor("train", "spactor", *tiny, "runtime.count_flops=true", "schedules.two_stage.tau=3",
                  "trainer.max_steps=4", "trainer.checkpoint_every=2", f"run.dir={run_dir}")
    assert out.returncode == 0, out.stderr
    return run_dir


def records(run_dir: Path) -> dict[int, dict]:
    return {r["step"]: r for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())}


def test_flops_after_the_switch_follow_the_stage_whatever_tau_says_on_resume(spactor_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(spactor_run, run)
    out = spactor("train", "--resume", str(run), "schedules.two_stage.tau=100", "trainer.max_steps=6")
    assert out.returncode == 0, out.stderr
    assert "resume: schedules.two_stage.tau 3 -> 100 has no effect" in out.stdout  # in stage 2 already
    assert "were not counted" not in out.stderr
    r = records(run)
    f1, f2 = r[1]["flops_per_step"], r[4]["flops_per_step"]
    baseline = f1 / r[1]["flops_normalized"]
    assert f2 < f1 and [r[s]["stage"] for s in range(1, 7)] == [1, 1, 1, 2, 2, 2]
    assert r[5]["flops_per_step"] == r[6]["flops_per_step"] == f2
    assert r[6]["flops_cum"] == pytest.approx(3 * f1 + 3 * f2, rel=1e-12)
    assert r[6]["flops_normalized"] == pytest.approx((3 * f1 + 3 * f2) / (6 * baseline), rel=1e-12)
    manifest = json.loads((run / "checkpoints" / "step_00000006" / "manifest.json").read_text())
    assert manifest["shared"]["flops"]["steps_by_stage"] == {"1": 3, "2": 3}  # kept across the resume


def test_a_resume_before_the_switch_with_a_lower_tau_logs_the_switch(spactor_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(spactor_run, run)
    shutil.rmtree(run / "checkpoints" / "step_00000004")  # resume from step 2, still in stage 1
    out = spactor("train", "--resume", str(run), "schedules.two_stage.tau=2")
    assert out.returncode == 0, out.stderr
    assert "at step 2 (stage 1)" in out.stdout
    r = records(run)
    assert sorted(r) == [1, 2, 3, 4]
    assert r[3]["stage"] == 2 and r[3]["stage_switch_step"] == 2 and "stage_switch_step" not in r[4]
    f1, f2 = r[1]["flops_per_step"], r[4]["flops_per_step"]
    assert f2 < f1 and r[3]["flops_per_step"] == f2
    assert r[4]["flops_cum"] == pytest.approx(2 * f1 + 2 * f2, rel=1e-12)


def test_a_spactor_checkpoint_of_stage_1_feeds_a_frozen_generator(spactor_run, tiny):
    from spactor.config import load_config
    from spactor.validation import check_files

    checkpoint = spactor_run / "checkpoints" / "step_00000002"
    resolved = load_config("spactor_frozen", [*tiny, f"objectives.rtd.generator_checkpoint={checkpoint}"])
    assert check_files(resolved) == [
        f"objectives.rtd: generator loaded from {checkpoint / 'dcp'} (step 2)"
    ]


# --------------------------------------------------------------------------- 9: base: beside its recipe


def test_a_recipe_base_is_found_beside_it_from_any_directory(tiny, tmp_path):
    recipes = tmp_path / "recipes"
    recipes.mkdir()
    (recipes / "parent.yaml").write_text("base: sc\ntrainer:\n  max_steps: 3\n")
    (recipes / "child.yaml").write_text("base: parent.yaml\n")
    (recipes / "orphan.yaml").write_text("base: gone.yaml\n")
    out = spactor("preview", str(recipes / "child.yaml"), *tiny, "--n", "1", cwd=tmp_path.parent)
    assert out.returncode == 0, out.stderr
    out = spactor("train", str(recipes / "orphan.yaml"), *tiny, cwd=tmp_path.parent)
    assert out.returncode == 2
    assert f"recipe '{recipes / 'orphan.yaml'}': base 'gone.yaml' does not exist" in one_error_line(out)
