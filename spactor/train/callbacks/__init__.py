"""The training loop's parts as callbacks: each a small stateful object called at the
loop's named points (:mod:`spactor.train.callbacks.base`). The runner builds them in
the order below (:func:`spactor.train.loop.default_callbacks`); ``train(...,
callbacks=[...])`` appends a run's own."""

from spactor.train.callbacks.base import Callback, CallbackList, LoopState
from spactor.train.callbacks.checkpointing import Checkpointing
from spactor.train.callbacks.data_skipped import DataSkipped
from spactor.train.callbacks.downstream import DownstreamEval
from spactor.train.callbacks.flops import FlopsCounter
from spactor.train.callbacks.knob_schedules import KnobSchedules
from spactor.train.callbacks.metrics_log import MetricsLog
from spactor.train.callbacks.nonfinite import NonFiniteGuard, NonFiniteStop
from spactor.train.callbacks.preemption import Preemption
from spactor.train.callbacks.stage_switch import StageSwitch
from spactor.train.callbacks.step_metrics import StepMetrics
from spactor.train.callbacks.throughput import Throughput
from spactor.train.callbacks.validation import Validation

__all__ = [
    "Callback", "CallbackList", "Checkpointing", "DataSkipped", "DownstreamEval", "FlopsCounter",
    "KnobSchedules", "LoopState", "MetricsLog", "NonFiniteGuard", "NonFiniteStop", "Preemption",
    "StageSwitch", "StepMetrics", "Throughput", "Validation",
]
