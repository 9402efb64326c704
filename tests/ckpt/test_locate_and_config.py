"""The read side's two lookups: any path a user gives -> a step directory or an export (one search order),
and a checkpoint's config (the one reader: data only, masked values and retired keys handled)."""

from __future__ import annotations

import json
import os

import pytest

from cinescene.ckpt import (
    checkpoint_config,
    checkpoints_dir,
    latest_step,
    latest_step_dir,
    resolve_checkpoint,
)
from cinescene.ckpt.locate import resolve_step_dir
from cinescene.config import ConfigError, load_config
from cinescene.config.checkpoint import CheckpointConfig
from cinescene.errors import CineSceneError
from cinescene.train.checkpoint import CheckpointManager

from ..conftest import REPO
from .fakes import FakeZeroEngine, rank_state, record

SMOKE = REPO / "configs/experiments/smoke.yaml"


@pytest.fixture
def run(tmp_path):
    """A run directory with checkpoints at steps 1 and 2, each saving the smoke config."""
    cfg, raw = load_config(SMOKE, [f"run.dir={tmp_path / 'run'}"])
    from omegaconf import OmegaConf

    manager = CheckpointManager(tmp_path / "run" / "checkpoints", CheckpointConfig(), rank=0, world_size=1)
    for step in (1, 2):
        manager.save(FakeZeroEngine(step=step), record(step), rank_state(step), OmegaConf.to_yaml(raw))
    return tmp_path / "run"


def test_every_spelling_of_a_checkpoint_finds_one_step_directory(run, tmp_path):
    step2, step1 = run / "checkpoints" / "step_00000002", run / "checkpoints" / "step_00000001"
    for given in (run, run / "checkpoints", run / "checkpoints" / "latest", step2):
        source = resolve_checkpoint(given)
        assert (source.path, source.kind, source.step) == (step2, "step", 2)
    assert resolve_step_dir(step1) == step1
    assert latest_step_dir(run / "checkpoints") == step2 and latest_step(run / "checkpoints") == 2
    assert latest_step_dir(tmp_path / "nowhere") is None and latest_step(run) is None
    cfg, _ = load_config(SMOKE, [f"run.dir={run}"])
    assert checkpoints_dir(cfg) == run / "checkpoints"
    cfg, _ = load_config(SMOKE, [f"run.dir={run}", f"checkpoint.dir={tmp_path / 'elsewhere'}"])
    assert checkpoints_dir(cfg) == tmp_path / "elsewhere"


def test_what_is_not_a_checkpoint_is_one_line_saying_what_it_is_not(run, tmp_path):
    with pytest.raises(CineSceneError, match="checkpoint not found"):
        resolve_checkpoint(tmp_path / "missing")
    with pytest.raises(CineSceneError, match="not a run, checkpoints, step or export directory"):
        resolve_checkpoint(tmp_path)
    (run / "checkpoints" / "latest").unlink()  # a save killed before its pointer moved
    with pytest.raises(
        CineSceneError, match="holds step directories but no `latest`.*newest is step_00000002"
    ):
        resolve_checkpoint(run / "checkpoints")
    (run / "checkpoints" / "latest").write_text("../../elsewhere\n")
    with pytest.raises(CineSceneError, match="never followed"):
        resolve_checkpoint(run)
    os.remove(run / "checkpoints" / "step_00000001" / "trainer_state.json")
    with pytest.raises(CineSceneError, match="not a complete checkpoint"):
        resolve_checkpoint(run / "checkpoints" / "step_00000001")
    export = tmp_path / "export"
    export.mkdir()
    (export / "cinescene.json").write_text(
        json.dumps({"format": "cinescene-export", "version": 1, "step": 3})
    )
    with pytest.raises(CineSceneError, match="step or ema entry is not valid"):
        resolve_checkpoint(export)
    (export / "cinescene.json").write_text(
        json.dumps({"format": "cinescene-export", "version": 1, "step": 3, "ema": False})
    )
    assert resolve_checkpoint(export).kind == "export"
    with pytest.raises(CineSceneError, match="is an export"):
        resolve_step_dir(export)


def edit_config(run, old: str, new: str) -> None:
    path = run / "checkpoints" / "step_00000002" / "config.yaml"
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))


def test_the_config_reader_takes_data_only(run, monkeypatch):
    assert checkpoint_config(run).run.dir == str(run)
    monkeypatch.setenv("CINESCENE_TEST_TOKEN", "s3cr3t-never-to-leak")
    edit_config(run, "  notes: null\n", "  notes: prefix ${oc.env:CINESCENE_TEST_TOKEN}\n")
    with pytest.raises(CineSceneError) as info:
        checkpoint_config(run)
    assert "tracking.wandb.notes holds an interpolation" in str(info.value) and "s3cr3t" not in str(
        info.value
    )
    assert checkpoint_config(run, ["tracking.wandb.notes=given"]).tracking.wandb.notes == "given"


def test_masked_values_are_asked_for_and_retired_keys_move(run):
    edit_config(run, "num_register_tokens: 4", "num_register_tokens: '***'")
    with pytest.raises(CineSceneError, match="num_register_tokens masked as '\\*\\*\\*'"):
        checkpoint_config(run)
    assert (
        checkpoint_config(
            run, ["model.scene.vggt.num_register_tokens=4"]
        ).model.scene.vggt.num_register_tokens
        == 4
    )
    edit_config(run, "data:\n", "data:\n  val_shards: /held/out\n")
    cfg = checkpoint_config(run, ["model.scene.vggt.num_register_tokens=4"])
    assert cfg.eval.data == "/held/out"


def test_a_bad_saved_value_is_the_files_error_and_a_bad_override_is_a_config_error(run):
    with pytest.raises(ConfigError, match="train.lr"):  # the user's override: exit 2, naming the key
        checkpoint_config(run, ["train.lr=fast"])
    edit_config(run, "  max_steps: ", "  max_steps: many #")
    with pytest.raises(CineSceneError, match="config.yaml is not a config this version reads .*max_steps"):
        checkpoint_config(run)
    edit_config(run, "run:\n", "defaults:\n- /etc/passwd\nrun:\n")
    with pytest.raises(CineSceneError, match="defaults"):  # a received config includes nothing
        checkpoint_config(run, ["train.max_steps=3"])
