"""When to save: every ``checkpoint.every_steps`` steps and after the last one."""

from __future__ import annotations

from cinescene.ckpt.record import SaveReason
from cinescene.config.checkpoint import CheckpointConfig

from ..callbacks import Callback, StepResult, TrainState


class CheckpointCadence(Callback):
    """Requests a save every ``checkpoint.every_steps`` steps and after the last one (``save_final``)."""

    name = "checkpoint_cadence"

    def __init__(self, cfg: CheckpointConfig):
        self.cfg = cfg

    def on_step_end(self, state: TrainState, result: StepResult) -> None:
        # The last step's save says "final" even when it also falls on the cadence.
        if self.cfg.save_final and result.step >= state.max_steps:
            state.request_save(SaveReason.FINAL.value)
        if self.cfg.every_steps and result.step % self.cfg.every_steps == 0:
            state.request_save(SaveReason.EVERY_STEPS.value)
