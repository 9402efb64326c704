"""The NaN guard inside a real (1-rank, ZeRO-3) run: skipped steps leave weights and optimizer state
untouched, and K non-finite steps in a row stop the run with the last good checkpoint named."""

from __future__ import annotations

import json

import pytest
import torch

from cinescene.ckpt.weights import consolidated_state_dict
from cinescene.distributed.env import standalone
from cinescene.train.entry import run_rank
from cinescene.train.guards import NonFiniteTrainingError

from .standins import TinyVideoModel, standin_components, tiny_config


def nan_model_at(calls):
    """A stand-in model whose forward returns NaN on the given (1-based) calls: one call per step here."""

    class NaNModel(TinyVideoModel):
        count = 0

        def forward(self, *args, **kwargs):
            NaNModel.count += 1
            out = super().forward(*args, **kwargs)
            return out * float("nan") if NaNModel.count in calls else out

    return NaNModel


def rows(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_a_nan_step_is_skipped_and_training_goes_on(tmp_path):
    cfg = tiny_config(
        tmp_path,
        "train.max_steps=5",
        "checkpoint.every_steps=1",
        "checkpoint.keep_last=5",
        "train.ema.enabled=true",
        "tracking.wandb.mode=disabled",
    )
    assert run_rank(cfg, standalone(1), standin_components(model_factory=nan_model_at({3}))) == 0
    logged = rows(tmp_path)
    assert [r["step_skipped"] for r in logged] == [0, 0, 1, 0, 0]
    assert (
        logged[2]["loss"] == "nan" and logged[2]["grad_norm"] == "inf" and logged[-1]["nonfinite_steps"] == 1
    )
    assert all(isinstance(r["loss"], float) for i, r in enumerate(logged) if i != 2)
    ck = tmp_path / "checkpoints"
    before, skipped, after = (consolidated_state_dict(ck / f"step_0000000{s}") for s in (2, 3, 4))
    assert all(torch.equal(before[k], skipped[k]) for k in before)  # the NaN step changed nothing
    assert not all(torch.equal(skipped[k], after[k]) for k in before)  # the next one did
    assert all(torch.isfinite(v).all() for v in after.values())
    ema = consolidated_state_dict(ck / "step_00000005", ema=True)
    assert all(torch.isfinite(value).all() for value in ema.values())


@pytest.mark.slow
def test_k_nonfinite_steps_in_a_row_stop_the_run(tmp_path):
    cfg = tiny_config(
        tmp_path,
        "train.max_steps=8",
        "checkpoint.every_steps=2",
        "train.max_consecutive_nonfinite=3",
        "tracking.wandb.mode=disabled",
    )
    with pytest.raises(NonFiniteTrainingError) as info:
        run_rank(cfg, standalone(1), standin_components(model_factory=nan_model_at({3, 4, 5, 6})))
    message = str(info.value)
    assert "stopping at step 5: 3 non-finite steps in a row" in message and "step_00000004" in message
    assert (tmp_path / "checkpoints" / "latest").read_text().strip() == "step_00000004"
    assert [r["step"] for r in rows(tmp_path)] == [1, 2, 3, 4, 5]
