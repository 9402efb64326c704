"""Scene anchoring end to end: real synthetic shards, the real loader and objective, DeepSpeed, one rank."""

from __future__ import annotations

import dataclasses

import pytest

from cinescene.config import load_config
from cinescene.distributed.env import standalone
from cinescene.train.components import default_components
from cinescene.train.entry import run_rank

from .conftest import REPO


@pytest.mark.slow
def test_training_steps_move_the_pose_embedding(tmp_path):
    """The loader's scene_cameras reach the model: the zero-initialised embedding trains.

    ZeRO-2 keeps whole parameters on the rank, so the model can be read after
    the run. The first step gives the zero-initialised output head its first
    values; from the second on, gradient reaches the context tokens.
    """
    cfg, _ = load_config(
        REPO / "configs/experiments/smoke.yaml",
        [
            f"run.dir={tmp_path / 'run'}",
            f"data.train_shards={tmp_path / 'shards'}",
            f"data.synth.out={tmp_path / 'clips'}",
            "data.synth.clips=4",
            "data.synth.workers=1",
            "data.scene_images_min=2",
            "launch.nproc=1",
            "parallel.zero_stage=2",
            "train.max_steps=3",
            "train.micro_batch_size=2",
            "checkpoint.every_steps=0",
            "checkpoint.save_final=false",
            "tracking.wandb.mode=disabled",
            "model.scene.pose_embedding=true",
        ],
    )
    built = []

    def build_model(config):
        built.append(default_components().build_model(config))
        return built[0]

    assert (
        run_rank(cfg, standalone(1), dataclasses.replace(default_components(), build_model=build_model)) == 0
    )
    embedding = built[0].scene_encoder.pose_embedding
    assert embedding.weight.requires_grad
    assert embedding.weight.abs().max() > 0 and embedding.bias.abs().max() > 0
