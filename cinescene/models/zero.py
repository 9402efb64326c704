"""ZeRO-3 awareness without a hard DeepSpeed dependency at import time.

Under ``deepspeed.zero.Init`` each parameter is partitioned across ranks: its
``.data`` is this rank's flat shard and ``ds_numel`` / ``ds_shape`` describe
the full tensor. Reading or writing full values needs the parameters
gathered (``deepspeed.zero.GatheredParameters``); writes are made on one rank
(``modifier_rank=0``) and re-partitioned on exit.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable

import torch


def is_partitioned(param: torch.Tensor) -> bool:
    return hasattr(param, "ds_id")


def full_numel(param: torch.Tensor) -> int:
    """Element count of the whole parameter, also when only a shard is held here."""
    return int(getattr(param, "ds_numel", param.numel()))


def full_shape(param: torch.Tensor) -> tuple[int, ...]:
    return tuple(getattr(param, "ds_shape", param.shape))


def gathered(params: Iterable[torch.Tensor], modifier_rank=None):
    """Context in which ZeRO-3 partitioned ``params`` hold their full values (a no-op otherwise)."""
    params = [p for p in params if is_partitioned(p)]
    if not params:
        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(params, modifier_rank=modifier_rank)
