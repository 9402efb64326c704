"""FLOPs per sample against torch's FLOP counter, sequence lengths, and `cinescene model info`."""

from __future__ import annotations

import json
import subprocess
import time

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from cinescene.config import load_config
from cinescene.models import build_model
from cinescene.models.flops import SampleShape, flops_per_sample, model_info, token_counts

from .helpers import REPO, tiny_batch, tiny_config


@pytest.mark.parametrize(
    "changes",
    [
        dict(attention__mask="full"),
        dict(attention__mask="context_readonly"),
        dict(scene__pixel_context=True, scene__timestep="shared"),
        dict(scene__enabled=False, camera__projector=False),
    ],
)
def test_analytic_forward_flops_equal_the_counted_matmuls(changes):
    # The "math" attention backend is explicit matmuls, which torch's counter sees (CPU SDPA it does not).
    cfg = tiny_config(attention__backend="math", **changes)
    model = build_model(cfg)
    batch = tiny_batch(batch=1, scene_images=6)
    kwargs = dict(cameras=batch["cameras"])
    if cfg.scene.enabled:
        kwargs.update(scene_images=batch["scene_images"])
        if cfg.scene.pixel_context:
            kwargs.update(scene_latents=batch["scene_latents"])
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(batch["x"], batch["timestep"], batch["text"], **kwargs)
    shape = SampleShape(
        latent_frames=5,
        latent_height=16,
        latent_width=16,
        scene_images=6,
        scene_height=64,
        scene_width=64,
        scene_latent_height=16,
        scene_latent_width=16,
    )
    batch_keys = {
        "video": batch["x"],
        "scene_images": batch["scene_images"],
        "scene_latents": batch["scene_latents"],
    }
    assert SampleShape.from_batch(batch_keys) == shape
    analytic = flops_per_sample(cfg, shape)
    counted = counter.get_total_flops()
    print(
        f"{changes}: analytic {analytic.dit_forward + analytic.scene_encoder_forward:,} counted {counted:,}"
    )
    # Exact but for the 4x4 camera matrix products of the relative-pose input (< 1k FLOPs, not counted).
    assert 0 <= counted - (analytic.dit_forward + analytic.scene_encoder_forward) < 1000
    assert analytic.training == 3 * analytic.dit_forward + analytic.scene_encoder_forward


def test_readonly_mask_saves_the_context_to_video_block():
    cfg = tiny_config()
    shape = SampleShape.from_config(load_config(REPO / "configs/experiments/smoke.yaml")[0])
    full = flops_per_sample(cfg, shape)
    cfg.attention.mask = "context_readonly"
    readonly = flops_per_sample(cfg, shape)
    tokens = token_counts(cfg, shape)
    saved = cfg.num_layers * 4 * tokens.context * tokens.video * cfg.dim
    assert full.dit_forward - readonly.dit_forward == saved


def test_real_sizes():
    cfg, _ = load_config(REPO / "configs/model/wan1.3b.yaml", ["data.train_shards=x"])
    tokens = token_counts(cfg.model, SampleShape.from_config(cfg))
    assert (tokens.video, tokens.vggt_context, tokens.total) == (32_760, 31_200, 63_960)
    info = model_info(cfg)
    assert info["dit_params"] == 1_418_996_800 and info["seq_len"] == 63_960
    # Attention over the 64k-token sequence dominates a training step.
    assert info["attention_forward_flops"] > 0.75 * info["dit_forward_flops"]


@pytest.mark.slow  # a subprocess importing torch
def test_model_info_cli_json(cinescene_cmd, cli_env):
    start = time.perf_counter()
    proc = subprocess.run(
        cinescene_cmd + ["model", "info", "configs/model/wan14b.yaml", "--json"],
        cwd=REPO,
        env=cli_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    seconds = time.perf_counter() - start
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    print(f"model info wan14b: {seconds:.1f}s")
    assert info["dit_params"] == 14_288_491_584
    assert {"dit_params", "trainable_params", "seq_len", "flops_per_sample"} <= set(info)
    assert info["trainable_params"] == info["total_params"] - info["scene_encoder_params"]


@pytest.mark.slow
def test_model_info_cli_text_and_bad_config(cinescene_cmd, cli_env):
    proc = subprocess.run(
        cinescene_cmd + ["model", "info", "configs/experiments/smoke.yaml"],
        cwd=REPO,
        env=cli_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "704 = 320 video + 384 context" in proc.stdout
    bad = subprocess.run(
        cinescene_cmd + ["model", "info", "configs/model/tiny.yaml", "model.scene.pooling=max"],
        cwd=REPO,
        env=cli_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 2
    assert "model.scene.pooling" in bad.stderr and "Traceback" not in bad.stderr
