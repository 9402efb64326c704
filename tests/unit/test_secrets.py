"""Secret masking by value: credentials never leave the process, and a masked config still loads unchanged."""

from __future__ import annotations

import subprocess
import sys

import yaml
from omegaconf import OmegaConf

from cinescene.config import load_config, to_yaml
from cinescene.config.tracking import TrackingConfig, WandbConfig
from cinescene.secrets import MASK, scrub, secret_values
from cinescene.train.tracking import Tracker
from tests.fixtures.wandb_files import wait_until_written

SMOKE = "configs/experiments/smoke.yaml"
KEY = "sk-live-0123456789abcdef"


def test_credentials_by_environment_name():
    env = {
        "WANDB_API_KEY": "w" * 20,
        "HF_TOKEN": "h" * 20,
        "AWS_SECRET_ACCESS_KEY": "a" * 20,
        "TOKENIZERS_PARALLELISM": "false-but-long",
        "KEYBOARD_LAYOUT": "us-international",
        "SHORT_TOKEN": "abc",
    }
    assert set(secret_values(env)) == {"w" * 20, "h" * 20, "a" * 20}


def test_model_fields_named_like_tokens_are_never_masked(repo_root, monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", KEY)
    _, raw = load_config(repo_root / SMOKE)
    tree = OmegaConf.to_container(raw)
    assert scrub(tree) == tree  # nothing in the config holds a secret: nothing changes
    assert (
        tree["model"]["scene"]["vggt"]["num_register_tokens"] == 4 and tree["model"]["scene"]["vggt_tokens"]
    )


def test_credential_keys_and_their_values_elsewhere_are_masked():
    tree = {
        "service": {"api_key": "abcdefgh1234", "password": "pw", "url": "https://x/?k=abcdefgh1234"},
        "model": {"num_register_tokens": 4, "vggt_tokens": True, "null_token": "learned"},
    }
    clean = scrub(tree, secret_values({}, tree))
    assert clean["service"] == {"api_key": MASK, "password": MASK, "url": f"https://x/?k={MASK}"}
    assert clean["model"] == tree["model"]


def test_a_masked_config_loads_again_unchanged_but_for_the_secret(repo_root, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", KEY)
    overrides = ["tracking.wandb.notes=${oc.env:WANDB_API_KEY}", "tracking.wandb.tags=[smoke]"]
    cfg, raw = load_config(repo_root / SMOKE, overrides)
    saved = tmp_path / "config.yaml"
    saved.write_text(to_yaml(OmegaConf.create(scrub(OmegaConf.to_container(raw)))))
    assert KEY not in saved.read_text()
    again, _ = load_config(saved)
    assert again.tracking.wandb.notes == MASK
    again.tracking.wandb.notes = cfg.tracking.wandb.notes
    again.run.config_path = cfg.run.config_path
    assert again == cfg


def test_print_config_masks_secrets(repo_root):
    env = {"WANDB_API_KEY": KEY, "PATH": "/usr/bin:/bin"}
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "cinescene",
            "train",
            SMOKE,
            "--print-config",
            "tracking.wandb.notes=${oc.env:WANDB_API_KEY}",
        ],
        cwd=repo_root,
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert out.returncode == 0, out.stderr
    assert KEY not in out.stdout and yaml.safe_load(out.stdout)["tracking"]["wandb"]["notes"] == MASK


def test_every_wandb_argument_is_masked(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", KEY)
    cfg = TrackingConfig(
        wandb=WandbConfig(
            mode="offline",
            project="t",
            notes=f"key {KEY}",
            tags=["a", KEY],
            group=f"g-{KEY}",
            name=f"n-{KEY}",
        )
    )
    tracker = Tracker(
        cfg, tmp_path, is_main=True, run_name="r", config={"train": {"lr": 0.1}}, run_id=None, resume_step=0
    )
    tracker.log(1, {"loss": 1.0})
    tracker.close()
    wait_until_written(tmp_path)
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert files and all(KEY.encode() not in p.read_bytes() for p in files)
