"""Flow matching (shift, noising, targets, Wan weighting),
condition dropout, LR schedule, batch arithmetic."""

from __future__ import annotations

import math

import pytest
import torch

from cinescene.config.model import ModelConfig
from cinescene.config.train import FlowMatchingConfig, TrainConfig
from cinescene.distributed.batching import plan_batch
from cinescene.errors import CineSceneError
from cinescene.models.flow_matching import FlowMatching, shift_sigma
from cinescene.train.objective import FlowMatchingObjective, sample_generator, sample_generators
from cinescene.train.schedule import lr_at


def gens(count, seed=0):
    return [torch.Generator().manual_seed(seed * 100 + i) for i in range(count)]


def test_shift_maps_the_unit_interval_towards_high_noise():
    sigma = torch.tensor([0.0, 0.1, 0.5, 1.0], dtype=torch.float64)
    shifted = shift_sigma(sigma, 15.0)
    assert shifted[0] == 0 and shifted[-1] == 1
    assert shifted[2] == pytest.approx(15 * 0.5 / (1 + 14 * 0.5))
    assert torch.all(shifted >= sigma)
    assert torch.equal(shift_sigma(sigma, 1.0), sigma)


def test_grid_and_noising_follow_wan():
    flow = FlowMatching(FlowMatchingConfig(shift=15.0, num_train_timesteps=1000))
    assert flow.sigmas[0] == 1.0 and flow.sigmas[-1] == pytest.approx(
        shift_sigma(torch.tensor(0.001), 15.0).item()
    )
    assert torch.allclose(flow.timesteps, flow.sigmas * 1000)
    x0 = torch.randn(4, 3, 2, 4, 4)
    noised = flow.noise(x0, gens(4))
    # Recover eps and sigma from the outputs: x_t = x0 + sigma * (eps - x0) = x0 + sigma * target.
    sigma = (noised.timestep / 1000).view(-1, 1, 1, 1, 1)
    assert torch.allclose(noised.x_t, x0 + sigma * noised.target, atol=1e-5)
    assert torch.all((noised.timestep > 0) & (noised.timestep <= 1000))
    assert torch.all(noised.weight == 1)
    # Same generator seed, same draws.
    again = flow.noise(x0, gens(4))
    assert torch.equal(again.x_t, noised.x_t) and torch.equal(again.timestep, noised.timestep)


def test_uniform_loss_is_mse():
    flow = FlowMatching(FlowMatchingConfig())
    x0 = torch.randn(2, 3, 1, 4, 4)
    noised = flow.noise(x0, gens(2, seed=1))
    prediction = torch.randn_like(x0)
    assert flow.loss(prediction, noised).item() == pytest.approx(
        ((prediction - noised.target) ** 2).mean().item(), rel=1e-6
    )


def test_wan_weighting_is_diffsynths_bell():
    n = 1000
    flow = FlowMatching(FlowMatchingConfig(shift=5.0, weighting="wan", num_train_timesteps=n))
    w = flow.weights
    assert w.mean().item() == pytest.approx(1.0)  # normalised: the loss keeps its scale
    assert w.min().item() == pytest.approx(0.0, abs=1e-12)  # the bell minus its minimum
    peak = flow.timesteps[w.argmax()].item()
    assert abs(peak - n / 2) < 5  # centred on t = N/2
    t = flow.timesteps
    bell = torch.exp(-2 * ((t - n / 2) / n) ** 2)
    assert torch.allclose(w, (bell - bell.min()) * n / (bell - bell.min()).sum())


class _Spy(torch.nn.Module):
    """Records what the objective feeds the model."""

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(()))
        self.calls = []

    def forward(self, x, timestep, text, **kwargs):
        self.calls.append({"x": x, "timestep": timestep, "text": text, **kwargs})
        return x * self.scale


def _batch(size=64):
    return {
        "video": torch.randn(size, 3, 2, 4, 4, generator=torch.Generator().manual_seed(3)),
        "text": torch.ones(size, 4, 8),
        "cameras": torch.eye(4).repeat(size, 2, 1, 1),
        "scene_images": torch.rand(size, 2, 3, 8, 8),
        "scene_latents": torch.rand(size, 2, 3, 4, 4),
        "prompt": ["p"] * size,
    }


