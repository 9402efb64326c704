"""Ulysses sequence parallelism: 2 ranks (gloo) give the
1-rank output, and gradients summed over the group."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from cinescene.errors import CineSceneError
from cinescene.models import build_model

from .helpers import randomize, tiny_batch, tiny_config

WORLD = 2


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def odd_length_batch():
    """Latent 14x18 -> 7x9 patches: (5 frames + 2 scene images) * 63 = 441 tokens, padded to 442."""
    batch = tiny_batch(batch=2, scene_images=2)
    gen = torch.Generator().manual_seed(11)
    batch["x"] = torch.randn(2, 3, 5, 14, 18, generator=gen)
    batch["scene_latents"] = torch.randn(2, 2, 3, 14, 18, generator=gen)
    return batch


def forward_backward(model, batch, counts=None):
    model.zero_grad(set_to_none=True)
    out = model(
        batch["x"],
        batch["timestep"],
        batch["text"],
        cameras=batch["cameras"],
        scene_images=batch["scene_images"],
        scene_latents=batch.get("scene_latents"),
        drop_scene=torch.tensor([False, True]),
        scene_counts=counts,
        scene_cameras=batch["scene_cameras"],
    )
    (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
    grads = {
        n: (p.grad.clone() if p.grad is not None else torch.zeros_like(p))
        for n, p in model.named_parameters()
        if p.requires_grad
    }
    return out.detach(), grads


def _worker(rank: int, port: int, mask: str, pixel_context: bool, counts, poses: bool) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(WORLD),
        LOCAL_RANK=str(rank),
    )
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        model = build_model(
            tiny_config(attention__mask=mask, scene__pixel_context=pixel_context, scene__pose_embedding=poses)
        )
        randomize(model, seed=21)
        batch = odd_length_batch()
        counts = None if counts is None else torch.tensor(counts)
        ref_out, ref_grads = forward_backward(model, batch, counts)

        model.set_sequence_parallel(dist.group.WORLD)
        lengths = []
        model.blocks[0].register_forward_pre_hook(lambda module, args: lengths.append(args[0].shape[1]))
        sp_out, sp_grads = forward_backward(model, batch, counts)
        total = 7 * 63 + (2 * 63 if pixel_context else 0)
        assert lengths == [-(-total // WORLD)]  # each rank ran the blocks on its shard only
        for grad in sp_grads.values():
            dist.all_reduce(grad)  # what ZeRO does for a sequence-parallel group: sum
        out_diff = (sp_out - ref_out).abs().max().item()
        grad_diff = max(
            ((sp_grads[n] - g).abs().max() / (g.abs().max() + 1e-8)).item() for n, g in ref_grads.items()
        )
        if rank == 0:
            print(
                f"sequence parallel x{WORLD} ({mask}, pixel_context={pixel_context}, scene counts {counts}, "
                f"pose_embedding={poses}): "
                f"max abs output diff {out_diff:.2e}, max relative grad diff {grad_diff:.2e}"
            )
        assert ref_out.abs().max() > 0.1
        assert out_diff < 1e-5
        assert grad_diff < 1e-4

        three_heads = build_model(tiny_config(dim=48, num_heads=3, scene__enabled=False))
        with pytest.raises(CineSceneError, match="divisible by 2"):
            three_heads.set_sequence_parallel(dist.group.WORLD)
        dist.barrier()
    finally:
        dist.destroy_process_group()


@pytest.mark.dist
@pytest.mark.slow
@pytest.mark.parametrize(
    "mask, pixel_context, counts, poses",
    [
        ("full", False, None, False),
        ("context_readonly", True, None, False),
        ("context_readonly", True, [1, 2], True),
    ],
)
def test_two_rank_sequence_parallel_matches_one_rank(mask, pixel_context, counts, poses):
    """With scene counts, the padding (one of the first sample's two images) sits inside the sharded sequence;
    the last case also anchors the scene to the camera (the pose embedding's gradient summed over the
    group)."""
    mp.spawn(_worker, args=(free_port(), mask, pixel_context, counts, poses), nprocs=WORLD, join=True)
