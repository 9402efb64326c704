"""AdamW over the trainable parameters, in two groups: with and without weight decay."""

from __future__ import annotations

import fnmatch

import torch
import torch.nn as nn

from cinescene.config.parallel import ParallelConfig
from cinescene.config.train import TrainConfig
from cinescene.errors import CineSceneError


def _full_ndim(param: torch.Tensor) -> int:
    return len(getattr(param, "ds_shape", param.shape))


def parameter_groups(model: nn.Module, train: TrainConfig) -> list[dict]:
    """Trainable parameters split into decaying weights and the rest.

    No decay for 1-D parameters (biases, norm scales) and for names matching
    ``train.no_decay`` (embeddings, adaLN modulation tables, learned tokens):
    decaying them towards zero pulls the network away from its pretrained
    function without regularising anything useful.
    """
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        exempt = _full_ndim(param) <= 1 or any(fnmatch.fnmatchcase(name, p) for p in train.no_decay)
        (no_decay if exempt else decay).append(param)
    if not decay and not no_decay:
        raise CineSceneError("no parameter is trainable: model.trainable / model.frozen freeze everything")
    groups = [
        {"params": decay, "weight_decay": train.weight_decay, "name": "decay"},
        {"params": no_decay, "weight_decay": 0.0, "name": "no_decay"},
    ]
    return [group for group in groups if group["params"]]


def build_optimizer(
    groups: list[dict], train: TrainConfig, parallel: ParallelConfig
) -> torch.optim.Optimizer:
    """On GPUs DeepSpeed's kernels: FusedAdam, or DeepSpeedCPUAdam for states offloaded to the host.
    On a CPU-only machine (or with ``train.optimizer_impl=torch``) torch's AdamW: there is nothing
    to offload from, and it needs no JIT-compiled extension."""
    kwargs = dict(lr=train.lr, betas=tuple(train.betas), eps=train.eps, weight_decay=train.weight_decay)
    if train.optimizer_impl == "auto" and torch.cuda.is_available():
        if parallel.offload_optimizer == "cpu":
            from deepspeed.ops.adam import DeepSpeedCPUAdam

            return DeepSpeedCPUAdam(groups, adamw_mode=True, **kwargs)
        from deepspeed.ops.adam import FusedAdam

        return FusedAdam(groups, adam_w_mode=True, **kwargs)
    return torch.optim.AdamW(groups, **kwargs)
