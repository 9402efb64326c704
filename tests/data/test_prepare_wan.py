"""`data prepare --encoder wan` with tiny randomly initialised Wan VAE, umT5 and tokenizer saved locally."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from cinescene.data.loader import build_train_loader
from cinescene.data.manifest import load_manifest
from cinescene.data.prepare import prepare
from cinescene.data.samples import LoaderDims
from cinescene.errors import CineSceneError

from .conftest import SCENE_IMAGES, data_config, make_clips

D_MODEL = 16
WORDS = ("a person dog horse in shirt trousers walking running jumping turning waving room courtyard meadow "
         "desert snowfield the camera orbits pans dollies trucks cranes around subject with walls floor and "
         "trees hills house degrees to left right while rising towards tilts down onto up").split()


def _tokenizer(path):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import T5TokenizerFast

    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    trainer = trainers.UnigramTrainer(vocab_size=300, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>")
    tok.train_from_iterator([" ".join(WORDS)] * 4, trainer)
    fast = T5TokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                           extra_ids=0)
    fast.save_pretrained(path)
    return len(fast)


@pytest.fixture(scope="module")
def wan_dirs(tmp_path_factory):
    from diffusers import AutoencoderKLWan
    from transformers import UMT5Config, UMT5EncoderModel

    root = tmp_path_factory.mktemp("wan")
    torch.manual_seed(0)
    AutoencoderKLWan(base_dim=8, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1).save_pretrained(root / "vae")
    vocab = _tokenizer(root / "tokenizer")
    config = UMT5Config(vocab_size=vocab, d_model=D_MODEL, d_kv=4, d_ff=32, num_layers=1, num_heads=2,
                        is_encoder_decoder=False)
    UMT5EncoderModel(config).save_pretrained(root / "text_encoder")
    return root


@pytest.mark.slow
def test_wan_shards_hold_normalised_latents_and_text(wan_dirs, tmp_path):
    clips = make_clips(tmp_path / "clips", clips=2)
    out = tmp_path / "wan"
    prepare(clips, out, encoder="wan", vae=str(wan_dirs), text_encoder=str(wan_dirs), rank=0, world=1,
            dtype="float32", show_progress=False)
    manifest = load_manifest(out)
    fields = manifest.fields
    assert manifest.encoder == "wan" and manifest.data["encoder"]["text_len"] == 512
    assert fields["latents.npy"]["shape"] == [16, 3, 4, 4]           # 9x32x32 -> 3 latent frames of 4x4
    assert fields["scene_latents.npy"]["shape"] == [SCENE_IMAGES, 16, 4, 4]
    assert fields["text.npy"]["shape"] == [-1, D_MODEL]
    assert "video.npy" not in fields and "scene.npy" in fields       # scene pixels stay for VGGT
    dims = LoaderDims(text_dim=D_MODEL, text_len=512, channels=16)
    loader = build_train_loader(data_config(out), dims, rank=0, world_size=1, seed=0, micro_batch_size=2)
    batch = next(iter(loader))
    assert tuple(batch["video"].shape) == (2, 16, 3, 4, 4) and batch["video"].dtype == torch.float32
    assert tuple(batch["text"].shape) == (2, 512, D_MODEL)
    from transformers import AutoTokenizer

    tokens = len(AutoTokenizer.from_pretrained(wan_dirs / "tokenizer")(batch["prompt"][0])["input_ids"])
    real = int((batch["text"][0].abs().sum(-1) > 0).sum())
    assert real == tokens and (batch["text"][0, real:] == 0).all()   # the prompt's tokens, then zero padding
    assert np.isfinite(batch["video"].numpy()).all()
    from cinescene.data.inspect import contact_sheet  # latent shards get false-colour latent frames

    assert contact_sheet(out, tmp_path / "sheet.png").stat().st_size > 1000


def test_wan_encoder_needs_its_models(tiny_clips, tmp_path):
    with pytest.raises(CineSceneError, match="--vae"):
        prepare(tiny_clips, tmp_path / "a", encoder="wan", show_progress=False)
    with pytest.raises(CineSceneError, match="not found"):
        prepare(tiny_clips, tmp_path / "b", encoder="wan", vae=str(tmp_path / "none"),
                text_encoder=str(tmp_path / "none"), show_progress=False)
