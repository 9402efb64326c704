"""Trainer-level Ulysses sequence parallelism: the DeepSpeed ZeRO-3 engine with parallel.sequence=2
gives the 1-rank loss and gradients (flow-matching objective, tiny CineScene model, 2 gloo ranks)."""

from __future__ import annotations

import pytest
import torch
import torch.multiprocessing as mp

from cinescene.config import load_config
from cinescene.distributed.env import free_port, standalone
from cinescene.models import build_model

from .conftest import REPO

WORLD = 2


def contract_batch(batch: int = 2):
    """A batch as the loader yields it for the tiny model (pixel proxy: 3 x 5 x 16 x 16, 3 scene images)."""
    gen = torch.Generator().manual_seed(5)
    cameras = torch.eye(4).repeat(batch, 5, 1, 1)
    cameras[:, :, :3, 3] = torch.randn(batch, 5, 3, generator=gen)
    return {
        "video": torch.randn(batch, 3, 5, 16, 16, generator=gen).tanh(),
        "text": torch.randn(batch, 32, 64, generator=gen),
        "cameras": cameras,
        "scene_images": torch.rand(batch, 3, 3, 64, 64, generator=gen),
        "scene_latents": torch.rand(batch, 3, 3, 16, 16, generator=gen),
        "key": [f"s{i}" for i in range(batch)],
    }


def randomized_model(cfg):
    """The tiny model with every weight random (zero-initialised modules would hide errors)."""
    model = build_model(cfg.model)
    gen = torch.Generator().manual_seed(21)
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(torch.randn(param.shape, generator=gen) * 0.1)
    return model


def _worker(rank: int, port: int, results) -> None:
    from deepspeed.utils import safe_get_full_grad

    from cinescene.distributed.batching import plan_batch
    from cinescene.distributed.groups import build_layout, destroy_process_group, init_process_group
    from cinescene.train.engine import build_engine
    from cinescene.train.objective import FlowMatchingObjective, sample_generators

    torch.set_num_threads(1)
    cfg, _ = load_config(
        REPO / "configs/experiments/smoke.yaml",
        [
            "parallel.sequence=2",
            "train.precision=fp32",
            "train.micro_batch_size=2",
            "train.text_dropout=0.5",
            "train.scene_dropout=0.5",
            "parallel.param_persistence_threshold=0",
            "model.scene.pixel_context=true",
            "model.attention.mask=context_readonly",
        ],
    )
    env = standalone(WORLD, rank, port)
    init_process_group(env, "gloo", 300)
    layout = build_layout(env, cfg.parallel.sequence)
    try:
        assert (layout.dp_size, layout.dp_rank, layout.sp_size) == (1, 0, 2)
        objective = FlowMatchingObjective(cfg.train, cfg.model)
        batch = contract_batch()

        reference = randomized_model(cfg)
        ref_loss, _ = objective(reference, batch, sample_generators(batch, 0, 1, 0, 0), torch.device("cpu"))
        ref_loss.backward()
        ref_grads = {n: p.grad.clone() for n, p in reference.named_parameters() if p.requires_grad}

        engine = build_engine(cfg, layout, plan_batch(cfg.train, WORLD, 2), lambda: randomized_model(cfg))
        loss, _ = objective(engine, batch, sample_generators(batch, 0, 1, layout.dp_rank, 0), engine.device)
        engine.backward(loss)
        grads = {
            n: safe_get_full_grad(p).reshape(ref_grads[n].shape)
            for n, p in engine.module.named_parameters()
            if p.requires_grad
        }
        rel = {n: ((grads[n] - g).abs().max() / (g.abs().max() + 1e-12)).item() for n, g in ref_grads.items()}
        results[rank] = {
            "loss": loss.item(),
            "ref_loss": ref_loss.item(),
            "worst": max(rel.values()),
            "worst_name": max(rel, key=rel.get),
            "count": len(rel),
        }
    finally:
        destroy_process_group()


@pytest.mark.dist
def test_sequence_parallel_engine_matches_one_rank():
    results = mp.Manager().dict()
    mp.spawn(_worker, args=(free_port(), results), nprocs=WORLD, join=True)
    for rank in range(WORLD):
        r = results[rank]
        print(
            f"rank {rank}: loss {r['loss']:.6f} vs 1-rank {r['ref_loss']:.6f}; worst relative grad diff "
            f"{r['worst']:.2e} ({r['worst_name']}) over {r['count']} trainable tensors"
        )
        assert r["loss"] == pytest.approx(r["ref_loss"], rel=1e-5)
        assert r["worst"] < 1e-4
