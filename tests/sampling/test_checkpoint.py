"""CKPT -> step directory, config and weights: run / checkpoints / step directories, EMA, damaged inputs."""

from __future__ import annotations

import re
import shutil

import pytest
import torch

from cinescene.ckpt import checkpoint_config, resolve_checkpoint
from cinescene.ckpt.weights import consolidated_state_dict
from cinescene.errors import CineSceneError
from cinescene.sampling.checkpoint import load_inference_model, trained_state_dict

pytestmark = [pytest.mark.slow, pytest.mark.dist]


def test_run_checkpoints_and_step_directories_resolve_to_the_latest_step(smoke_run):
    step = smoke_run.step_dir
    for given in (smoke_run.run_dir, smoke_run.run_dir / "checkpoints", step):
        source = resolve_checkpoint(given)
        assert source.path == step and source.step == 4 and source.kind == "step"


def test_weights_load_as_trained_or_as_ema(smoke_run):
    source = resolve_checkpoint(smoke_run.run_dir)
    cfg = checkpoint_config(source, ["model.attention.backend=math"])
    assert cfg.model.attention.backend == "math" and cfg.model.scene.vggt.num_register_tokens == 4
    trained = load_inference_model(source, cfg)
    saved = consolidated_state_dict(source.path)
    params = dict(trained.named_parameters())
    assert all(torch.equal(params[name], value) for name, value in saved.items())
    assert not any(p.requires_grad for p in trained.parameters()) and not trained.training
    ema = trained_state_dict(source, ema=True)
    assert set(ema) == set(saved) and any(not torch.equal(ema[n], saved[n]) for n in saved)  # decay 0.99
    averaged = dict(load_inference_model(source, cfg, ema=True).named_parameters())
    assert all(torch.equal(averaged[name], value) for name, value in ema.items())
    frozen = [n for n in params if n not in saved]
    assert frozen and all(
        torch.equal(params[n], averaged[n]) for n in frozen
    )  # seeded like the run built them


def test_damaged_or_foreign_checkpoints_are_one_line_errors(smoke_run, tmp_path):
    with pytest.raises(CineSceneError, match="checkpoint not found"):
        resolve_checkpoint(tmp_path / "missing")
    with pytest.raises(CineSceneError, match="not a run, checkpoints, step or export directory"):
        resolve_checkpoint(tmp_path)
    copy = tmp_path / "run"
    shutil.copytree(smoke_run.run_dir / "checkpoints", copy / "checkpoints")
    step = copy / "checkpoints" / smoke_run.step_dir.name
    (step / "trainer_state.json").unlink()
    with pytest.raises(CineSceneError, match="not a complete checkpoint"):
        resolve_checkpoint(copy)
    (step / "trainer_state.json").write_text((smoke_run.step_dir / "trainer_state.json").read_text())
    config = (step / "config.yaml").read_text()
    (step / "config.yaml").write_text(config.replace("num_register_tokens: 4", "num_register_tokens: '***'"))
    with pytest.raises(CineSceneError, match="model.scene.vggt.num_register_tokens masked"):
        checkpoint_config(resolve_checkpoint(copy))
    cfg = checkpoint_config(resolve_checkpoint(copy), ["model.scene.vggt.num_register_tokens=4"])
    assert cfg.model.scene.vggt.num_register_tokens == 4
    rank_files = sorted((step / "rank_states").iterdir())
    assert rank_files
    for rank_state in rank_files:
        rank_state.write_bytes(b"not a checkpoint")
    with pytest.raises(CineSceneError, match=re.escape(f"{rank_files[0]}: unreadable")):  # names the file
        trained_state_dict(resolve_checkpoint(copy), ema=True)
    shutil.rmtree(step / "zero")
    with pytest.raises(
        CineSceneError, match=re.escape(f"{step / 'zero'}: missing: the checkpoint holds no ZeRO shards")
    ):
        load_inference_model(resolve_checkpoint(copy), cfg)


def test_an_export_loads_as_the_checkpoint_it_came_from(smoke_run, tmp_path):
    from cinescene.ckpt.export import export

    for ema in (False, True):
        out = tmp_path / f"export-{ema}"
        export(smoke_run.run_dir, out, fmt="diffusers", ema=ema)
        source = resolve_checkpoint(out)
        assert source.kind == "export" and source.step == 4 and source.ema is ema
        cfg = checkpoint_config(source, ["model.attention.backend=math"])
        assert (
            cfg.model.attention.backend == "math"
            and cfg.run.name == checkpoint_config(resolve_checkpoint(smoke_run.run_dir)).run.name
        )
        from_export = dict(load_inference_model(source, cfg, ema=ema).named_parameters())
        from_step = dict(
            load_inference_model(resolve_checkpoint(smoke_run.run_dir), cfg, ema=ema).named_parameters()
        )
        assert set(from_export) == set(from_step)
        assert all(torch.equal(from_export[n], from_step[n]) for n in from_step)
    with pytest.raises(CineSceneError, match="exported without --ema"):
        load_inference_model(resolve_checkpoint(tmp_path / "export-False"), cfg, ema=True)


def test_configs_of_older_runs_with_retired_keys_still_load(smoke_run, tmp_path):
    """Runs saved before eval.data owned the held-out data hold data.val_shards: it moves there (or goes,
    when null)."""
    copy = tmp_path / "run"
    shutil.copytree(smoke_run.run_dir / "checkpoints", copy / "checkpoints")
    step = copy / "checkpoints" / smoke_run.step_dir.name
    config = (step / "config.yaml").read_text()
    for value, expected in (("null", None), ("/data/heldout", "/data/heldout")):
        (step / "config.yaml").write_text(config.replace("data:\n", f"data:\n  val_shards: {value}\n", 1))
        assert checkpoint_config(resolve_checkpoint(copy)).eval.data == expected
    assert checkpoint_config(resolve_checkpoint(copy), ["eval.data=/elsewhere"]).eval.data == "/elsewhere"
