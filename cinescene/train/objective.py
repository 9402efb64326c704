"""One micro batch -> the flow-matching loss: condition dropout, noising, the model call.

Randomness comes from one generator per sample, seeded by (run seed, step,
sample key), not from the global RNG. Why: the draws of a step depend neither
on what ran before (a resumed run redraws exactly the same noise, even if
something else consumed global random numbers) nor on which rank or micro
batch a sample landed in (a run resumed at another world size, or with
another micro batch / accumulation split of the same global batch, trains on
the same noisy samples), and the ranks of a sequence-parallel group draw the
same noise for the sample they hold together. Batches without the contract's
``key`` fall back to (data-parallel rank, micro index, position) keys.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence

import torch

from cinescene.config.model import ModelConfig
from cinescene.config.train import TrainConfig
from cinescene.models.flow_matching import FlowMatching

# Batch keys the model reads (docs/CONTRACTS.md); the rest (prompt, key, intrinsics, ...) stay on the host.
TENSOR_KEYS = ("video", "text", "cameras", "scene_images", "scene_latents", "scene_cameras")


def sample_generator(seed: int, step: int, key: str) -> torch.Generator:
    digest = hashlib.blake2b(f"{seed}:{step}:{key}".encode(), digest_size=8).digest()
    generator = torch.Generator()
    generator.manual_seed(int.from_bytes(digest, "little") & (2**63 - 1))
    return generator


def sample_generators(
    batch: Mapping[str, object], seed: int, step: int, dp_rank: int, micro: int
) -> list[torch.Generator]:
    """One generator per sample of ``batch`` (see the module doc)."""
    size = batch["video"].shape[0]
    keys = batch.get("key") or [f"rank{dp_rank}/micro{micro}/{i}" for i in range(size)]
    return [sample_generator(seed, step, str(key)) for key in keys]


class FlowMatchingObjective:
    def __init__(self, train: TrainConfig, model: ModelConfig):
        self.flow = FlowMatching(train.flow)
        self.text_dropout = train.text_dropout
        self.scene_dropout = train.scene_dropout
        self.uses_scene_images = model.scene.enabled and model.scene.vggt_tokens
        self.uses_scene_latents = model.scene.enabled and model.scene.pixel_context
        # Scene anchoring places the scene images' cameras relative to the trajectory's first one.
        self.uses_scene_cameras = model.scene.enabled and model.scene.pose_embedding
        self.uses_cameras = model.camera.enabled or self.uses_scene_cameras

    def model_inputs(self, batch: Mapping[str, object], device: torch.device) -> dict[str, torch.Tensor]:
        wanted = {
            "video": True,
            "text": True,
            "cameras": self.uses_cameras,
            "scene_images": self.uses_scene_images,
            "scene_latents": self.uses_scene_latents,
            "scene_cameras": self.uses_scene_cameras,
        }
        inputs = {}
        for key in TENSOR_KEYS:
            if wanted[key]:
                if key not in batch:
                    raise KeyError(
                        f"the batch lacks '{key}', which the model config needs (see docs/CONTRACTS.md)"
                    )
                inputs[key] = batch[key].to(device, non_blocking=True)
        if (self.uses_scene_images or self.uses_scene_latents) and "scene_counts" in batch:
            # Stays on the host: the model reads the counts there to build its token packing.
            inputs["scene_counts"] = batch["scene_counts"]
        return inputs

    def __call__(
        self,
        model: torch.nn.Module,
        batch: Mapping[str, object],
        generators: Sequence[torch.Generator],
        device: torch.device,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        inputs = self.model_inputs(batch, device)
        x0 = inputs.pop("video")
        text = inputs.pop("text")
        draws = torch.cat([torch.rand(2, generator=g)[None] for g in generators])  # (B, 2)
        drop_text = draws[:, 0] < self.text_dropout
        drop_scene = draws[:, 1] < self.scene_dropout
        noised = self.flow.noise(x0, generators)
        if drop_text.any():
            # CFG's unconditional branch: an all-zero prompt embedding.
            text = torch.where(drop_text.to(device).view(-1, 1, 1), torch.zeros_like(text), text)
        prediction = model(noised.x_t, noised.timestep, text, drop_scene=drop_scene.to(device), **inputs)
        loss = self.flow.loss(prediction, noised)
        stats = {
            "text_dropped": float(drop_text.float().mean()),
            "scene_dropped": float(drop_scene.float().mean()),
            "timestep_mean": float(noised.timestep.mean()),
        }
        return loss, stats
