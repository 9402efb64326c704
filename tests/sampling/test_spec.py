"""What a model generates, from its training manifest,
and the refusal of evaluation data that does not fit."""

from __future__ import annotations

from pathlib import Path

import pytest

from cinescene.config import load_config
from cinescene.data.manifest import Manifest
from cinescene.errors import CineSceneError
from cinescene.sampling.spec import DataSpec, check_eval_data

REPO = Path(__file__).resolve().parents[2]


def _manifest(encoder=None, frames=17, size=(64, 64), scene_images=6, scene_size=(64, 64)):
    return Manifest(
        Path("/shards"),
        {
            "encoder": encoder or {"name": "none"},
            "frames": frames,
            "size": list(size),
            "scene_images": scene_images,
            "scene_size": list(scene_size),
        },
    )


def test_spec_of_the_pixel_proxy_and_of_wan():
    proxy = DataSpec.from_manifest(_manifest(), scene_images=6, pixel_pool=4)
    assert proxy.latent_shape(3) == (3, 5, 16, 16) and proxy.generated_frames == 5
    assert proxy.frame_stride == 4 and proxy.camera_stride == 1
    wan = DataSpec.from_manifest(
        _manifest({"name": "wan", "vae_id": "a"}, 81, (480, 832), 20, (480, 832)), 20, 4
    )
    assert wan.latent_shape(16) == (16, 21, 60, 104) and wan.generated_frames == 81
    assert wan.frame_stride == 1 and wan.camera_stride == 4


def test_spec_from_the_config_when_the_manifest_is_elsewhere():
    cfg, _ = load_config(REPO / "configs/experiments/smoke.yaml", ["data.train_shards=/nowhere"])
    spec = DataSpec.from_config(cfg)
    assert (spec.encoder_name, spec.frames, tuple(spec.size), spec.scene_images) == ("none", 17, (64, 64), 6)


@pytest.mark.parametrize(
    "other, message",
    [
        (dict(size=(32, 32)), "17 frames at 32x32; the model was trained on 17 frames at 64x64"),
        (dict(frames=9), "9 frames at 64x64"),
        (dict(encoder={"name": "wan", "vae_id": "b"}), "was encoded with"),
        (dict(scene_size=(48, 48)), "scene images of 48x48"),
        (dict(scene_images=3), "holds 3 scene images per sample; the model uses 6"),
    ],
)
def test_evaluation_data_of_another_shape_or_encoder_is_refused(other, message):
    spec = DataSpec.from_manifest(_manifest(), 6, 4)
    check_eval_data(spec, _manifest())  # the same data fits
    with pytest.raises(CineSceneError, match=message):
        check_eval_data(spec, _manifest(**other))


def test_another_wan_encoder_is_refused_by_its_content_id():
    mine = DataSpec.from_manifest(_manifest({"name": "wan", "vae_id": "a", "text_encoder_id": "t"}), 6, 4)
    check_eval_data(
        mine, _manifest({"name": "wan", "vae_id": "a", "text_encoder_id": "t", "vae": "/elsewhere"})
    )
    with pytest.raises(CineSceneError, match="encoded with"):
        check_eval_data(mine, _manifest({"name": "wan", "vae_id": "b", "text_encoder_id": "t"}))
