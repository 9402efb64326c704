"""Weights named by Hugging Face repo id: one resolver (cinescene.hub) behind all five options.

Each option is given a repo id whose files sit in a Hugging Face cache laid out as huggingface_hub
downloads it (tests/fixtures/pretrained.py: add_to_hub_cache); nothing is downloaded.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file

from cinescene.config.eval import ClipConfig
from cinescene.data.encoders import wan_model_dirs
from cinescene.errors import CineSceneError
from cinescene.eval.metrics import clip
from cinescene.hub import WeightsNotFound, resolve_weights
from cinescene.models import build_model, wan_to_diffusers
from cinescene.models.vggt import VGGT, load_vggt_weights
from cinescene.train.preflight import check_initial_weights
from tests.fixtures.checkpoint import REPO, cli_env
from tests.fixtures.pretrained import add_to_hub_cache
from tests.models.helpers import randomize, tiny_config


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """An empty Hugging Face cache in effect for this process (and, through HF_HUB_CACHE, its children)."""
    from huggingface_hub import constants

    cache = tmp_path / "hf_cache"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    return cache


def test_a_repo_id_resolves_to_its_snapshot_and_a_local_path_wins(hub_cache, tmp_path, monkeypatch):
    files = tmp_path / "files"
    (files / "sub").mkdir(parents=True)
    (files / "config.json").write_text("{}")
    (files / "sub" / "weights.bin").write_bytes(b"1234")
    snapshot = add_to_hub_cache(hub_cache, "org/model-1.0", files, revision="a" * 40)
    resolved = resolve_weights("org/model-1.0", "model.pretrained")
    assert resolved == snapshot and (resolved / "sub" / "weights.bin").read_bytes() == b"1234"
    # A directory that exists under the same name is what the user means: it wins.
    monkeypatch.chdir(tmp_path)
    (tmp_path / "org" / "model-1.0").mkdir(parents=True)
    assert resolve_weights("org/model-1.0", "model.pretrained").resolve() == tmp_path / "org" / "model-1.0"
    # What cannot be a repo id comes back unchanged: the caller names the missing path.
    for value in ("weights/a/b.pt", "/abs/missing.pt", "no_slash", "org/bad--name"):
        assert str(resolve_weights(value, "model.pretrained")) == value


def test_an_absent_repo_id_is_one_line_naming_it_and_the_cache(hub_cache):
    with pytest.raises(WeightsNotFound) as info:
        resolve_weights("facebook/VGGT-1B", "model.scene.vggt.weights")
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("model.scene.vggt.weights=facebook/VGGT-1B: ")
    assert f"the Hugging Face repo facebook/VGGT-1B is not in the local cache {hub_cache}" in message


def test_a_damaged_cache_entry_is_one_line(hub_cache):
    refs = hub_cache / "models--org--name" / "refs"
    refs.mkdir(parents=True)
    (refs / "main").write_bytes(b"\xff\xfe not a revision\n")
    with pytest.raises(WeightsNotFound) as info:
        resolve_weights("org/name", "eval.clip.weights")
    message = str(info.value)
    assert "\n" not in message and message.startswith(
        "eval.clip.weights=org/name: the local Hugging Face cache"
    )
    assert "unreadable (UnicodeDecodeError" in message


def test_model_pretrained_by_repo_id_in_diffusers_layout(hub_cache, tmp_path):
    """A diffusers pipeline repository: the DiT is read from its transformer/ folder."""
    base = build_model(tiny_config(scene__enabled=False, camera__enabled=False))
    randomize(base, seed=3)
    state = {k: v.contiguous() for k, v in base.state_dict().items()}
    files = tmp_path / "repo"
    (files / "transformer").mkdir(parents=True)
    (files / "vae").mkdir()
    save_file(wan_to_diffusers(state), files / "transformer" / "diffusion_pytorch_model.safetensors")
    (files / "transformer" / "config.json").write_text("{}")
    save_file({"unrelated": torch.zeros(1)}, files / "vae" / "diffusion_pytorch_model.safetensors")
    add_to_hub_cache(hub_cache, "Wan-AI/Wan2.1-T2V-tiny-Diffusers", files)

    cfg = tiny_config(pretrained="Wan-AI/Wan2.1-T2V-tiny-Diffusers", init="pretrained", scene__enabled=False)
    check_initial_weights(cfg)  # the weight rule sees the repo as present
    model = build_model(cfg)
    own = model.state_dict()
    assert all(torch.equal(own[k], v) for k, v in state.items())

    cfg.pretrained = "Wan-AI/Wan2.1-T2V-14B"
    with pytest.raises(
        WeightsNotFound, match=r"^model\.pretrained=Wan-AI/Wan2\.1-T2V-14B: .*not in the local"
    ):
        check_initial_weights(cfg)
    with pytest.raises(CineSceneError, match="Wan-AI/Wan2.1-T2V-14B"):
        build_model(cfg)


def test_vggt_weights_by_repo_id_from_its_model_pt(hub_cache, tmp_path):
    """facebook/VGGT-1B ships model.pt: a repo directory holding one pickle loads it."""
    cfg = tiny_config().scene.vggt
    source = VGGT(cfg)
    randomize(source, seed=5)
    files = tmp_path / "repo"
    files.mkdir()
    torch.save(dict(source.state_dict()), files / "model.pt")
    (files / "config.json").write_text("{}")
    add_to_hub_cache(hub_cache, "facebook/VGGT-tiny", files)
    model = VGGT(cfg)
    report = load_vggt_weights(model, "facebook/VGGT-tiny")
    assert report.ok and all(torch.equal(v, source.state_dict()[k]) for k, v in model.state_dict().items())


@pytest.mark.slow  # builds the tiny Wan models
def test_wan_encoders_by_repo_id(hub_cache, tiny_wan):
    """--vae / --text-encoder / --tokenizer name the diffusers repo; its subfolders are used."""
    snapshot = add_to_hub_cache(hub_cache, "Wan-AI/Wan2.1-T2V-tiny-Diffusers", tiny_wan)
    vae, text, tokenizer = wan_model_dirs(
        "Wan-AI/Wan2.1-T2V-tiny-Diffusers", "Wan-AI/Wan2.1-T2V-tiny-Diffusers"
    )
    assert (vae, text, tokenizer) == (snapshot / "vae", snapshot / "text_encoder", snapshot / "tokenizer")
    with pytest.raises(WeightsNotFound, match=r"^--vae=Wan-AI/absent: .*not in the local cache"):
        wan_model_dirs("Wan-AI/absent", "Wan-AI/Wan2.1-T2V-tiny-Diffusers")


def test_clip_weights_by_repo_id(hub_cache, tiny_clip):
    add_to_hub_cache(hub_cache, "openai/clip-tiny", tiny_clip)
    scorer = clip.load_clip(ClipConfig(weights="openai/clip-tiny"))
    frames = torch.randint(0, 256, (2, 32, 32, 3), dtype=torch.uint8).numpy()
    assert clip.clip_v(scorer, frames, frames) == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(clip.ClipUnavailable) as info:
        clip.load_clip(ClipConfig(weights="openai/clip-vit-large-patch14"))
    message = str(info.value)
    assert "\n" not in message and str(hub_cache) in message and message.endswith("reported as absent")


@pytest.mark.slow
def test_data_prepare_names_the_wan_models_by_repo_id(hub_cache, tiny_wan, tmp_path):
    """The command line: `data prepare --encoder wan` with repo ids, and the one-line error without them."""
    from tests.data.conftest import make_clips

    add_to_hub_cache(hub_cache, "Wan-AI/Wan2.1-T2V-tiny-Diffusers", tiny_wan)
    clips = make_clips(tmp_path / "clips", clips=1)
    env = dict(cli_env(), HF_HUB_CACHE=str(hub_cache))

    def prepare(repo, out):
        args = ["data", "prepare", "--src", clips, "--out", out, "--encoder", "wan"]
        return subprocess.run(
            [sys.executable, "-m", "cinescene", *map(str, args), "--vae", repo, "--text-encoder", repo],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )

    done = prepare("Wan-AI/Wan2.1-T2V-tiny-Diffusers", tmp_path / "shards")
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "shards" / "manifest.json").is_file()
    missing = prepare("Wan-AI/Wan2.1-T2V-1.3B-Diffusers", tmp_path / "none")
    assert missing.returncode == 1
    assert missing.stderr.strip() == (
        "cinescene data: error: --vae=Wan-AI/Wan2.1-T2V-1.3B-Diffusers: no such path, and the "
        f"Hugging Face repo Wan-AI/Wan2.1-T2V-1.3B-Diffusers is not in the local cache {hub_cache} "
        "(nothing is downloaded: run `hf download Wan-AI/Wan2.1-T2V-1.3B-Diffusers` where there is network, "
        "with HF_HUB_CACHE or HF_HOME pointing at a cache this machine sees, or give a local path)"
    )
