"""Under deepspeed.zero.Init (2 ranks, gloo): constructor init survives partitioning, pretrained weights
load into the partitioned model (only rank 0 reads tensor data), and an optimizer step with activation
checkpointing matches plain PyTorch."""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file

from cinescene.models import build_model
from cinescene.models.weights import assign_state_dict

from .helpers import randomize, recorded_reads, tiny_batch, tiny_config
from .test_sequence_parallel import free_port

WORLD = 2
LR = 0.05


def ds_config():
    return {
        "train_micro_batch_size_per_gpu": 1,
        "gradient_accumulation_steps": 1,
        "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0},
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**9,
        "gradient_clipping": 0.0,
    }  # DeepSpeed clips at 1.0 unless told otherwise


def loss_of(model, batch):
    out = model(
        batch["x"],
        batch["timestep"],
        batch["text"],
        cameras=batch["cameras"],
        scene_images=batch["scene_images"],
    )
    return out.square().mean()


def _worker(rank: int, port: int, checkpoint_path: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(WORLD),
        LOCAL_RANK=str(rank),
    )
    torch.set_num_threads(1)
    import deepspeed

    deepspeed.init_distributed(dist_backend="gloo", verbose=False)
    try:
        cfg = tiny_config(activation_checkpointing=True, pretrained=checkpoint_path)
        batch = tiny_batch(batch=1)

        torch.manual_seed(0)  # the same reference on every rank (VGGT and the projector are random)
        reference = build_model(cfg)  # plain PyTorch
        initial = {k: v.clone() for k, v in reference.state_dict().items()}
        opt = torch.optim.SGD(reference.trainable_parameters(), lr=LR)
        loss_of(reference, batch).backward()
        opt.step()

        with recorded_reads() as log, deepspeed.zero.Init(config_dict_or_path=ds_config()):
            model = build_model(cfg)
        params = dict(model.named_parameters())
        assert all(hasattr(p, "ds_id") for p in params.values())
        pretrained = load_file(checkpoint_path)
        # Rank 0 reads each checkpoint tensor once; the other rank reads headers only.
        assert sorted(log.keys) == (sorted(pretrained) if rank == 0 else []), (rank, len(log.keys))
        print(f"rank {rank}: {len(log.keys)} checkpoint tensors read")
        checked = [
            "blocks.0.cam_encoder.weight",
            "blocks.1.projector.weight",
            "blocks.0.modulation",
            "blocks.1.self_attn.q.weight",
        ]
        with deepspeed.zero.GatheredParameters([params[n] for n in checked]):
            assert torch.all(params["blocks.0.cam_encoder.weight"] == 0)  # zero init
            assert torch.equal(params["blocks.1.projector.weight"], torch.eye(64))  # identity init
            for name in checked[2:]:  # loaded on rank 0
                assert torch.equal(params[name], pretrained[name]), name

        # Same starting point as the reference everywhere (VGGT and the scene projector are random),
        # written through the ZeRO-3 aware loader.
        assert assign_state_dict(model, initial).ok

        engine, *_ = deepspeed.initialize(
            model=model,
            model_parameters=model.trainable_parameters(),
            optimizer=torch.optim.SGD(model.trainable_parameters(), lr=LR),
            config=ds_config(),
        )
        loss = loss_of(engine, batch)
        engine.backward(loss)
        engine.step()

        worst, worst_name = 0.0, None
        expected = reference.state_dict()
        for name, param in engine.module.named_parameters():
            with deepspeed.zero.GatheredParameters([param]):
                diff = (param.detach() - expected[name]).abs().max().item()
            if diff > worst:
                worst, worst_name = diff, name
        if rank == 0:
            print(
                f"ZeRO-3 x{WORLD} + activation checkpointing, one SGD step: max abs param diff {worst:.2e} "
                f"({worst_name})"
            )
        assert worst < 1e-6
    finally:
        dist.destroy_process_group()


@pytest.mark.dist
@pytest.mark.slow
def test_zero3_init_load_and_step(tmp_path):
    base = build_model(tiny_config(scene__enabled=False, camera__enabled=False))
    randomize(base, seed=8)
    path = tmp_path / "wan_tiny.safetensors"
    save_file({k: v.contiguous() for k, v in base.state_dict().items()}, path)
    mp.spawn(_worker, args=(free_port(), str(path)), nprocs=WORLD, join=True)
