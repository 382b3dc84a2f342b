"""Preemption: SIGTERM/SIGINT finish the current step, checkpoint and exit cleanly."""

from __future__ import annotations

import signal
import sys
import threading
from typing import Any

from spactor.train.callbacks.base import Callback, LoopState


class Preemption(Callback):
    """The handler only sets a Python flag. One rank reads it after each step; several
    ranks send it along with the step's one all-reduce (``train_step(stop_requested=
    requested)``), so they agree on the step they stop at without a collective of their
    own. A second signal stops at once, without a checkpoint (``KeyboardInterrupt``).
    Handlers are installed at ``pre_train`` and the previous ones restored at ``close``."""

    def __init__(self, world_size: int) -> None:
        self.world_size = world_size
        self.signal_name: str | None = None
        self._previous: dict[int, Any] = {}
        self._peers_stop = False

    @property
    def requested(self) -> bool:
        """This rank got a signal (what ``train_step`` tells the other ranks)."""
        return self.signal_name is not None

    def pre_train(self, state: LoopState) -> None:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signal_name is not None:  # a second signal: stop now, without a checkpoint
            self.close()
            raise KeyboardInterrupt
        self.signal_name = signal.Signals(signum).name
        print(f"\n{self.signal_name}: finishing this step, then checkpointing", file=sys.stderr, flush=True)

    def check_step(self, state: LoopState, out: Any) -> None:
        self._peers_stop = bool(out.stop)

    def end_step(self, state: LoopState) -> None:
        # One rank reads its own signal flag; several agree through the step's all-reduce.
        if self._peers_stop or (self.world_size == 1 and self.signal_name is not None):
            if self.signal_name is None:  # another rank got the signal: stop here as well
                self.signal_name = "SIGTERM"
            state.stop = True

    def close(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}
