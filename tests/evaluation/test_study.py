"""``spactor study``: a micro study (2 arms, a few steps) runs, reports, and resumes
after a kill without redoing finished arms or evaluations."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import spactor.evaluation.study as study_mod
from spactor.cli import main
from spactor.evaluation.study import load_study, run_study


def micro_study(tmp_path, tiny_overrides) -> str:
    overrides = [o for o in tiny_overrides if not o.startswith("runtime.progress")]
    text = {
        "recipe": "spactor",
        "overrides": [*overrides, "model.size=tiny", "trainer.eval_every=2", "runtime.count_flops=false",
                      "runtime.progress=false"],
        "steps": 4,
        "checkpoints": [2, 4],
        "tasks": ["pydoc_module"],
        "seeds": 2,
        "finetune": {"steps": 2, "batch_size": 4, "max_input_length": 32, "max_target_length": 4,
                     "eval_batch_size": 256},
        "arms": {"baseline": {"schedules.two_stage.tau": 0}, "spactor": {"schedules.two_stage.tau": 2}},
    }
    path = tmp_path / "micro.yaml"
    path.write_text(json.dumps(text))  # JSON is YAML
    return str(path)


def test_study_resumes_after_a_kill_without_redoing_finished_arms(tmp_path, tiny_overrides, monkeypatch):
    path = micro_study(tmp_path, tiny_overrides)
    out = tmp_path / "out"
    real_train, real_eval = study_mod.train_arm, None
    trained: list[str] = []

    def killed_on_second_arm(study, arm, run_dir):
        if arm == "spactor":
            raise KeyboardInterrupt  # the study process dies while pre-training its second arm
        trained.append(arm)
        return real_train(study, arm, run_dir)

    monkeypatch.setattr(study_mod, "train_arm", killed_on_second_arm)
    with pytest.raises(KeyboardInterrupt):
        run_study(tmp_path / "micro.yaml", out_dir=str(out))
    assert trained == ["baseline"] and (out / "baseline" / "checkpoints" / "step_00000004").is_dir()
    baseline_mtime = (out / "baseline" / "checkpoints" / "step_00000004" / "manifest.json").stat().st_mtime_ns

    def recording(study, arm, run_dir):
        trained.append(arm)
        return real_train(study, arm, run_dir)

    import spactor.evaluation.finetune as evaluate

    real_eval = evaluate.evaluate_run
    evaluated: list[tuple[str, int | None]] = []

    def counting_eval(run_dir, task, step=None, **kw):
        evaluated.append((run_dir.name, step))
        return real_eval(run_dir, task, step=step, **kw)

    monkeypatch.setattr(study_mod, "train_arm", recording)
    monkeypatch.setattr(evaluate, "evaluate_run", counting_eval)
    assert main(["study", path, "--out", str(out)]) == 0
    assert trained == ["baseline", "spactor"]  # the finished arm was not trained again
    assert (out / "baseline" / "checkpoints" / "step_00000004" / "manifest.json").stat().st_mtime_ns == baseline_mtime
    assert sorted(evaluated, key=str) == sorted(
        [("baseline", 2), ("baseline", 4), ("baseline", None), ("spactor", 2), ("spactor", 4)], key=str)
    report = (out / "study.md").read_text()
    assert "| baseline |" in report and "| spactor |" in report and "random init" in report
    assert (out / "study.png").stat().st_size > 0

    evaluated.clear()
    trained.clear()
    assert main(["study", path, "--out", str(out)]) == 0  # all done: nothing is redone
    assert trained == [] and evaluated == []


def test_study_file_errors_and_shipped_studies(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("recipe: sc\nsteps: 10\ncheckpoints: [20]\narms: {a: {}}\n")
    assert main(["study", str(bad)]) == 2
    assert "checkpoints must be a list of steps in 1..10" in capsys.readouterr().err
    bad.write_text("recipe: sc\nsteps: 10\ncheckpoints: [5]\narms: {a: {}}\nseedz: 3\n")
    assert main(["study", str(bad)]) == 2
    assert "unknown key 'seedz'" in capsys.readouterr().err
    for name in ("spactor_tiny", "spactor_base"):
        study = load_study(Path(name))  # not a file: the shipped study of that name
        assert {"baseline", "spactor_inf"} <= set(study.arms)
        assert study.baseline == "baseline"
    from spactor.evaluation.study import validate_study

    for name in ("spactor_mini", "spactor_gpu"):  # every arm's config resolves
        study = load_study(Path(name))
        assert {"sc", "spactor_inf"} <= set(study.arms) and study.baseline == "sc"
        validate_study(study, tmp_path / name)
    mini = load_study(Path("spactor_mini"))
    assert mini.pretrain_seeds >= 3 and "pydoc_pairs" in mini.tasks and mini.recipe_of("electra") == "electra"


def test_print_commands(tmp_path, capsys):
    assert main(["study", "spactor_base", "--print-commands", "--out", str(tmp_path / "base")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert sum(line.startswith("torchrun --nproc_per_node 8 -m spactor train spactor") for line in lines) == 4
    assert any("schedules.two_stage.tau=null" in line for line in lines)
    assert any(line.startswith("spactor evaluate") and "--init random" in line for line in lines)


def test_zero_shot_study_with_pretraining_seeds_and_an_arm_of_another_recipe(tmp_path, tiny_overrides, monkeypatch):
    """The mini study's shape: pre-training seeds per arm, a zero-shot task, and an
    ELECTRA arm (its own recipe, its own random-init control)."""
    import spactor.data.pydoc_pairs as pydoc_pairs

    real_pairs = pydoc_pairs.pydoc_minimal_pairs
    monkeypatch.setattr(pydoc_pairs, "pydoc_minimal_pairs", lambda: real_pairs()[:12])
    common = [o for o in tiny_overrides if not o.startswith("runtime.progress")]
    common += ["runtime.count_flops=false", "runtime.progress=false", "trainer.eval_every=2"]
    text = {
        "recipe": "sc",
        "overrides": common,
        "steps": 2,
        "checkpoints": [1, 2],
        "tasks": ["pydoc_pairs"],
        "seeds": 2,
        "pretrain_seeds": 2,
        "arms": {"sc": {}, "electra": {"recipe": "electra", "overrides": common}},
    }
    path = tmp_path / "mini.yaml"
    path.write_text(json.dumps(text))
    out = tmp_path / "out"
    assert main(["study", str(path), "--out", str(out)]) == 0
    for arm in ("sc", "electra"):
        for seed in (0, 1):
            run = out / arm / f"seed{seed}"
            assert f"seed: {seed}" in (run / "config.yaml").read_text()
            for step in (1, 2):
                result = json.loads((run / "eval" / "pydoc_pairs" / f"step_{step}.json").read_text())
                assert result["seeds"] == 1 and result["finetune"] == {} and result["pairs"] == 12
        random = json.loads((out / arm / "seed0" / "eval" / "pydoc_pairs" / "random.json").read_text())
        assert random["seeds"] == 2 and random["init"] == "random"
    assert json.loads((out / "electra" / "seed0" / "eval" / "pydoc_pairs" / "step_2.json").read_text())[
        "likelihood"] == "discriminator_original"  # ELECTRA's LM head is untrained: its RTD head scores
    # Two different pre-training seeds give two different models.
    assert (out / "sc" / "seed0" / "metrics.jsonl").read_text() != (out / "sc" / "seed1" / "metrics.jsonl").read_text()
    report = (out / "study.md").read_text()
    assert "| sc |" in report and "| electra |" in report
    assert "random init (electra's architecture)" in report and "σ, pre-training" in report
    assert "mean ± sample std over them" in report
    cell = next(line for line in report.splitlines() if line.startswith("| sc |") and "±" in line)
    scores = [json.loads((out / "sc" / f"seed{k}" / "eval" / "pydoc_pairs" / "step_1.json").read_text())["score"]
              for k in (0, 1)]
    assert f"{sum(scores) / 2:.3f}" in cell.split("|")[2]  # the mean over the pre-training seeds
    assert (out / "study.png").stat().st_size > 0


def test_print_commands_for_seeds_and_recipe_arms(tmp_path, capsys):
    path = tmp_path / "s.yaml"
    path.write_text(json.dumps({
        "recipe": "sc", "steps": 10, "checkpoints": [5, 10], "tasks": ["pydoc_pairs", "pydoc_module"],
        "pretrain_seeds": 3, "seeds": 2,
        "arms": {"sc": {}, "electra": {"recipe": "electra", "overrides": {"model.size": "tiny"}}}}))
    assert main(["study", str(path), "--print-commands", "--out", str(tmp_path / "o")]) == 0
    lines = capsys.readouterr().out.splitlines()
    trains = [line for line in lines if line.startswith("torchrun")]
    assert len(trains) == 6 and sum(" train electra " in line for line in trains) == 3
    assert any("trainer.seed=2" in line and "/electra/seed2" in line for line in trains)
    zero_shot = [line for line in lines if "--task pydoc_pairs" in line]
    assert all("finetune." not in line for line in zero_shot)
    assert sum("--init random" in line for line in lines) == 4  # 2 tasks x (sc's control, electra's)
    path.write_text(json.dumps({"recipe": "sc", "steps": 10, "checkpoints": [10],
                                "arms": {"e": {"recipe": "electra", "overides": {}}}}))
    assert main(["study", str(path)]) == 2
    assert "arms.e: unknown key 'overides'" in capsys.readouterr().err


def test_print_commands_estimates_wall_time_from_flops_and_mfu(tmp_path, capsys):
    from spactor.config import load_config
    from spactor.train.flops.counting import flops_report

    path = tmp_path / "g.yaml"
    study = {"recipe": "spactor", "steps": 100, "checkpoints": [100], "overrides": {"model.size": "tiny"},
             "hardware": {"gpu": "H100-SXM", "gpus": 2, "mfu": 0.5},
             "arms": {"sc": {"schedules.two_stage.tau": 0}, "inf": {"schedules.two_stage.tau": None}}}
    path.write_text(json.dumps(study))
    assert main(["study", str(path), "--print-commands", "--out", str(tmp_path / "o")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("# expected pre-training wall time on 2 x H100-SXM at 50% MFU")
    flops = flops_report(load_config("spactor", ["model.size=tiny", "schedules.two_stage.tau=null"]),
                         device="meta").cumulative(100)
    minutes = flops / (2 * 989e12 * 0.5) / 60
    assert f"#   inf: {flops:.3g} FLOPs a run, {minutes:.1f} min a run x 1" in lines
    for bad, message in (({"gpu": "TPU"}, "hardware.gpu 'TPU' is not in the peak table"),
                         ({"gpu": "A100", "mfu": 1.5}, "hardware.mfu must be in (0, 1]"),
                         ({"gpu": "A100", "nodes": 2}, "hardware: unknown key 'nodes'")):
        path.write_text(json.dumps({**study, "hardware": bad}))
        assert main(["study", str(path), "--print-commands"]) == 2
        assert message in capsys.readouterr().err
    gpu_study = load_study(Path("spactor_gpu"))
    assert gpu_study.hardware is not None and gpu_study.hardware.gpu == "H100-SXM"
