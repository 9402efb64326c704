"""The DeepSpeed engine built from our config sections."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
import torch.nn as nn

from cinescene.config.schema import CineSceneConfig
from cinescene.distributed.batching import BatchPlan
from cinescene.distributed.groups import ParallelLayout
from cinescene.log import get_logger

from .optim import build_optimizer, parameter_groups

_log = get_logger("train.engine")

# DeepSpeed prints a progress line every `steps_per_print` steps; our own logging replaces it.
NEVER = 2**31 - 1


def deepspeed_config(cfg: CineSceneConfig, plan: BatchPlan, largest_param: int = 0) -> dict:
    """DeepSpeed's config dict. ``largest_param``: element count of the biggest trainable parameter."""
    par, train = cfg.parallel, cfg.train
    zero: dict = {
        "stage": par.zero_stage,
        "contiguous_gradients": True,
        "reduce_bucket_size": par.reduce_bucket_size,
        # Overlap needs side streams (CUDA); on CPU it only reorders work.
        "overlap_comm": torch.cuda.is_available(),
    }
    if par.zero_stage == 3:
        zero["stage3_param_persistence_threshold"] = par.param_persistence_threshold
        zero["stage3_prefetch_bucket_size"] = par.reduce_bucket_size
        if par.sequence > 1:
            # ZeRO-3's reduce-scatter path averages gradients over all ranks, ignoring that the
            # ranks of a sequence-parallel group hold parts of one sample (DeepSpeed 0.19: their sum
            # is the gradient); its all-reduce path divides by the data-parallel size only, but is
            # taken only for buckets within reduce_bucket_size, hence the bucket >= largest parameter.
            zero["reduce_scatter"] = False
            zero["reduce_bucket_size"] = max(par.reduce_bucket_size, largest_param)
    else:
        zero["allgather_bucket_size"] = par.reduce_bucket_size
    if par.offload_optimizer == "cpu":
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": torch.cuda.is_available()}
    if par.offload_params == "cpu":
        zero["offload_param"] = {"device": "cpu", "pin_memory": torch.cuda.is_available()}
    return {
        "train_batch_size": plan.global_batch_size,
        "train_micro_batch_size_per_gpu": plan.micro_batch_size,
        "gradient_accumulation_steps": plan.grad_accum,
        "gradient_clipping": train.grad_clip,
        # check_grad_overflow: a non-finite gradient norm discards the step (the NaN guard relies on it).
        "bf16": {"enabled": train.precision == "bf16", "check_grad_overflow": True},
        "fp16": {"enabled": False},
        "zero_optimization": zero,
        # Our optimizer is a client optimizer (torch AdamW on CPU): allowed on purpose.
        "zero_allow_untested_optimizer": True,
        "zero_force_ds_cpu_optimizer": False,
        "steps_per_print": NEVER,
        "wall_clock_breakdown": False,
    }


def use_zero_init(cfg: CineSceneConfig, count_params: Callable[[], int]) -> bool:
    """Whether to build the model inside ``deepspeed.zero.Init`` (only ZeRO-3 partitions at build time)."""
    par = cfg.parallel
    if par.zero_stage != 3 or par.zero_init is False:
        return False
    return par.zero_init is True or count_params() >= par.zero_init_min_params


def build_engine(
    cfg: CineSceneConfig,
    layout: ParallelLayout,
    plan: BatchPlan,
    build_model: Callable[[], nn.Module],
    *,
    zero_init: bool = False,
):
    """Model (optionally partitioned at build), optimizer,
    and ``deepspeed.initialize``; returns the engine."""
    import deepspeed

    context = (
        deepspeed.zero.Init(config_dict_or_path=deepspeed_config(cfg, plan), mpu=layout.mpu)
        if zero_init
        else contextlib.nullcontext()
    )
    with context:
        model = build_model()
    largest = max(
        (int(getattr(p, "ds_numel", p.numel())) for p in model.parameters() if p.requires_grad), default=0
    )
    ds_config = deepspeed_config(cfg, plan, largest)
    if layout.sp_group is not None:
        if not hasattr(model, "set_sequence_parallel"):
            raise TypeError(
                f"{type(model).__name__} has no set_sequence_parallel(group); parallel.sequence > 1 needs it"
            )
        model.set_sequence_parallel(layout.sp_group)
    optimizer = build_optimizer(parameter_groups(model, cfg.train), cfg.train, cfg.parallel)
    engine, _, _, _ = deepspeed.initialize(
        model=model, optimizer=optimizer, config=ds_config, mpu=layout.mpu, dist_init_required=False
    )
    _log.info(
        "DeepSpeed engine: ZeRO-%d, %s, micro batch %d x accumulation %d x data-parallel %d = %d, "
        "sequence parallel %d%s",
        cfg.parallel.zero_stage,
        cfg.train.precision,
        plan.micro_batch_size,
        plan.grad_accum,
        plan.dp_size,
        plan.global_batch_size,
        layout.sp_size,
        ", built under zero.Init" if zero_init else "",
    )
    return engine
