"""`data prepare --encoder wan` with tiny randomly initialised Wan VAE, umT5 and tokenizer saved locally."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
import webdataset as wds

from cinescene.data.clips import read_clip
from cinescene.data.encoders import model_id
from cinescene.data.loader import build_train_loader
from cinescene.data.manifest import load_manifest
from cinescene.data.prepare import prepare
from cinescene.data.samples import LoaderDims
from cinescene.errors import CineSceneError
from tests.fixtures.pretrained import TEXT_DIM

from .conftest import SCENE_IMAGES, data_config, make_clips


@pytest.mark.slow
def test_wan_shards_hold_normalised_latents_and_text(tiny_wan, tmp_path):
    clips = make_clips(tmp_path / "clips", clips=2)
    out = tmp_path / "wan"
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
    )
    manifest = load_manifest(out)
    fields = manifest.fields
    assert manifest.encoder == "wan" and manifest.data["encoder"]["text_len"] == 512
    assert fields["latents.npy"]["shape"] == [16, 3, 4, 4]  # 9x32x32 -> 3 latent frames of 4x4
    assert fields["scene_latents.npy"]["shape"] == [SCENE_IMAGES, 16, 4, 4]
    assert fields["text.npy"]["shape"] == [-1, TEXT_DIM]
    assert "video.npy" not in fields and "scene.npy" in fields  # scene pixels stay for VGGT
    dims = LoaderDims(text_dim=TEXT_DIM, text_len=512, channels=16)
    loader = build_train_loader(data_config(out), dims, rank=0, world_size=1, seed=0, micro_batch_size=2)
    batch = next(iter(loader))
    assert tuple(batch["video"].shape) == (2, 16, 3, 4, 4) and batch["video"].dtype == torch.float32
    assert tuple(batch["text"].shape) == (2, 512, TEXT_DIM)
    from transformers import AutoTokenizer

    tokens = len(AutoTokenizer.from_pretrained(tiny_wan / "tokenizer")(batch["prompt"][0])["input_ids"])
    real = int((batch["text"][0].abs().sum(-1) > 0).sum())
    assert real == tokens and (batch["text"][0, real:] == 0).all()  # the prompt's tokens, then zero padding
    assert np.isfinite(batch["video"].numpy()).all()
    from cinescene.data.inspect import contact_sheet  # latent shards get false-colour latent frames

    assert contact_sheet(out, tmp_path / "sheet.png").stat().st_size > 1000
    check_values_against_the_models(tiny_wan, clips, out, batch)
    # The ids name the models' contents, so another checkpoint with this config would get another id.
    assert manifest.data["encoder"]["vae_id"] == model_id(tiny_wan / "vae") != "unknown"
    assert manifest.data["encoder"]["text_encoder_id"] == model_id(tiny_wan / "text_encoder") != "unknown"


def check_values_against_the_models(tiny_wan, clips, shards, batch):
    """Every stored value equals what the VAE / umT5 give on the frames and prompt the shard names."""
    from diffusers import AutoencoderKLWan
    from transformers import AutoTokenizer, UMT5EncoderModel

    vae = AutoencoderKLWan.from_pretrained(tiny_wan / "vae").eval()
    text_encoder = UMT5EncoderModel.from_pretrained(tiny_wan / "text_encoder").eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_wan / "tokenizer")
    mean = torch.tensor(vae.config.latents_mean).view(1, -1, 1, 1, 1)
    std = torch.tensor(vae.config.latents_std).view(1, -1, 1, 1, 1)

    def latents(frames):  # uint8 (F, H, W, 3) -> normalised posterior mean (C, T, h, w)
        x = torch.from_numpy(frames).float().permute(3, 0, 1, 2)[None] / 127.5 - 1.0
        return ((vae.encode(x).latent_dist.mode() - mean) / std)[0].numpy()

    frames = load_manifest(shards).data["frames"]
    samples = list(wds.WebDataset(sorted(str(p) for p in shards.glob("*.tar")), shardshuffle=False))
    assert len(samples) == 2
    with torch.no_grad():
        for sample in samples:
            clip = read_clip(clips / sample["__key__"])
            stored = {
                name: np.load(io.BytesIO(sample[name]))
                for name in ("latents.npy", "scene_latents.npy", "text.npy", "cameras.npy")
            }
            np.testing.assert_allclose(stored["latents.npy"], latents(clip.video[:frames]), rtol=0, atol=1e-5)
            scene = np.stack([latents(image[None])[:, 0] for image in clip.scene_images])
            np.testing.assert_allclose(stored["scene_latents.npy"], scene, rtol=0, atol=1e-5)
            ids = tokenizer(clip.prompt, return_tensors="pt")["input_ids"]  # real tokens only, no padding
            np.testing.assert_allclose(
                stored["text.npy"], text_encoder(ids).last_hidden_state[0].numpy(), rtol=0, atol=1e-5
            )
            np.testing.assert_array_equal(stored["cameras.npy"], clip.c2w[0:frames:4].astype(np.float32))
            assert len(stored["cameras.npy"]) == 3  # source frames 0, 4, 8
    # The loader hands out those embeddings, zero-padded to model.text_len.
    first = next(s for s in samples if s["__key__"] == batch["key"][0])
    embedding = torch.from_numpy(np.load(io.BytesIO(first["text.npy"])))
    assert torch.equal(batch["text"][0, : len(embedding)], embedding)
    assert not batch["text"][0, len(embedding) :].any()


def test_wan_encoder_needs_its_models(tiny_clips, tmp_path):
    with pytest.raises(CineSceneError, match="--vae"):
        prepare(tiny_clips, tmp_path / "a", encoder="wan", show_progress=False)
    with pytest.raises(CineSceneError, match="not found"):
        prepare(
            tiny_clips,
            tmp_path / "b",
            encoder="wan",
            vae=str(tmp_path / "none"),
            text_encoder=str(tmp_path / "none"),
            show_progress=False,
        )


def _checkpoint(path, seed, numel=1000):
    """A saved-model directory: a fixed config.json and random weights (safetensors)."""
    from safetensors.torch import save_file

    path.mkdir(parents=True)
    (path / "config.json").write_text('{"_class_name": "AutoencoderKLWan", "z_dim": 16}')
    save_file(
        {"weight": torch.randn(numel, generator=torch.Generator().manual_seed(seed))},
        str(path / "diffusion_pytorch_model.safetensors"),
    )
    return path


@pytest.mark.parametrize("numel", [1000, 1_000_000])  # read whole / sampled (a 4 MB file)
def test_encoder_ids_follow_the_weights_not_the_config_or_path(tmp_path, numel):
    a, b = _checkpoint(tmp_path / "a", 0, numel), _checkpoint(tmp_path / "b", 1, numel)
    assert (a / "config.json").read_bytes() == (b / "config.json").read_bytes()
    assert model_id(a) != model_id(b)
    assert model_id(_checkpoint(tmp_path / "elsewhere" / "a", 0, numel)) == model_id(a)
    (a / "config.json").write_text('{"_class_name": "AutoencoderKLWan", "z_dim": 8}')
    assert model_id(a) != model_id(tmp_path / "elsewhere" / "a")
    (tmp_path / "empty").mkdir()
    assert model_id(tmp_path / "empty") == "unknown"
