"""The training loop: optimizer steps over accumulated micro batches, callbacks, checkpoints."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
import torch.distributed as dist

from cinescene.config.schema import CineSceneConfig
from cinescene.data.loader import SKIPPED_SAMPLES
from cinescene.distributed.batching import BatchPlan
from cinescene.distributed.groups import ParallelLayout
from cinescene.errors import CineSceneError
from cinescene.log import get_logger

from .callbacks import CallbackList, StepResult, TrainState
from .checkpoint import CheckpointManager, RunFacts, rank_state_now
from .guards import poison_if_nonfinite
from .objective import FlowMatchingObjective, sample_generators
from .schedule import lr_at, set_lr
from .tracking import STEP_SKIPPED_SAMPLES

_log = get_logger("train.loop")


def _reduce_step(
    loss: torch.Tensor, skipped_samples: int, sp_size: int, device: torch.device
) -> tuple[float, int]:
    """The step's figures every rank agrees on, from one all_reduce (on ``device``: NCCL reduces only CUDA
    tensors): the loss mean over all ranks (sequence-parallel peers hold equal values, so this is the
    data-parallel mean) and the skipped samples summed over data-parallel ranks (sequence-parallel peers
    read the same batches, so each group counts once)."""
    values = torch.stack(
        [loss.detach().double().reshape(()), torch.tensor(float(skipped_samples), dtype=torch.float64)]
    ).to(device)
    world = 1
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
        world = dist.get_world_size()
    return float((values[0] / world).item()), int(round(values[1].item() / sp_size))


class Trainer:
    def __init__(
        self,
        cfg: CineSceneConfig,
        *,
        engine,
        layout: ParallelLayout,
        plan: BatchPlan,
        objective: FlowMatchingObjective,
        batches: Iterator[Mapping[str, Any]],
        checkpoints: CheckpointManager | None,  # None: steps that never save (cinescene bench step)
        callbacks: CallbackList,
        state: TrainState,
        facts: RunFacts,
        wandb_run_id: Callable[[], str | None],
        config_yaml: str,
    ):
        self.cfg = cfg
        self.engine = engine
        self.layout = layout
        self.plan = plan
        self.objective = objective
        self.batches = batches
        self.checkpoints = checkpoints
        self.callbacks = callbacks
        self.state = state
        self.facts = facts
        self.wandb_run_id = wandb_run_id
        self.config_yaml = config_yaml
        self.device = engine.device

    def _next_batch(self) -> Mapping[str, Any]:
        try:
            return next(self.batches)
        except StopIteration:
            raise CineSceneError(
                f"the training data ran out after {self.state.consumed_samples} samples; "
                "the loader must repeat its shards (epochs) until train.max_steps"
            ) from None

    def train_step(self, step: int) -> StepResult:
        """One optimizer step: ``grad_accum`` forward/backward passes, then DeepSpeed's step."""
        start = time.perf_counter()
        data_time = 0.0
        lr = lr_at(step, self.cfg.train)
        set_lr(self.engine.optimizer, lr)
        skipped_before = self.engine.skipped_steps
        loss_sum = torch.zeros((), dtype=torch.float64)
        skipped_samples = 0  # unreadable samples the loader replaced in this rank's batches
        extra: dict[str, float] = {}  # the objective's statistics (micro-batch mean), then the skip count
        for micro in range(self.plan.grad_accum):
            fetch = time.perf_counter()
            batch = self._next_batch()
            data_time += time.perf_counter() - fetch
            skipped_samples += int(batch.get(SKIPPED_SAMPLES, 0))
            generators = sample_generators(batch, self.cfg.run.seed, step, self.layout.dp_rank, micro)
            loss, stats = self.objective(self.engine, batch, generators, self.device)
            for key, value in stats.items():
                extra[key] = extra.get(key, 0.0) + value / self.plan.grad_accum
            self.engine.backward(poison_if_nonfinite(loss))
            if micro == self.plan.grad_accum - 1 and self.checkpoints is not None:
                self.checkpoints.before_update()  # a background save's host copy must be complete
            self.engine.step()  # DeepSpeed applies the update on the accumulation boundary only
            loss_sum += loss.detach().double().cpu()
        grad_norm = self.engine.get_global_grad_norm()
        grad_norm = float(grad_norm) if grad_norm is not None else float("nan")
        mean_loss, extra[STEP_SKIPPED_SAMPLES] = _reduce_step(
            loss_sum / self.plan.grad_accum, skipped_samples, self.layout.sp_size, self.device
        )
        return StepResult(
            step=step,
            loss=mean_loss,
            grad_norm=grad_norm,
            lr=lr,
            applied=self.engine.skipped_steps == skipped_before,
            samples=self.plan.global_batch_size,
            step_time_s=time.perf_counter() - start,
            data_time_s=data_time,
            extra=extra,
        )

    def save(self, reason: str, *, wait: bool) -> None:
        """Save this step. With ``checkpoint.async`` the write goes on in the background unless ``wait``
        (a preemption or the end of training: the process is about to leave)."""
        record = self.facts.record(self.state, reason, self.wandb_run_id())
        args = (self.engine, record, rank_state_now(self.layout.rank, self.callbacks), self.config_yaml)
        if wait or not self.cfg.checkpoint.background_write:
            self._committed(self.checkpoints.save(*args))
        else:
            self.checkpoints.begin_save(*args)

    def _committed(self, path) -> None:
        if path is not None:
            self.state.last_checkpoint = str(path)

    def fit(self) -> int:
        """Train to ``train.max_steps`` (or a stop request); returns the process exit status."""
        state = self.state
        error: BaseException | None = None
        self.callbacks.on_train_start(state)
        try:
            while state.step < state.max_steps:
                step = state.step + 1
                result = self.train_step(step)
                state.step = step
                state.consumed_samples += result.samples
                state.metrics, state.log_requested = {}, False
                self.callbacks.on_step_end(state, result)
                if state.fatal is not None:
                    self._committed(self.checkpoints.finish())  # a save in flight holds an earlier, good step
                    raise state.fatal
                self._committed(self.checkpoints.poll())  # one all-reduce, only while a save is in flight
                if state.save_reason:
                    self.save(state.save_reason, wait=state.stop or step >= state.max_steps)
                    state.save_reason = None
                if state.stop:
                    break
            self._committed(self.checkpoints.finish())
            return state.exit_code
        except BaseException as exc:
            error = exc
            self.checkpoints.abandon()
            raise
        finally:
            self.callbacks.on_train_end(state, error)
