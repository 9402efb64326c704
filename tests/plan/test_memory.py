"""Model states against DeepSpeed's own estimator; ZeRO-3 settings the plan reads from DeepSpeed's defaults;
the fit search and the checkpoint size against a real checkpoint."""

from __future__ import annotations

import dataclasses

import pytest

from cinescene.models import build_model
from cinescene.plan.budget import checkpoint_bytes_per_rank
from cinescene.plan.build import build_plan
from cinescene.plan.inventory import parameter_inventory
from cinescene.plan.memory import (
    MAX_LIVE_PARAMETERS,
    MAX_REUSE_DISTANCE,
    deepspeed_estimate,
    model_states,
)
from cinescene.plan.planner import configured_layout, fit, layout_memory, prepare, sequence_degrees

from .helpers import RECIPE, RECIPE_14B, SMOKE, config

H100 = 81559 * 2**20  # an "80 GB" H100's memory as the driver reports it


def _deepspeed_gpu_bytes(model, gpus: int, nodes: int = 1) -> int:
    """DeepSpeed's estimate_zero3_model_states_mem_needs (no offload) for ``model``'s parameters."""
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs, model_to_params

    # model_to_params counts the total by data pointer, which a meta-device model does not have; its
    # largest layer is read per module and works on the meta device.
    total = sum(p.numel() for p in model.parameters())
    largest = model_to_params(model)[1]
    _, gpu, _ = estimate_zero3_model_states_mem_needs(
        total, largest, num_gpus_per_node=gpus // nodes, num_nodes=nodes, cpu_offload=False
    )
    return gpu


