"""A run's lifecycle at its edges: a signal after the last step, a command refused after
the run directory was created, the files' modes, a run.dir that is not one line, and
what a resume says about schedule changes that lie in the past (issue 23, item 6)."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import textwrap

from spactor.cli import main
from spactor.config import load_config
from spactor.plugins import load_plugins
from spactor.train.callbacks import Callback, LoopState
from spactor.train.loop import train

FAST = ["runtime.count_flops=false"]


def test_sigterm_after_the_run_finished_exits_zero(tiny_overrides, tmp_path):
    """The signal arrives while the finished run prints its summary: the run is complete,
    so the exit status is 0, not 143 (a scheduler would count a kill)."""
    run = tmp_path / "run"
    script = textwrap.dedent(f"""
        import os, signal, sys
        import spactor.cli as cli
        real = cli.summary
        def summary(result):
            os.kill(os.getpid(), signal.SIGTERM)
            return real(result)
        cli.summary = summary
        sys.exit(cli.main(["train", "quickstart", *{[*tiny_overrides, *FAST]!r}, "trainer.max_steps=2",
                           "run.dir={run}"]))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600,
                         check=False)
    assert out.returncode == 0, (out.returncode, out.stderr[-2000:])
    assert (run / "checkpoints" / "step_00000002").is_dir()


class SignalAtLastStep(Callback):
    def end_step(self, state: LoopState) -> None:
        if state.step == state.max_steps:
            os.kill(os.getpid(), signal.SIGINT)  # the trainer's handler catches it: safe in-process


def test_a_signal_during_the_last_step_leaves_a_complete_run_not_a_preempted_one(tiny_overrides, tmp_path):
    load_plugins()
    result = train(load_config("quickstart", [*tiny_overrides, *FAST, "trainer.max_steps=2",
                                              f"run.dir={tmp_path / 'run'}"]), callbacks=[SignalAtLastStep()])
    assert result.steps == 2 and result.preempted is None  # else "resume with: ..." and exit 130


def test_a_refused_command_leaves_no_directory_behind(tiny_overrides, tmp_path, capsys):
    """Refused after the run directory was made and locked (the memory check runs after the
    data is read): neither the directory, nor the parents it made, nor ``.lock`` remain."""
    too_big = [*tiny_overrides, *FAST, "trainer.batch_size=1000000"]
    new = tmp_path / "new" / "deep" / "run"
    assert main(["train", "quickstart", *too_big, f"run.dir={new}"]) == 2
    assert "trainer.batch_size" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()
    empty = tmp_path / "empty"  # a directory that was there stays, as it was
    empty.mkdir()
    assert main(["train", "quickstart", *too_big, f"run.dir={empty}"]) == 2
    assert empty.is_dir() and list(empty.iterdir()) == []


def test_the_run_directory_files_follow_the_umask(tiny_overrides, tmp_path):
    load_plugins()
    old = os.umask(0o022)
    try:
        run = tmp_path / "run"
        train(load_config("quickstart", [*tiny_overrides, *FAST, "trainer.max_steps=1", f"run.dir={run}"]))
    finally:
        os.umask(old)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in run.iterdir() if p.is_file()}
    assert modes["spiece.model"] == 0o644, modes  # was 0600 (mkstemp's private file)
    assert set(modes.values()) == {0o644}, modes


def test_a_line_break_in_run_dir_is_refused(tmp_path, capsys):
    assert main(["train", "sc", f"run.dir={tmp_path}/a\nb"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "run.dir" in err[0] and "Traceback" not in err[0]
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f'base: sc\nrun:\n  dir: "{tmp_path}/x\\ny"\n')  # YAML's escape: a real newline
    assert main(["train", str(recipe)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("spactor: error: run.dir:")
    assert list(tmp_path.iterdir()) == [recipe]


def test_a_resume_says_a_past_schedule_change_has_no_effect(tiny_overrides, tmp_path, capsys):
    """τ = 2 and the run at step 4 (stage 2): a new τ cannot take effect, and the resume
    says so instead of "applies"; a run still in stage 1 applies a new τ."""
    load_plugins()
    common = [*tiny_overrides, *FAST, "trainer.batch_size=2", "trainer.checkpoint_every=4"]

    def run(name: str, tau: int, more: int, new_tau: int) -> str:
        path = tmp_path / name
        train(load_config("spactor", [*common, "trainer.max_steps=4", f"schedules.two_stage.tau={tau}",
                                      f"run.dir={path}"]))
        capsys.readouterr()
        train(load_config("spactor", [*common, f"trainer.max_steps={more}",
                                      f"schedules.two_stage.tau={new_tau}", f"run.dir={path}"]), resume_dir=path)
        return capsys.readouterr().out

    past = run("past", tau=2, more=5, new_tau=3)
    line = next(x for x in past.splitlines() if "schedules.two_stage.tau" in x)
    assert "has no effect" in line and "applies" not in line, past
    assert "resume applies trainer.max_steps 4 -> 5" in past
    future = run("future", tau=10, more=5, new_tau=5)
    assert "resume applies schedules.two_stage.tau 10 -> 5" in future


def test_which_schedule_changes_lie_in_the_past():
    """The verdict behind that message, without training: an anneal's end moved while it
    is still running takes effect; once both ends are past, or once the objective it
    drives is released, it has none; a curriculum stage that has ended takes no new end."""
    from spactor.train.resume_changes import schedules_without_effect

    load_plugins()
    knobs = {"objectives.rtd.weight": 10.0, "objectives.span_corruption.weight": 10.0,
             "objectives.mlm_mask.ratio": 0.15, "objectives.rtd.generator_weight": 1.0}
    names = ["span_corruption", "mlm_mask", "rtd"]
    steps = ["trainer.max_steps=1000"]
    old = load_config("spactor_anneal", [*steps, "schedules.rtd_weight.end_step=300"]).schedules
    new = load_config("spactor_anneal", [*steps, "schedules.rtd_weight.end_step=200"]).schedules

    def quiet(step: int, stage: int, live: list[str] | None = None) -> bool:
        return schedules_without_effect(old, new, ["rtd_weight"], knobs, names, step, stage, 1000, live) == {
            "rtd_weight"}

    assert not quiet(100, 1) and not quiet(250, 1)
    assert quiet(300, 1) and quiet(600, 2)
    assert quiet(250, 2, live=["span_corruption"])  # rtd released: its weight sets nothing
    stages = "schedules.curriculum.stages"
    steps.append(f"{stages}.handover.until_step=500")
    old = load_config("spactor_three_stage", [*steps, f"{stages}.hybrid.until_step=100"]).schedules
    new = load_config("spactor_three_stage", [*steps, f"{stages}.hybrid.until_step=150"]).schedules

    def quiet_curriculum(step: int, stage: int) -> bool:
        return schedules_without_effect(old, new, ["curriculum"], knobs, names, step, stage, 1000) == {"curriculum"}

    assert not quiet_curriculum(50, 1) and quiet_curriculum(120, 2)