def test_condition_dropout_is_per_sample_and_seeded():
    train = TrainConfig(text_dropout=0.3, scene_dropout=0.5)
    objective = FlowMatchingObjective(train, ModelConfig())
    spy = _Spy()
    loss, stats = objective(spy, _batch(), sample_generators(_batch(), 0, 7, 0, 0), torch.device("cpu"))
    call = spy.calls[-1]
    dropped = call["text"].flatten(1).abs().sum(dim=1) == 0
    assert 0 < dropped.float().mean() < 0.7  # some, not all
    assert torch.all(call["text"][~dropped] == 1)  # the others untouched
    assert stats["text_dropped"] == pytest.approx(dropped.float().mean().item())
    assert call["drop_scene"].dtype == torch.bool and 0 < call["drop_scene"].float().mean() < 1
    assert set(call) >= {"cameras", "scene_images"} and "scene_latents" not in call  # pixel_context off
    objective(spy, _batch(), sample_generators(_batch(), 0, 7, 0, 0), torch.device("cpu"))
    assert torch.equal(spy.calls[-1]["text"], call["text"]) and torch.equal(spy.calls[-1]["x"], call["x"])
    objective(spy, _batch(), sample_generators(_batch(), 0, 8, 0, 0), torch.device("cpu"))
    assert not torch.equal(spy.calls[-1]["x"], call["x"])  # another step draws anew
    assert math.isfinite(loss.item())


def test_missing_batch_key_names_it():
    objective = FlowMatchingObjective(TrainConfig(), ModelConfig())
    batch = _batch(2)
    del batch["cameras"]
    with pytest.raises(KeyError, match="cameras"):
        objective(_Spy(), batch, sample_generators(batch, 0, 1, 0, 0), torch.device("cpu"))


def test_draws_follow_the_sample_not_its_rank_or_micro_batch():
    draws = {
        args: torch.rand(1, generator=sample_generator(*args)).item()
        for args in [(0, 1, "a"), (1, 1, "a"), (0, 2, "a"), (0, 1, "b")]
    }
    assert len(set(draws.values())) == len(draws)
    batch = {"video": torch.zeros(2, 1), "key": ["a", "b"]}
    on_rank_0 = [
        torch.rand(1, generator=g).item() for g in sample_generators(batch, 0, 1, dp_rank=0, micro=0)
    ]
    on_rank_3 = [
        torch.rand(1, generator=g).item() for g in sample_generators(batch, 0, 1, dp_rank=3, micro=2)
    ]
    assert on_rank_0 == on_rank_3 == [draws[(0, 1, "a")], draws[(0, 1, "b")]]
    unkeyed = sample_generators({"video": torch.zeros(2, 1)}, 0, 1, dp_rank=0, micro=0)
    assert len({torch.rand(1, generator=g).item() for g in unkeyed}) == 2


def test_lr_warmup_then_cosine_or_constant():
    cfg = TrainConfig(lr=1.0, warmup_steps=4, max_steps=14, schedule="cosine", min_lr_ratio=0.1)
    assert [lr_at(s, cfg) for s in range(1, 5)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_at(5, cfg) == pytest.approx(1.0)  # first step after warmup: the peak
    assert lr_at(10, cfg) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert 0.1 < lr_at(14, cfg) < 0.2  # the last step still learns
    values = [lr_at(s, cfg) for s in range(5, 15)]
    assert values == sorted(values, reverse=True)
    constant = TrainConfig(lr=2.0, warmup_steps=0, schedule="constant", max_steps=5)
    assert [lr_at(s, constant) for s in range(1, 6)] == [2.0] * 5


def test_batch_plan_arithmetic_and_errors():
    plan = plan_batch(TrainConfig(micro_batch_size=2, grad_accum=3), world_size=4)
    assert (plan.dp_size, plan.global_batch_size) == (4, 24)
    plan = plan_batch(TrainConfig(micro_batch_size=1, global_batch_size=16), world_size=8, sequence=2)
    assert (plan.dp_size, plan.grad_accum, plan.global_batch_size) == (4, 4, 16)
    with pytest.raises(CineSceneError) as info:
        plan_batch(TrainConfig(micro_batch_size=2, global_batch_size=16), world_size=6, sequence=2)
    message = str(info.value)
    assert (
        "global_batch_size=16" in message
        and "micro_batch_size=2" in message
        and "data-parallel size 3" in message
    )
    assert "\n" not in message
    with pytest.raises(CineSceneError, match="not a multiple of parallel.sequence=4"):
        plan_batch(TrainConfig(), world_size=6, sequence=4)