@pytest.mark.parametrize("path", [RECIPE, RECIPE_14B], ids=["1.3B", "14B"])
@pytest.mark.parametrize("gpus", [8, 16])
def test_model_states_equal_deepspeeds_estimator_when_everything_trains(path, gpus):
    cfg = config(path, "model.frozen=[]", "train.ema.enabled=false")
    inventory = parameter_inventory(cfg.model, cfg.parallel.param_persistence_threshold)
    assert inventory.frozen == 0
    states = model_states(inventory, cfg, gpus)
    expected = _deepspeed_gpu_bytes(build_model(cfg.model, device="meta"), gpus, nodes=gpus // 8)
    print(f"{cfg.model.name} on {gpus} GPUs: plan {states.device:,} bytes, DeepSpeed {expected:,}")
    assert abs(states.device - expected) <= 1  # DeepSpeed truncates its division to an int
    assert deepspeed_estimate(inventory, gpus) == expected


def test_deepspeeds_own_live_estimate_on_a_real_model():
    """On real tensors DeepSpeed's model_to_params (its total by data pointer) agrees with the inventory."""
    from deepspeed.runtime.zero.stage3 import model_to_params

    cfg = config(SMOKE, "model.frozen=[]")
    model = build_model(cfg.model)
    total, largest = model_to_params(model)
    inventory = parameter_inventory(cfg.model, cfg.parallel.param_persistence_threshold)
    assert (inventory.total, inventory.largest_layer) == (total, largest)


def test_frozen_parameters_hold_only_their_partition():
    cfg = config(RECIPE)
    inventory = parameter_inventory(cfg.model, cfg.parallel.param_persistence_threshold)
    assert inventory.frozen > 0 and not inventory.vggt_trains
    states = model_states(inventory, cfg, 8)
    everything = model_states(dataclasses.replace(inventory, trainable=inventory.total, frozen=0), cfg, 8)
    assert everything.device - states.device == pytest.approx(16 * inventory.frozen / 8, abs=2)


def test_zero3_settings_the_engine_leaves_at_deepspeeds_defaults():
    from deepspeed.runtime.zero.config import DeepSpeedZeroConfig

    defaults = DeepSpeedZeroConfig()
    assert defaults.max_reuse_distance == MAX_REUSE_DISTANCE
    assert defaults.max_live_parameters == MAX_LIVE_PARAMETERS


def test_recipe_fits_eight_h100s_and_14b_needs_sequence_parallelism():
    recipe = prepare(config(RECIPE))
    found = fit(recipe, 8, H100)
    assert found.configured_fits and found.best.sequence == 1
    assert found.best.micro_batch * found.best.data_parallel * found.best.grad_accum == 16

    big = prepare(config(RECIPE_14B))
    found = fit(big, 8, H100)
    assert not found.configured_fits
    assert found.best is not None and found.best.sequence > 1
    assert f"parallel.sequence={found.best.sequence}" in found.fixes
    # the fix really fits, and the next smaller degree does not
    fixed = prepare(config(RECIPE_14B, f"parallel.sequence={found.best.sequence}"))
    assert layout_memory(fixed, configured_layout(fixed.cfg, 8)).peak <= found.usable
    smaller = [p for p in sequence_degrees(big.cfg, 8, 8) if p < found.best.sequence][-1]
    tighter = prepare(config(RECIPE_14B, f"parallel.sequence={smaller}"))
    assert layout_memory(tighter, configured_layout(tighter.cfg, 8)).peak > found.usable


def test_memory_falls_with_sequence_parallelism_and_grows_with_the_micro_batch():
    inputs = prepare(config(RECIPE_14B, "train.global_batch_size=null", "train.grad_accum=1"))
    from cinescene.plan.planner import Layout

    peaks = {
        (micro, sp): layout_memory(inputs, Layout(8, micro, sp, 1)).peak
        for micro in (1, 2)
        for sp in (1, 2, 4)
    }
    assert peaks[1, 1] > peaks[1, 2] > peaks[1, 4]
    assert peaks[2, 1] > peaks[1, 1] and peaks[2, 4] > peaks[1, 4]


def test_sequence_degrees_divide_the_heads_and_stay_in_a_node():
    cfg = config(RECIPE_14B)  # 40 heads
    assert sequence_degrees(cfg, 8, 8) == [1, 2, 4, 8]
    assert sequence_degrees(cfg, 16, 8) == [1, 2, 4, 8]
    assert sequence_degrees(config(RECIPE), 8, 8) == [1, 2, 4]  # 12 heads, 8 GPUs


def test_the_json_and_the_text_hold_the_same_numbers():
    from cinescene.plan import format_plan, plan_dict

    plan = build_plan(config(RECIPE), 8, H100)
    data = plan_dict(plan)
    text = format_plan(plan, "recipe")
    assert f"peak {data['memory']['peak'] / 1e9:.2f} GB" in text
    assert data["fits"] is True and "verdict: FITS" in text
    assert f"{data['time']['step_s']:.3g} s" in text
    assert data["gpu_hours"] == pytest.approx(10_000 * data["time"]["step_s"] * 8 / 3600)


@pytest.mark.slow
@pytest.mark.dist
def test_checkpoint_bytes_match_a_real_checkpoint(smoke_run):
    """The smoke run's step directory (2 ranks, ZeRO-3, EMA on): each rank's files against the plan's count
    (file headers, RNG states and DeepSpeed's bookkeeping come on top)."""
    cfg = config(SMOKE)
    inventory = parameter_inventory(cfg.model, cfg.parallel.param_persistence_threshold)
    step = smoke_run.step_dir
    for rank in range(2):
        files = [
            *(step / "zero").glob(f"zero_pp_rank_{rank}_*.pt"),
            *(step / "rank_states").glob(f"rank_{rank:05d}.*"),
        ]
        written = sum(f.stat().st_size for f in files)
        planned = checkpoint_bytes_per_rank(inventory, cfg, 2, rank)
        print(f"rank {rank}: {len(files)} files, {written:,} bytes; planned {planned:,}")
        assert len(files) == 3
        assert written == pytest.approx(planned, rel=0.1)
