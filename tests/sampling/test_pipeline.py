"""The generation pipeline end to end with an oracle
velocity: noise -> sampler -> codec -> the right frames."""

from __future__ import annotations

import numpy as np
import torch

from cinescene.config.model import ModelConfig
from cinescene.data.proxy import video_proxy
from cinescene.data.synth import render_synthetic_clip
from cinescene.eval.metrics import pixels
from cinescene.sampling.codec import PixelProxyCodec
from cinescene.sampling.pipeline import Settings, VideoGenerator, noise_generator
from cinescene.sampling.spec import DataSpec

SPEC = DataSpec(
    encoder={"name": "none"},
    frames=17,
    size=(64, 64),
    scene_images=6,
    scene_size=(64, 64),
    pixel_pool=4,
    source="test",
)


class OracleModel(torch.nn.Module):
    """Predicts the exact flow velocity (x_t - x0) / sigma towards known latents x0."""

    def __init__(self, target: torch.Tensor):
        super().__init__()
        self.cfg = ModelConfig(in_dim=3, out_dim=3)
        self.cfg.scene.enabled = False
        self.target = target
        self.anchor = torch.nn.Parameter(torch.zeros(1))
        self.calls = []

    def forward(self, x, timestep, text, cameras=None, **_):
        self.calls.append((float(timestep[0]), tuple(text.shape), tuple(cameras.shape)))
        sigma = timestep.view(-1, 1, 1, 1, 1) / 1000.0
        return (x - self.target) / sigma


def test_an_exact_velocity_decodes_to_the_ground_truth_frames():
    clip = render_synthetic_clip(0, 0, 17, (64, 64), 1)
    target = torch.from_numpy(video_proxy(clip.video, 4))[None]  # (1, 3, 5, 16, 16)
    model = OracleModel(target)
    codec = PixelProxyCodec(SPEC, text_dim=64, text_len=32)
    generator = VideoGenerator(model, SPEC, codec, "cpu")
    steps = []
    frames = generator.video(
        codec.encode_text("a dog"),
        clip.c2w[::4],
        None,
        Settings(6, 3.0, 15.0, seed=1),
        key="k",
        callback=lambda i, x: steps.append(i),
    )
    assert steps == list(range(6)) and len(model.calls) == 12  # two guidance branches per step
    assert model.calls[0][1:] == ((1, 32, 64), (1, 5, 4, 4))
    assert frames.shape == (5, 64, 64, 3) and frames.dtype == np.uint8
    exact = codec.decode(target[0])  # the sampler lands on x0 (up to float rounding)
    assert np.abs(frames.astype(int) - exact).max() <= 1
    assert pixels.psnr(frames, clip.video[::4]).mean() > 20  # bilinear upsampling of the proxy


def test_noise_depends_on_seed_and_key_only():
    a = torch.randn(4, generator=noise_generator(3, "clip_1"))
    assert torch.equal(a, torch.randn(4, generator=noise_generator(3, "clip_1")))
    assert not torch.equal(a, torch.randn(4, generator=noise_generator(3, "clip_2")))
    assert not torch.equal(a, torch.randn(4, generator=noise_generator(4, "clip_1")))
