"""Sharded EMA (math, slicing, save/load, resharding) and the non-finite guard."""

from __future__ import annotations

import math

import pytest
import torch

from cinescene.config.train import EMAConfig
from cinescene.train.callbacks import StepResult, TrainState
from cinescene.train.ema import EMACallback, ShardedEMA
from cinescene.train.guards import NonFiniteGuard, NonFiniteTrainingError, poison_if_nonfinite


def make_model():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Linear(7, 3))
    model[1].bias.requires_grad_(False)  # frozen: no EMA
    return model


def shards(model, count, cfg: EMAConfig | None = None):
    cfg = cfg or EMAConfig(decay=0.9)
    return [ShardedEMA(model.named_parameters(), cfg, shard_index=i, shard_count=count) for i in range(count)]


def assemble(states) -> dict[str, torch.Tensor]:
    """Full EMA tensors from every rank's ``state_dict()``; an element no slice covers stays NaN, so it
    fails every comparison."""
    full = {}
    for state in states:
        for name, entry in state["slices"].items():
            flat = full.setdefault(name, torch.full(tuple(entry["shape"]), math.nan)).view(-1)
            start, length = entry["offset"], entry["length"]
            flat[start : start + length] = entry["value"].reshape(-1)[:length]
    return full


def step_weights(model, step):
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * step)


def test_sharded_ema_equals_the_full_average():
    model = make_model()
    reference = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    emas = shards(model, 3)
    assert sum(s.length for e in emas for s in e.slices) == sum(p.numel() for p in reference.values())
    for step in range(1, 6):
        step_weights(model, step)
        for e in emas:
            e.update(step)
        for n, p in model.named_parameters():
            if p.requires_grad:
                reference[n] = 0.9 * reference[n] + 0.1 * p.detach()
    full = assemble([e.state_dict() for e in emas])
    assert set(full) == set(reference) == {"0.weight", "0.bias", "1.weight"}
    for name in reference:
        assert torch.allclose(full[name], reference[name], atol=1e-6)


def test_ema_copies_until_start_step():
    model = make_model()
    (ema,) = shards(model, 1, EMAConfig(decay=0.5, start_step=2))
    step_weights(model, 1)
    ema.update(2)
    assert torch.equal(ema.shadow["0.weight"], model[0].weight.detach().view(-1))


def test_ema_state_roundtrip_and_resharding():
    model = make_model()
    two = shards(model, 2)
    for step in range(1, 4):
        step_weights(model, step)
        for e in two:
            e.update(step)
    saved = [e.state_dict() for e in two]
    same = shards(make_model(), 2)
    for e, s in zip(same, saved):
        e.load_state_dict(s)
    assert all(torch.equal(a.shadow[k], b.shadow[k]) for a, b in zip(same, two) for k in a.shadow)
    three = shards(make_model(), 3)
    for i, e in enumerate(three):
        e.load_state_dict(saved[min(i, 1)], all_ranks=lambda: saved)
    full_before, full_after = assemble(saved), assemble([e.state_dict() for e in three])
    assert all(torch.equal(full_before[k], full_after[k]) for k in full_before)
    with pytest.raises(ValueError, match="sliced differently"):
        shards(make_model(), 3)[0].load_state_dict(saved[1])


def test_applied_swaps_the_ema_in_and_restores_the_weights_exactly():
    model = make_model()
    (ema,) = shards(model, 1)
    trained = {n: p.detach().clone() for n, p in model.named_parameters()}
    step_weights(model, 1)
    ema.update(1)
    step_weights(model, 2)
    after = {n: p.detach().clone() for n, p in model.named_parameters()}
    with ema.applied():
        for name, param in model.named_parameters():
            if param.requires_grad:
                assert torch.equal(param.detach().view(-1), ema.shadow[name]), name
            else:
                assert torch.equal(param, after[name])  # frozen: no EMA, untouched
        assert not torch.equal(model[0].weight, trained["0.weight"])
    assert all(torch.equal(p, after[n]) for n, p in model.named_parameters())
    with pytest.raises(RuntimeError, match="inside"):
        with ema.applied():
            raise RuntimeError("inside")
    assert all(torch.equal(p, after[n]) for n, p in model.named_parameters())  # restored on errors too


def _applied_on_two_ranks(rank: int, init: str, out: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    try:
        model = make_model()  # whole parameters on both ranks, as under ZeRO-1/2
        ema = ShardedEMA(model.named_parameters(), EMAConfig(decay=0.9), shard_index=rank, shard_count=2)
        step_weights(model, 1)
        ema.update(1)
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        with ema.applied():
            inside = {n: p.detach().clone() for n, p in model.named_parameters()}
        assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
        torch.save({"inside": inside, "state": ema.state_dict()}, f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.dist
def test_applied_gathers_every_ranks_slice_of_whole_parameters(tmp_path):
    """ZeRO-1/2: each rank averages a slice of each parameter;
    inside ``applied`` every rank holds the full EMA."""
    import torch.multiprocessing as mp

    mp.start_processes(
        _applied_on_two_ranks,
        args=(f"file://{tmp_path / 'store'}", str(tmp_path)),
        nprocs=2,
        start_method="spawn",
    )
    saved = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    full = assemble([s["state"] for s in saved])
    for name, value in full.items():
        assert all(torch.equal(s["inside"][name], value) for s in saved), name
    assert torch.equal(saved[0]["inside"]["1.bias"], saved[1]["inside"]["1.bias"])  # frozen: the weights


def test_ema_callback_skips_discarded_steps():
    model = make_model()
    (ema,) = shards(model, 1)
    callback = EMACallback(ema)
    before = ema.shadow["0.weight"].clone()
    step_weights(model, 1)
    callback.on_step_end(TrainState(), StepResult(1, float("nan"), float("inf"), 0.1, False, 4, 0.1, 0.0))
    assert torch.equal(ema.shadow["0.weight"], before)
    callback.on_step_end(TrainState(), StepResult(2, 1.0, 1.0, 0.1, True, 4, 0.1, 0.0))
    assert not torch.equal(ema.shadow["0.weight"], before)


def _result(step, ok):
    return StepResult(step, 1.0 if ok else float("nan"), 1.0 if ok else float("inf"), 0.1, ok, 4, 0.1, 0.0)


def test_guard_counts_resets_and_stops_after_k_in_a_row():
    guard = NonFiniteGuard(max_consecutive=3)
    state = TrainState(last_checkpoint="/runs/x/checkpoints/step_00000020")
    for step, ok in enumerate([False, False, True, False, False], start=1):
        guard.on_step_end(state, _result(step, ok))
        assert state.fatal is None
    assert (guard.consecutive, guard.total, state.metrics["nonfinite_steps"]) == (2, 4, 4)
    guard.on_step_end(state, _result(6, False))
    assert isinstance(state.fatal, NonFiniteTrainingError)
    message = str(state.fatal)
    assert "3 non-finite steps in a row" in message and "step_00000020" in message and "\n" not in message
    restored = NonFiniteGuard(3)
    restored.load_state_dict(guard.state_dict())
    assert (restored.consecutive, restored.total) == (3, 5)


def test_poisoned_loss_gives_nan_gradients_everywhere():
    weight = torch.nn.Parameter(torch.ones(3))
    finite = (weight * 2).sum()
    assert poison_if_nonfinite(finite) is finite
    infinite = (weight * 2).sum() + float("inf")
    poison_if_nonfinite(infinite).backward()
    assert torch.isnan(weight.grad).all()
    assert math.isnan(poison_if_nonfinite(torch.tensor(float("inf"), requires_grad=True)).item())
