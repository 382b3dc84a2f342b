"""curriculum: N stages in YAML, each naming its objectives and knob values, ending at a
step, a knob condition or an adaptive decision; the implicit two-stage curriculum."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

import spactor.schedules.adaptive
import spactor.schedules.anneal
import spactor.schedules.curriculum
import spactor.schedules.two_stage  # noqa: F401
from spactor.cli import main
from spactor.config import ConfigError
from spactor.schedules.adaptive import AdaptiveConfig
from spactor.schedules.anneal import AnnealConfig
from spactor.schedules.base import STAGE1_TYPES, build
from spactor.schedules.curriculum import Curriculum, CurriculumConfig
from spactor.schedules.two_stage import TwoStageConfig

KNOBS = {
    "objectives.span_corruption.weight": 10.0,
    "objectives.mlm_mask.ratio": 0.15,
    "objectives.mlm_mask.enabled": 1.0,
    "objectives.rtd.weight": 10.0,
}
WITH_UL2 = {**KNOBS, "objectives.ul2.weight": 10.0}


class Fake:
    """An objective as the stages see it: knobs and ``is_off``."""

    def __init__(self, weight: float = 1.0) -> None:
        self.weight = weight

    def is_off(self) -> bool:
        return self.weight == 0


def plugin(type_: str, config) -> SimpleNamespace:
    return SimpleNamespace(type=type_, config=config)


def curriculum(stages, knobs=KNOBS, **others):
    plugins = {"curriculum": plugin("curriculum", CurriculumConfig(stages=stages)), **others}
    return build(plugins, knobs, max_steps=100)


THREE = {
    "hybrid": {"until_step": 3},
    "handover": {"knobs": {"objectives.rtd.weight": 1.0}, "until_step": 6},
    "sc": {"objectives": ["span_corruption"]},
}


def test_three_stages_switch_at_their_steps_with_their_knobs() -> None:
    schedules = curriculum(THREE)
    stages = schedules.stages
    assert isinstance(stages, Curriculum) and stages.num_stages == 3
    objectives = {"span_corruption": Fake(), "mlm_mask": Fake(), "rtd": Fake()}
    seen = []
    for step in range(9):
        stage = schedules.advance(step, objectives)
        seen.append((stage, schedules.values(step)["objectives.rtd.weight"]))
    assert seen == [(1, 10.0)] * 3 + [(2, 1.0)] * 3 + [(3, 10.0)] * 3
    assert [schedules.stage(s) for s in (0, 2, 3, 5, 6, 99)] == [1, 1, 2, 2, 3, 3]
    # released on entering the first stage that does not name them
    assert stages.inactive_in(2, objectives) == []
    assert stages.inactive_in(3, objectives) == ["mlm_mask", "rtd"]
    assert schedules.driven_knobs() == {"objectives.rtd.weight": "curriculum"}


SC_UL2_SC = {
    "hybrid": {"objectives": ["span_corruption", "mlm_mask", "rtd"], "until_step": 3},
    "ul2": {"objectives": ["ul2"], "until_step": 6},
    "sc": {"objectives": ["span_corruption"]},
}


def test_an_objective_enters_late_and_one_sits_a_stage_out() -> None:
    stages = curriculum(SC_UL2_SC, WITH_UL2).stages
    objectives = {"span_corruption": Fake(), "mlm_mask": Fake(), "rtd": Fake(), "ul2": Fake()}
    assert [stages.active_in(k, objectives) for k in (1, 2, 3)] == [
        ["span_corruption", "mlm_mask", "rtd"], ["ul2"], ["span_corruption"]]
    # held while a later stage still needs it: UL2 through stage 1, SC through stage 2
    assert stages.inactive_in(1, objectives) == []
    assert stages.inactive_in(2, objectives) == ["mlm_mask", "rtd"]
    assert stages.inactive_in(3, objectives) == ["mlm_mask", "rtd", "ul2"]
    assert stages.final_objectives(objectives) == ["span_corruption"]  # the clean validation pass
    held = {n: o for n, o in objectives.items() if n not in stages.inactive_in(2, objectives)}
    assert stages.active_in(2, held) == ["ul2"] and stages.active_in(3, held) == ["span_corruption"]


def test_a_stage_comes_back_with_its_objectives_held() -> None:
    stages = curriculum({
        "hybrid": {"objectives": ["span_corruption", "mlm_mask", "rtd"], "until_step": 2},
        "sc": {"objectives": ["span_corruption"], "until_step": 4},
        "again": {"objectives": ["span_corruption", "mlm_mask", "rtd", "ul2"]},
    }, WITH_UL2).stages
    objectives = {"span_corruption": Fake(), "mlm_mask": Fake(), "rtd": Fake(), "ul2": Fake()}
    assert stages.active_in(2, objectives) == ["span_corruption"]
    assert [stages.inactive_in(k, objectives) for k in (2, 3)] == [[], []]  # nothing released


def test_until_off_watches_what_the_stage_hands_over() -> None:
    # stage 1 ends once what it runs and stage 2 does not (RTD, the masking) is off: SC
    # goes on in stage 2, and UL2 (off, but not in stage 1) is not watched
    stages = {
        "hybrid": {"objectives": ["span_corruption", "mlm_mask", "rtd"], "until_off": True},
        "ul2": {"objectives": ["ul2", "span_corruption"]},
    }
    schedules = curriculum(stages, WITH_UL2)
    objectives = {"span_corruption": Fake(), "mlm_mask": Fake(), "rtd": Fake(), "ul2": Fake(weight=0.0)}
    assert schedules.advance(0, objectives) == 1
    objectives["rtd"].weight = 0.0
    assert schedules.advance(1, objectives) == 1
    objectives["mlm_mask"].weight = 0.0
    assert schedules.advance(2, objectives) == 2


def test_a_stage_ends_when_its_leaving_objectives_are_off() -> None:
    stages = {
        "hybrid": {"until_off": True},
        "sc": {"objectives": ["span_corruption"]},
    }
    anneal = plugin("anneal", AnnealConfig(knob="objectives.rtd.weight", end_step=5))
    schedules = curriculum(stages, rtd_weight=anneal)
    rtd = Fake(weight=10.0)
    objectives = {"span_corruption": Fake(), "rtd": rtd}
    entered = []
    for step in range(8):
        rtd.weight = schedules.values(step)["objectives.rtd.weight"]
        entered.append(schedules.advance(step, objectives))
    assert entered == [1, 1, 1, 1, 1, 2, 2, 2]


def test_adaptive_end_decides_once_and_round_trips() -> None:
    stages = {
        "hybrid": {"adaptive": {"metric": "loss/rtd", "smoothing": 0.0, "patience": 2, "warmup": 0,
                                "min_delta": 0.0, "min_tau": 0, "max_tau": 50}},
        "sc": {"objectives": ["span_corruption"]},
    }
    schedules = curriculum(stages)
    objectives = {"span_corruption": Fake(), "rtd": Fake()}
    assert schedules.stages.decides_later(1)
    for step in range(1, 4):
        assert schedules.advance(step - 1, objectives) == 1
        schedules.observe(step, {"loss/rtd": 1.0})  # flat: stale at steps 2 and 3, so stage 2 from 4
    assert schedules.stages.decided_end(1) == 4
    assert schedules.advance(3, objectives) == 1
    resumed = curriculum(stages)
    resumed.load_state_dict(schedules.state_dict())
    assert resumed.stages.decided_end(1) == 4
    assert resumed.advance(4, objectives) == 2


def test_the_implicit_curriculum_is_two_stage() -> None:
    schedules = build({"two_stage": plugin("two_stage", TwoStageConfig(tau=4))}, KNOBS, max_steps=10)
    assert isinstance(schedules.stages, Curriculum) and schedules.stages.num_stages == 2
    objectives = {"span_corruption": Fake(), "rtd": Fake()}
    assert [schedules.advance(s, objectives) for s in range(6)] == [1, 1, 1, 1, 2, 2]
    assert schedules.stages.inactive_in(2, objectives) == ["rtd"]


def test_two_stage_is_a_curriculum_switching_at_tau() -> None:
    # the one stage mechanism: two_stage's tau is stage 1's until_step, and what stage 2
    # drops is data of the schedules (STAGE1_TYPES), not a flag on the objective classes
    schedules = build({"two_stage": plugin("two_stage", TwoStageConfig(tau=7))}, KNOBS, max_steps=10)
    hybrid, rest = schedules.stages.stages
    assert hybrid.objectives == ["span_corruption", "mlm_mask", "rtd"] and hybrid.until_step == 7
    assert hybrid.until_off and hybrid.switches == ()  # an annealed lambda1 at 0 still ends it
    assert rest.objectives == ["span_corruption"] and set(STAGE1_TYPES) == {"mlm_mask", "rtd"}
    assert schedules.stages.decided_end(1) == 7 and not schedules.stages.decides_later(1)
    assert all(s is not schedules.stages for s in schedules.schedules.values())  # not a schedule of the set
    assert schedules.state_dict() == {"two_stage": {}}


def test_stage_2_drops_by_objective_type_not_name() -> None:
    knobs = {"objectives.sc.weight": 10.0, "objectives.masking.ratio": 0.15, "objectives.disc.weight": 10.0}
    types = {"sc": "span_corruption", "masking": "mlm_mask", "disc": "rtd"}
    schedules = build({"two_stage": plugin("two_stage", TwoStageConfig(tau=2))}, knobs, 10, objectives=types)
    objectives = {name: Fake() for name in types}
    assert schedules.stages.active_in(2, objectives) == ["sc"]
    assert schedules.stages.inactive_in(2, objectives) == ["masking", "disc"]


def test_adaptive_is_the_implicit_curriculums_switch_rule() -> None:
    # stage 1 ends on the adaptive schedule's decision; that schedule stays the set's (its
    # state is checkpointed under its own name, as before) and is observed once per record
    cfg = AdaptiveConfig(smoothing=0.0, patience=2, warmup=0, min_delta=0.0, min_tau=0, max_tau=50)
    plugins = {"two_stage": plugin("two_stage", TwoStageConfig(tau=None)),
               "adaptive": plugin("adaptive", cfg)}
    schedules = build(plugins, KNOBS, max_steps=100)
    hybrid = schedules.stages.stages[0]
    assert hybrid.until_step is None and hybrid.switches == (schedules.schedules["adaptive"],)
    assert schedules.stages.decides_later(1)
    objectives = {"span_corruption": Fake(), "mlm_mask": Fake(), "rtd": Fake()}
    for step in range(1, 4):
        assert schedules.advance(step - 1, objectives) == 1
        schedules.observe(step, {"loss/rtd": 1.0})  # flat: stale at steps 2 and 3, so stage 2 from 4
    assert schedules.stages.decided_end(1) == 4 and schedules.advance(4, objectives) == 2
    assert set(schedules.state_dict()) == {"two_stage", "adaptive"}
    assert schedules.state_dict()["adaptive"]["switch_step"] == 4


@pytest.mark.parametrize(
    ("stages", "message"),
    [
        ({"a": {"until_step": 2}, "b": {"objectives": ["nope"]}},
         "schedules.curriculum.stages.b.objectives: unknown objective 'nope'"),
        ({"a": {"until_step": 5}, "b": {"until_step": 3}, "c": {"objectives": ["span_corruption"]}},
         "stages.b.until_step: 3 is before schedules.curriculum.stages.a.until_step 5"),
        ({"a": {"until_step": 2}, "b": {"objectives": ["span_corruption", "span_corruption"]}},
         "stages.b.objectives: 'span_corruption' is named twice"),
        ({"a": {"objectives": ["span_corruption", "rtd"], "until_step": 2},
          "b": {"objectives": ["span_corruption"]}},
         "schedules.curriculum.stages: no stage names objective 'mlm_mask'"),
        ({"a": {"objectives": ["span_corruption"]}, "b": {"objectives": ["span_corruption"]}},
         "stages.a: a stage before the last needs an end"),
        ({"a": {"until_step": 2}, "b": {"until_step": 4}},
         "stages.b: the last stage runs to trainer.max_steps"),
        ({"a": {"until_step": 2, "knobs": {"objectives.rtd.wieght": 1}}, "b": {}},
         "unknown knob 'objectives.rtd.wieght'"),
        ({"a": {"until": 2}, "b": {}}, "stages.a: unknown key 'until'"),
    ],
)
def test_bad_stages_are_one_line_errors(stages, message) -> None:
    with pytest.raises(ConfigError) as e:
        curriculum(stages)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_a_second_switching_schedule_is_refused() -> None:
    with pytest.raises(ConfigError, match="schedules.two_stage: decides a stage switch"):
        curriculum(THREE, two_stage=plugin("two_stage", TwoStageConfig(tau=4)))


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("schedules.curriculum.stages.sc.objectives=[span_corruptoin]", "unknown objective 'span_corruptoin'"),
        ("schedules.curriculum.stages.hybrid.until_step=300000", "stage ends must be in order"),
    ],
)
def test_cli_config_error_is_one_line_exit_2(override, message, capsys, tmp_path) -> None:
    code = main(["train", "spactor_three_stage", override, f"run.dir={tmp_path / 'run'}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0], err
    assert not (tmp_path / "run").exists()
