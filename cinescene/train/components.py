"""What the trainer needs from the model and data packages, behind one small seam.

:func:`default_components` wires the real CineScene model
(:mod:`cinescene.models`) and the webdataset loader (:mod:`cinescene.data`);
tests hand :func:`cinescene.train.entry.run_rank` their own tiny stand-ins
with the same contracts (docs/CONTRACTS.md).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

import torch.nn as nn

from cinescene.config.schema import CineSceneConfig
from cinescene.data.ensure import check_dataset, ensure_dataset
from cinescene.data.loader import build_train_loader
from cinescene.eval.heldout import check_present
from cinescene.models import build_model
from cinescene.models.flops import SampleShape, flops_per_sample, parameter_counts, token_counts


@dataclass
class SampleFacts:
    """Per-sample cost of the model, for throughput and MFU."""

    flops_per_sample: float | None  # training FLOPs (forward + backward)
    tokens_per_sample: int | None  # extended sequence length (video + context tokens)


@dataclass
class Components:
    build_model: Callable[[CineSceneConfig], nn.Module]
    # Parameter count without allocating (decides deepspeed.zero.Init under parallel.zero_init=auto).
    count_params: Callable[[CineSceneConfig], int]
    # Every rank, before the process group forms: fail fast (one line, no peer tracebacks)
    # when the data is neither there nor to be generated.
    check_data: Callable[[CineSceneConfig], None]
    # Rank 0, before the others read: e.g. render and shard synthetic data when absent.
    prepare_data: Callable[[CineSceneConfig], None]
    # (cfg, dp_rank, dp_size, micro_batch_size, consumed_samples) -> endless micro batches for this rank.
    build_batches: Callable[[CineSceneConfig, int, int, int, int], Iterator[Mapping]]
    # (cfg, model, first batch) -> FLOPs and tokens per sample.
    sample_facts: Callable[[CineSceneConfig, nn.Module, Mapping], SampleFacts]


def _build_model(cfg: CineSceneConfig) -> nn.Module:
    return build_model(cfg.model)


def _count_params(cfg: CineSceneConfig) -> int:
    return parameter_counts(build_model(cfg.model, device="meta"))["total"]


def _sample_facts(cfg: CineSceneConfig, model: nn.Module, batch: Mapping) -> SampleFacts:
    """From the batch's actual shapes (the data may differ from model.data_shape's defaults).

    With ``data.scene_images_min`` the samples hold a uniformly drawn number of
    scene images (the model attends only real ones), so FLOPs and tokens are
    the expectation over that draw, not the padded S images' figures.
    """
    _, _, frames, height, width = batch["video"].shape
    scenes = batch.get("scene_images")
    latents = batch.get("scene_latents")
    stored = scenes.shape[1] if scenes is not None else 0
    low = cfg.data.scene_images_min if cfg.data.scene_images_min is not None and stored else stored
    vggt_trains = any(
        p.requires_grad and fnmatch.fnmatchcase(n, "scene_encoder.vggt.*")
        for n, p in model.named_parameters()
    )
    flops, tokens = [], []
    for count in range(low, stored + 1):
        shape = SampleShape(
            latent_frames=frames,
            latent_height=height,
            latent_width=width,
            scene_images=count,
            scene_height=scenes.shape[3] if scenes is not None else height,
            scene_width=scenes.shape[4] if scenes is not None else width,
            scene_latent_height=latents.shape[3] if latents is not None else height,
            scene_latent_width=latents.shape[4] if latents is not None else width,
        )
        flops.append(float(flops_per_sample(cfg.model, shape, scene_encoder_trains=vggt_trains).training))
        tokens.append(token_counts(cfg.model, shape).total)
    return SampleFacts(
        flops_per_sample=sum(flops) / len(flops), tokens_per_sample=round(sum(tokens) / len(tokens))
    )


def _check_data(cfg: CineSceneConfig) -> None:
    check_dataset(cfg.data)
    check_present(cfg)  # the eval hook's held-out shards


def _prepare_data(cfg: CineSceneConfig) -> None:
    ensure_dataset(cfg.data)


def _build_batches(
    cfg: CineSceneConfig, dp_rank: int, dp_size: int, micro_batch_size: int, consumed_samples: int
) -> Iterator[Mapping]:
    # The loader's cursor is global and world-size independent: sequence-parallel peers share a
    # data-parallel rank, hence the same batches.
    return iter(
        build_train_loader(
            cfg.data,
            cfg.model,
            rank=dp_rank,
            world_size=dp_size,
            seed=cfg.run.seed,
            micro_batch_size=micro_batch_size,
            start_sample=consumed_samples,
        )
    )


def default_components() -> Components:
    return Components(
        build_model=_build_model,
        count_params=_count_params,
        check_data=_check_data,
        prepare_data=_prepare_data,
        build_batches=_build_batches,
        sample_facts=_sample_facts,
    )
