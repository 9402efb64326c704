"""Small event callbacks around the training loop (Composer-style), and the state they share.

The loop calls ``on_train_start`` once (after a resume has been applied),
``on_step_end`` after every optimizer step, in list order, and
``on_train_end`` once (also on errors). Callbacks talk to the loop only
through :class:`TrainState`: they add metrics for this step, request a
checkpoint, request a stop (with an exit status), or report a fatal error.
A callback with per-rank state (EMA shards, counters) returns it from
``state_dict`` and gets it back through ``load_state_dict`` on resume; it is
saved in the checkpoint's rank file under the callback's ``name``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class StepResult:
    """What one optimizer step did, identical on every rank (reduced values)."""

    step: int
    loss: float  # mean over the global batch; non-finite when any rank's loss was
    grad_norm: float  # global norm before clipping; inf when the step was discarded
    lr: float
    applied: bool  # False: DeepSpeed discarded the update (non-finite gradients)
    samples: int  # global samples consumed by this step
    step_time_s: float  # wall time of the step, data loading included
    data_time_s: float  # part of it spent waiting for batches
    extra: dict[str, float] = field(default_factory=dict)


@dataclass
class TrainState:
    step: int = 0  # optimizer steps done
    consumed_samples: int = 0  # global samples consumed (the data cursor)
    max_steps: int = 0
    metrics: dict[str, Any] = field(default_factory=dict)  # this step's metrics, cleared per step
    log_requested: bool = False  # log this step's row even off tracking.log_every_steps; cleared per step
    save_reason: str | None = None
    stop: bool = False
    exit_code: int = 0
    fatal: BaseException | None = None
    last_checkpoint: str | None = None

    def request_save(self, reason: str) -> None:
        self.save_reason = self.save_reason or reason

    def request_log(self) -> None:
        """This step's metrics must reach the tracker (a callback added some that only this step has)."""
        self.log_requested = True


class Callback:
    name = "callback"

    def on_train_start(self, state: TrainState) -> None:
        pass

    def on_step_end(self, state: TrainState, result: StepResult) -> None:
        pass

    def on_train_end(self, state: TrainState, error: BaseException | None) -> None:
        pass

    def state_dict(self) -> dict[str, Any] | None:
        return None

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class CallbackList:
    def __init__(self, callbacks: list[Callback]):
        names = [cb.name for cb in callbacks]
        if len(set(names)) != len(names):
            raise ValueError(f"callback names must be unique: {names}")
        self.callbacks = list(callbacks)

    def on_train_start(self, state: TrainState) -> None:
        for cb in self.callbacks:
            cb.on_train_start(state)

    def on_step_end(self, state: TrainState, result: StepResult) -> None:
        for cb in self.callbacks:
            cb.on_step_end(state, result)

    def on_train_end(self, state: TrainState, error: BaseException | None) -> None:
        for cb in self.callbacks:
            cb.on_train_end(state, error)

    def state_dict(self) -> dict[str, Any]:
        return {cb.name: s for cb in self.callbacks if (s := cb.state_dict()) is not None}

    def load_state_dict(self, states: dict[str, Any]) -> None:
        for cb in self.callbacks:
            if cb.name in states:
                cb.load_state_dict(states[cb.name])
