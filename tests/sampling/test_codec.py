"""The Wan codec at inference (tiny random Wan VAE and umT5 saved locally); wan eval shards with pixels."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cinescene.config.model import ModelConfig
from cinescene.data.manifest import load_manifest
from cinescene.data.prepare import prepare
from cinescene.sampling.codec import WanCodec, build_codec
from cinescene.sampling.inputs import ShardSamples
from cinescene.sampling.spec import DataSpec
from tests.data.conftest import FRAMES, SCENE_IMAGES, SIZE, make_clips
from tests.fixtures.pretrained import TEXT_DIM


@pytest.mark.slow
def test_wan_codec_matches_the_shards_and_decodes_every_frame(tiny_wan, tmp_path):
    clips = make_clips(tmp_path / "clips", clips=1)
    out = tmp_path / "shards"
    prepare(
        clips,
        out,
        encoder="wan",
        vae=str(tiny_wan),
        text_encoder=str(tiny_wan),
        rank=0,
        world=1,
        dtype="float32",
        show_progress=False,
        keep_pixels=True,
    )
    manifest = load_manifest(out)
    assert {"video.npy", "video_bg.npy", "latents.npy"} <= set(manifest.fields)  # pixels kept for eval
    spec = DataSpec.from_manifest(manifest, SCENE_IMAGES, 4)
    model_cfg = ModelConfig(in_dim=16, out_dim=16, text_dim=TEXT_DIM, text_len=512)
    codec = build_codec(spec, model_cfg)  # the paths the manifest recorded
    assert isinstance(codec, WanCodec)
    sample = ShardSamples(out, spec, model_cfg).read(0)
    assert np.allclose(codec.encode_text(sample.prompt), sample.text, atol=1e-6)  # the data's own encoder
    latents = torch.from_numpy(np.load(_field(out, manifest, "latents.npy")))
    frames = codec.decode(latents)
    assert frames.shape == (FRAMES, *SIZE, 3) and frames.dtype == np.uint8
    assert spec.latent_shape(16) == tuple(latents.shape) and spec.generated_frames == FRAMES
    assert codec.encode_scene(sample.scene).shape == (SCENE_IMAGES, 16, SIZE[0] // 8, SIZE[1] // 8)
    assert sample.video.shape == (FRAMES, *SIZE, 3) and sample.video_bg.shape == sample.video.shape


def _field(root, manifest, name):
    """One sample's stored array as a file-like object (through the loader's reader)."""
    import io

    from cinescene.data.shards import ShardReader

    ref = manifest.samples()[0]
    return io.BytesIO(ShardReader().read(ref.shard, ref.key, ref.offset, ref.length, ref.crc)[name])
