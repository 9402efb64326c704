"""A one-rank stand-in for a DeepSpeed ZeRO-3 engine, for tests of the checkpoint files without DeepSpeed.

It writes the files DeepSpeed 0.19's ZeRO-3 save writes for world size 1, in its layout (``param_shapes``,
``fp32_flat_groups``, Adam state per sub-group), through whatever ``checkpoint_engine`` it holds, as
DeepSpeed does: the manager installs ours, so hashing and the safe loader see the same calls as in training.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from types import SimpleNamespace

import torch

from cinescene.ckpt.record import TrainerRecord


class FakeZeroEngine:
    """Holds its optimizer state like DeepSpeed does: the same tensors from save to save, handed to the
    checkpoint engine by reference, so a test can change them after a save began (the next update)."""

    def __init__(self, weights: dict[str, torch.Tensor] | None = None, step: int = 1):
        self.weights = weights or {"w": torch.arange(6, dtype=torch.float32).view(2, 3), "b": torch.ones(3)}
        self.step = step
        self.checkpoint_engine = None
        self.flat = torch.cat([t.reshape(-1) for t in self.weights.values()])
        self.exp_avg = self.flat * 0.1
        self.exp_avg_sq = self.flat * 0.01
        self.optimizer = SimpleNamespace(state_dict=self._optimizer_state)

    def update(self) -> None:
        """What the next optimizer step does to the state: in place."""
        self.flat.add_(1.0)
        self.exp_avg.mul_(2.0)
        self.exp_avg_sq.add_(0.5)
        self.step += 1

    def _optimizer_state(self) -> dict:
        return {
            "zero_stage": 3,
            "partition_count": 1,
            "fp32_flat_groups": [self.flat],
            "optimizer_state_dict": {
                "state": {
                    0: {
                        "step": torch.tensor(float(self.step)),
                        "exp_avg": self.exp_avg,
                        "exp_avg_sq": self.exp_avg_sq,
                    }
                },
                "param_groups": [{"lr": 1e-3, "params": [0]}],
            },
        }

    def module_state_dict(self, exclude_frozen_parameters: bool = False) -> dict:
        return OrderedDict()

    def save_checkpoint(self, save_dir, tag, save_latest, exclude_frozen_parameters):
        assert save_latest is False and exclude_frozen_parameters is True
        zero = Path(save_dir) / tag
        zero.mkdir(parents=True, exist_ok=True)
        shapes = OrderedDict((name, torch.Size(t.shape)) for name, t in self.weights.items())
        model = {
            "module": OrderedDict(),
            "buffer_names": [],
            "param_shapes": [shapes],
            "dp_world_size": 1,
            "global_steps": self.step,
            "global_samples": 4 * self.step,
            "skipped_steps": 0,
            "ds_config": {"zero_optimization": {"stage": 3}},
        }
        optim = {"optimizer_state_dict": self._optimizer_state()}
        self.checkpoint_engine.save(model, str(zero / "zero_pp_rank_0_mp_rank_00_model_states.pt"))
        self.checkpoint_engine.save(optim, str(zero / "zero_pp_rank_0_mp_rank_00_optim_states.pt"))


def record(step: int, **changes) -> TrainerRecord:
    fields = dict(
        step=step,
        consumed_samples=4 * step,
        global_batch_size=4,
        world_size=1,
        dp_size=1,
        sp_size=1,
        zero_stage=3,
        precision="fp32",
        model_name="fake",
        params={"w": [2, 3], "b": [3]},
        trainable=["b", "w"],
        run_name="test",
        ema=False,
        reason="every_steps",
        saved_at="2026-01-01T00:00:00+0000",
    )
    fields.update(changes)
    return TrainerRecord(**fields)


def rank_state(step: int) -> dict:
    return {
        "rank": 0,
        "rng": {"torch": torch.zeros(4, dtype=torch.uint8)},
        "callbacks": {"guard": {"total": step}},
    }


def relist(step_dir: Path, name: str) -> None:
    """Fix the manifest's entry of ``name`` to match the file, as an attacker would (only reading the file
    as data can refuse it then)."""
    import json

    from cinescene.ckpt.manifest import MANIFEST, hash_file

    listed = json.loads((step_dir / MANIFEST).read_text())
    found = hash_file(step_dir / name)
    listed["files"][name] = {"size": found.size, found.algorithm.value: found.digest}
    (step_dir / MANIFEST).write_text(json.dumps(listed))
