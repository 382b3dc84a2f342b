"""The training loop's parts as callbacks: each a small stateful object called at the
loop's named points (:mod:`spactor.runners.callbacks.base`). The runner builds them in
the order below (:func:`spactor.runners.trainer.default_callbacks`); ``train(...,
callbacks=[...])`` appends a run's own."""

from spactor.runners.callbacks.base import Callback, CallbackList, LoopState
from spactor.runners.callbacks.checkpointing import Checkpointing
from spactor.runners.callbacks.data_skipped import DataSkipped
from spactor.runners.callbacks.downstream import DownstreamEval
from spactor.runners.callbacks.flops import FlopsCounter
from spactor.runners.callbacks.knob_schedules import KnobSchedules
from spactor.runners.callbacks.metrics_log import MetricsLog
from spactor.runners.callbacks.nonfinite import NonFiniteGuard, NonFiniteStop
from spactor.runners.callbacks.preemption import Preemption
from spactor.runners.callbacks.stage_switch import StageSwitch
from spactor.runners.callbacks.step_metrics import StepMetrics
from spactor.runners.callbacks.throughput import Throughput
from spactor.runners.callbacks.validation import Validation

__all__ = [
    "Callback", "CallbackList", "Checkpointing", "DataSkipped", "DownstreamEval", "FlopsCounter",
    "KnobSchedules", "LoopState", "MetricsLog", "NonFiniteGuard", "NonFiniteStop", "Preemption",
    "StageSwitch", "StepMetrics", "Throughput", "Validation",
]
