"""Tiny stand-ins for the model and the loader, honouring docs/CONTRACTS.md, for fast trainer tests.

``TinyVideoModel`` has the CineSceneModel forward signature and Wan-like
parameter names (embeddings, norms, modulation); ``MemoryBatches`` yields the
batch dicts of the contract from a deterministic in-memory dataset, split by
data-parallel rank, starting at a global-consumed-samples cursor.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import torch
import torch.nn as nn

from cinescene.config.schema import CineSceneConfig
from cinescene.train.components import Components, SampleFacts

CHANNELS, FRAMES, SIZE, TEXT_LEN, TEXT_DIM, SCENES = 3, 2, 4, 4, 8, 2


class TinyVideoModel(nn.Module):
    def __init__(self, width: int = 16):
        super().__init__()
        self.patch_embedding = nn.Linear(CHANNELS, width)
        self.text_embedding = nn.Linear(TEXT_DIM, width)
        self.time_embedding = nn.Linear(1, width)
        self.modulation = nn.Parameter(torch.zeros(1, width))
        self.norm = nn.LayerNorm(width)
        self.ffn = nn.Sequential(
            nn.Linear(width, 2 * width), nn.GELU(approximate="tanh"), nn.Linear(2 * width, width)
        )
        self.head = nn.Linear(width, CHANNELS)

    def forward(
        self,
        x,
        timestep,
        text,
        *,
        cameras=None,
        scene_images=None,
        scene_latents=None,
        scene_tokens=None,
        drop_scene=None,
    ):
        dtype = self.head.weight.dtype  # like the real model: matmuls in the parameter dtype (bf16 runs)
        b, c, t, h, w = x.shape
        tokens = self.patch_embedding(x.to(dtype).permute(0, 2, 3, 4, 1).reshape(b, t * h * w, c))
        cond = self.text_embedding(text.to(dtype)).mean(dim=1) + self.time_embedding(
            (timestep.view(b, 1) / 1000.0).to(dtype)
        )
        if scene_images is not None:
            scene = scene_images.mean(dim=(1, 2, 3, 4)).view(b, 1).to(dtype)
            if drop_scene is not None:
                scene = torch.where(drop_scene.view(b, 1), torch.zeros_like(scene), scene)
            cond = cond + scene
        hidden = self.norm(tokens + (cond + self.modulation)[:, None])
        hidden = hidden + self.ffn(hidden)
        out = self.head(hidden)
        return out.reshape(b, t, h, w, c).permute(0, 4, 1, 2, 3).float()


def make_sample(index: int) -> dict[str, torch.Tensor]:
    """Sample ``index`` of a small dataset of smooth patterns (learnable: x0 is predictable from the text)."""
    g = torch.Generator().manual_seed(1000 + index)
    code = torch.randn(CHANNELS, generator=g)
    grid = torch.linspace(-1, 1, SIZE)
    video = (
        torch.tanh(code.view(CHANNELS, 1, 1, 1) * (grid.view(1, 1, SIZE, 1) + grid.view(1, 1, 1, SIZE)))
        .expand(CHANNELS, FRAMES, SIZE, SIZE)
        .contiguous()
    )
    text = torch.zeros(TEXT_LEN, TEXT_DIM)
    text[:, :CHANNELS] = code
    cameras = torch.eye(4).repeat(FRAMES, 1, 1)
    return {
        "video": video,
        "text": text,
        "cameras": cameras,
        "scene_images": torch.rand(SCENES, 3, 8, 8, generator=g),
        "scene_latents": torch.rand(SCENES, CHANNELS, SIZE, SIZE, generator=g),
    }


SKIPPED_EVERY, SKIPPED_AT = 7, 3  # global positions 3, 10, 17, ... play samples the loader found unreadable


def skipped_before(position: int) -> int:
    """How many of the global positions 0 .. position-1 play unreadable samples."""
    return sum(1 for g in range(position) if g % SKIPPED_EVERY == SKIPPED_AT)


def memory_batches(
    dataset_size: int, dp_rank: int, dp_size: int, micro: int, consumed: int
) -> Iterator[dict[str, object]]:
    """Endless micro batches: global sample i goes to rank i % dp_size, starting after ``consumed``.

    Each batch's ``skipped_samples`` counts its positions that play unreadable samples, as the real
    loader's would. ``STANDIN_BATCH_DELAY_S`` slows every batch down, so a test can signal a run mid-way.
    """
    delay = float(os.environ.get("STANDIN_BATCH_DELAY_S", "0"))
    index = consumed + dp_rank
    while True:
        time.sleep(delay)
        samples, keys, skipped = [], [], 0
        for _ in range(micro):
            samples.append(make_sample(index % dataset_size))
            keys.append(f"sample{index % dataset_size:06d}")
            skipped += index % SKIPPED_EVERY == SKIPPED_AT
            index += dp_size
        batch = {k: torch.stack([s[k] for s in samples]) for k in samples[0]}
        batch["prompt"] = ["p"] * micro
        batch["key"] = keys
        batch["skipped_samples"] = skipped
        yield batch


def standin_components(
    dataset_size: int = 16, model_factory=None, prepared: list | None = None
) -> Components:
    def prepare(cfg: CineSceneConfig) -> None:
        if prepared is not None:
            prepared.append(cfg.run.dir)

    return Components(
        # model.dim picks the width, so a test can make "another model config" with one override.
        build_model=lambda cfg: (model_factory or TinyVideoModel)(cfg.model.dim // 4),
        count_params=lambda cfg: 1000,
        check_data=lambda cfg: None,
        prepare_data=prepare,
        build_batches=lambda cfg, r, n, micro, consumed: memory_batches(dataset_size, r, n, micro, consumed),
        sample_facts=lambda cfg, model, batch: SampleFacts(flops_per_sample=1e6, tokens_per_sample=32),
    )


def tiny_config(run_dir, *overrides: str) -> CineSceneConfig:
    """A config for the stand-ins: fp32, ZeRO-3, W&B offline, fast everything."""
    from cinescene.config import load_config

    cfg, _ = load_config(
        None,
        [
            "data.train_shards=unused",
            f"run.dir={run_dir}",
            "run.deterministic=true",
            "train.max_steps=6",
            "train.micro_batch_size=2",
            "train.lr=0.01",
            "train.precision=fp32",
            "train.warmup_steps=0",
            "train.text_dropout=0.1",
            "parallel.param_persistence_threshold=0",
            "checkpoint.every_steps=3",
            "tracking.wandb.mode=offline",
            *overrides,
        ],
    )
    return cfg
