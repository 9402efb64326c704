"""DeepSpeed config from our sections, AdamW parameter groups, zero.Init choice, preemption flag agreement."""

from __future__ import annotations

import os
import signal
import time

import pytest
import torch
import torch.multiprocessing as mp

from cinescene.config import load_config
from cinescene.config.train import TrainConfig
from cinescene.distributed.batching import plan_batch
from cinescene.distributed.env import free_port
from cinescene.errors import CineSceneError
from cinescene.train.engine import deepspeed_config, use_zero_init
from cinescene.train.optim import parameter_groups
from cinescene.train.preemption import PreemptionFlag

from .standins import TinyVideoModel


def cfg(*overrides):
    config, _ = load_config(None, ["data.train_shards=x", *overrides])
    return config


def test_deepspeed_config_follows_our_sections():
    c = cfg(
        "train.micro_batch_size=2",
        "train.global_batch_size=16",
        "train.precision=bf16",
        "train.grad_clip=0.5",
    )
    ds = deepspeed_config(c, plan_batch(c.train, world_size=4))
    assert (
        ds["train_batch_size"],
        ds["train_micro_batch_size_per_gpu"],
        ds["gradient_accumulation_steps"],
    ) == (16, 2, 2)
    assert ds["bf16"] == {"enabled": True, "check_grad_overflow": True} and ds["gradient_clipping"] == 0.5
    assert ds["zero_optimization"]["stage"] == 3 and "offload_optimizer" not in ds["zero_optimization"]
    c = cfg("parallel.zero_stage=2", "parallel.offload_optimizer=cpu", "train.precision=fp32")
    zero = deepspeed_config(c, plan_batch(c.train, 1))["zero_optimization"]
    assert (
        zero["stage"] == 2
        and zero["offload_optimizer"]["device"] == "cpu"
        and "allgather_bucket_size" in zero
    )
    c = cfg("parallel.sequence=2", "parallel.reduce_bucket_size=100")
    zero = deepspeed_config(c, plan_batch(c.train, 2, 2), largest_param=5000)["zero_optimization"]
    assert zero["reduce_scatter"] is False and zero["reduce_bucket_size"] == 5000


def test_stage_zero_is_rejected_with_the_reason():
    from cinescene.config import ConfigError

    with pytest.raises(ConfigError, match="cannot skip non-finite steps"):
        cfg("parallel.zero_stage=0")


def test_zero_init_choice():
    assert not use_zero_init(cfg(), lambda: 10)
    assert use_zero_init(cfg(), lambda: 10**9)
    assert use_zero_init(cfg("parallel.zero_init=true"), lambda: 10)
    assert not use_zero_init(cfg("parallel.zero_init=false"), lambda: 10**12)
    assert not use_zero_init(cfg("parallel.zero_stage=2"), lambda: 10**12)


def test_parameter_groups_exempt_norms_biases_embeddings():
    model = TinyVideoModel(8)
    model.ffn[0].weight.requires_grad_(False)
    groups = {g["name"]: g for g in parameter_groups(model, TrainConfig(weight_decay=0.1))}
    names = {id(p): n for n, p in model.named_parameters()}
    decay = sorted(names[id(p)] for p in groups["decay"]["params"])
    exempt = sorted(names[id(p)] for p in groups["no_decay"]["params"])
    assert decay == ["ffn.2.weight", "head.weight"]
    assert {
        "patch_embedding.weight",
        "text_embedding.weight",
        "modulation",
        "norm.weight",
        "head.bias",
    } <= set(exempt)
    assert groups["decay"]["weight_decay"] == 0.1 and groups["no_decay"]["weight_decay"] == 0.0
    for p in model.parameters():
        p.requires_grad_(False)
    with pytest.raises(CineSceneError, match="no parameter is trainable"):
        parameter_groups(model, TrainConfig())


def test_signal_only_sets_the_flag():
    flag = PreemptionFlag(["SIGUSR1"]).install()
    try:
        assert not flag.requested
        os.kill(os.getpid(), signal.SIGUSR1)
        deadline = time.monotonic() + 10  # taken by the flag's own thread (sigwait), not this one
        while not flag.requested and time.monotonic() < deadline:
            time.sleep(0.01)
        assert flag.requested and flag.signal_name == "SIGUSR1"
        assert flag.agreed(torch.device("cpu"))  # no process group: the local flag
    finally:
        flag.uninstall()
    assert signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL


def _agree(rank, port, results):
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        flag = PreemptionFlag(["SIGUSR1"])
        first = flag.agreed(torch.device("cpu"))
        flag.requested = rank == 1  # only rank 1 was signalled
        results[rank] = (first, flag.agreed(torch.device("cpu")))
    finally:
        dist.destroy_process_group()


@pytest.mark.dist
def test_ranks_agree_when_any_one_was_signalled():
    results = mp.Manager().dict()
    mp.spawn(_agree, args=(free_port(), results), nprocs=2, join=True)
    assert dict(results) == {0: (False, True), 1: (False, True)}
