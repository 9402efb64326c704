"""`cinescene ckpt export` and `cinescene ckpt info` on a real (tiny CineScene, one rank, ZeRO-3) run.

Export: diffusers' WanTransformer3DModel.from_pretrained on the export equals our base DiT on the same inputs
(fp32); the Wan layout holds exactly Wan's key set and reloads into our model with strict key checks; the
CineScene modules reload beside it, giving the trained model's output; --ema writes the EMA weights; sharding
writes an index. Info: the facts of the record, --verify exits 0, and 1 naming a truncated shard, from which
resume falls back.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch

from cinescene import rng
from cinescene.ckpt.export import load_exported_model
from cinescene.ckpt.weights import consolidated_state_dict
from cinescene.config import load_config
from cinescene.distributed.env import standalone
from cinescene.errors import CineSceneError
from cinescene.launch.cli import main as cli
from cinescene.models import build_model
from cinescene.models.weights import assign_state_dict, is_cinescene_extension, read_state_dict
from cinescene.train.entry import run_rank

from ..conftest import REPO

pytestmark = pytest.mark.slow
diffusers = pytest.importorskip("diffusers")


def smoke_config(run_dir: Path, shards: Path, *extra: str):
    cfg, _ = load_config(
        REPO / "configs/experiments/smoke.yaml",
        [
            f"data.train_shards={shards}",
            f"run.dir={run_dir}",
            "launch.nproc=1",
            "train.max_steps=4",
            "checkpoint.every_steps=2",
            "tracking.wandb.mode=disabled",
            *extra,
        ],
    )
    return cfg


@pytest.fixture(scope="module")
def smoke_run(smoke_shards, tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("export") / "smoke"
    assert run_rank(smoke_config(run_dir, smoke_shards), standalone(1)) == 0
    return run_dir


def trained_model(run_dir: Path, *, ema: bool = False):
    """The model as training left it: built as the trainer builds it (seeded), the trained weights loaded."""
    cfg, _ = load_config(run_dir / "config.yaml", [])
    rng.seed_all(cfg.run.seed)
    model = build_model(cfg.model)
    report = assign_state_dict(model, consolidated_state_dict(run_dir, ema=ema), strict=False)
    assert not report.unexpected and not report.mismatched
    return model.eval()


def inputs(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 3, 5, 8, 8, generator=gen)
    text = torch.randn(2, 32, 64, generator=gen)
    cameras = torch.eye(4).repeat(2, 5, 1, 1)
    cameras[:, :, :3, 3] = torch.randn(2, 5, 3, generator=gen)
    scene = torch.rand(2, 6, 3, 64, 64, generator=gen)
    return x, torch.tensor([900.0, 35.0]), text, cameras, scene


def export(run_dir: Path, out: Path, capsys, *flags: str) -> str:
    assert cli(["ckpt", "export", str(run_dir), "--out", str(out), *flags]) == 0
    return capsys.readouterr().out


def test_diffusers_export_loads_in_diffusers_and_equals_our_models(smoke_run, tmp_path, capsys):
    out = tmp_path / "diffusers"
    printed = export(smoke_run, out, capsys, "--format", "diffusers")
    assert "peak RSS" in printed and "checkpoint" in printed
    assert sorted(p.name for p in out.iterdir()) == [
        "cinescene.json",
        "cinescene_config.yaml",
        "cinescene_modules.safetensors",
        "config.json",
        "diffusion_pytorch_model.safetensors",
    ]
    reference = diffusers.WanTransformer3DModel.from_pretrained(out).eval()
    ours = load_exported_model(out, base_only=True)
    x, t, text, cameras, scene = inputs()
    with torch.no_grad():
        expected = reference(x, t, text, return_dict=False)[0]
        got = ours(x, t, text)
    diff, scale = (got - expected).abs().max().item(), expected.abs().max().item()
    print(
        f"\ndiffusers from_pretrained vs our base DiT from the same export: max abs diff {diff:.2e} "
        f"(output max {scale:.3f}, fp32)"
    )
    assert diff < 1e-5 * max(1.0, scale)
    # With its CineScene modules the export is the trained model, scene images and cameras included.
    full, trained = load_exported_model(out), trained_model(smoke_run)
    with torch.no_grad():
        assert torch.equal(
            full(x, t, text, cameras=cameras, scene_images=scene),
            trained(x, t, text, cameras=cameras, scene_images=scene),
        )


def test_wan_export_holds_wan_keys_reloads_strictly_and_shards(smoke_run, tmp_path, capsys):
    out = tmp_path / "wan"
    export(smoke_run, out, capsys, "--format", "wan", "--max-shard-size", "150KB")
    index = json.loads((out / "diffusion_pytorch_model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1 and all((out / name).stat().st_size <= 150_000 for name in shards)
    assert json.loads((out / "config.json").read_text())["_class_name"] == "WanModel"
    cfg, _ = load_config(smoke_run / "config.yaml", [])
    wan_keys = {
        k for k in build_model(cfg.model, device="meta").state_dict() if not is_cinescene_extension(k)
    }
    assert set(index["weight_map"]) == wan_keys  # Wan's own key set, nothing of ours in it
    base, _ = read_state_dict(out / "diffusion_pytorch_model.safetensors.index.json")
    trained = consolidated_state_dict(smoke_run)
    assert all(torch.equal(base[k], trained[k]) for k in base if k in trained)
    model = load_exported_model(out)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in trained.items())
    # Strict: a tensor missing from the export is an error naming it, not a silently initialised weight.
    from safetensors.torch import load_file, save_file

    holder = (
        out
        / json.loads((out / "cinescene_modules.safetensors.index.json").read_text())["weight_map"][
            "scene_encoder.null_token"
        ]
    )  # the modules are sharded too
    modules = load_file(holder)
    del modules["scene_encoder.null_token"]
    save_file(modules, holder)
    with pytest.raises(Exception, match="scene_encoder.null_token"):
        load_exported_model(out)


def test_ema_export_in_bf16(smoke_run, tmp_path, capsys):
    out = tmp_path / "ema"
    printed = export(smoke_run, out, capsys, "--format", "diffusers", "--ema", "--dtype", "bf16")
    assert "EMA weights" in printed
    from cinescene.models.key_mapping import diffusers_to_wan

    base, _ = read_state_dict(out / "diffusion_pytorch_model.safetensors")
    modules, _ = read_state_dict(out / "cinescene_modules.safetensors")
    written = {**diffusers_to_wan(base), **modules}
    ema, trained = consolidated_state_dict(smoke_run, ema=True), consolidated_state_dict(smoke_run)
    assert all(
        written[k].dtype == torch.bfloat16 and torch.equal(written[k], v.to(torch.bfloat16))
        for k, v in ema.items()
    )
    assert any(not torch.equal(ema[k], trained[k]) for k in ema)
    description = json.loads((out / "cinescene.json").read_text())
    assert description["ema"] is True and description["dtype"] == "bf16" and description["step"] == 4


def test_export_refuses_an_existing_directory_and_an_unknown_path(smoke_run, tmp_path, capsys):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "file").write_text("x")
    assert cli(["ckpt", "export", str(smoke_run), "--format", "wan", "--out", str(tmp_path / "taken")]) == 1
    assert "already exists" in capsys.readouterr().err
    assert (
        cli(["ckpt", "export", str(tmp_path / "nope"), "--format", "wan", "--out", str(tmp_path / "o")]) == 1
    )
    assert "checkpoint not found" in capsys.readouterr().err
    with pytest.raises(SystemExit) as usage:  # argparse: bad usage exits 2 with its one line
        cli(
            [
                "ckpt",
                "export",
                str(smoke_run),
                "--format",
                "wan",
                "--out",
                str(tmp_path / "o"),
                "--max-shard-size",
                "lots",
            ]
        )
    assert usage.value.code == 2 and "expected a size such as 5GB" in capsys.readouterr().err


def test_info_verify_names_a_truncated_shard_and_resume_falls_back(smoke_run, smoke_shards, tmp_path, capsys):
    run_dir = tmp_path / "run"
    shutil.copytree(smoke_run, run_dir)
    assert cli(["ckpt", "info", str(run_dir), "--verify"]) == 0
    printed = capsys.readouterr().out
    assert re.search(r"^step\s+4$", printed, re.M) and re.search(r"^EMA\s+yes$", printed, re.M)
    assert "verify: all" in printed
    assert cli(["ckpt", "info", str(run_dir), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["step"] == 4 and info["consumed_samples"] == 8 and info["world_size"] == 1
    assert info["zero_stage"] == 3 and info["precision"] == "fp32" and info["model_name"] == "tiny"
    assert info["ema"] is True and info["reason"] == "final" and info["parameters"] > 0
    assert info["total_bytes"] == sum(info["sizes"].values()) > 0
    shard = run_dir / "checkpoints" / "step_00000004" / "zero" / "zero_pp_rank_0_mp_rank_00_optim_states.pt"
    shard.write_bytes(shard.read_bytes()[:1000])
    assert cli(["ckpt", "info", str(run_dir), "--verify"]) == 1
    err = capsys.readouterr().err
    assert f"{shard}: truncated (1000 of" in err
    assert run_rank(smoke_config(run_dir, smoke_shards, "train.max_steps=5"), standalone(1)) == 0
    log = (run_dir / "logs" / "rank0.log").read_text()
    assert f"resumed from {run_dir}/checkpoints/step_00000002" in log and str(shard) in log
    assert cli(["ckpt", "info", str(run_dir), "--verify"]) == 0


def copied_run(smoke_run: Path, tmp_path: Path) -> tuple[Path, Path]:
    run_dir = tmp_path / "run"
    shutil.copytree(smoke_run, run_dir)
    return run_dir, run_dir / "checkpoints" / (run_dir / "checkpoints" / "latest").read_text().strip()


def test_export_of_an_older_run_with_masked_values_and_retired_keys_works_like_sample(
    smoke_run, tmp_path, capsys
):
    """Runs saved before the scrubber spared numbers hold '***' for some; runs saved before eval.data owned
    the held-out data hold data.val_shards. `ckpt export` reads them with the config reader `sample` uses."""
    run_dir, step = copied_run(smoke_run, tmp_path)
    config = (step / "config.yaml").read_text()
    assert "num_register_tokens: 4" in config
    config = config.replace("num_register_tokens: 4", "num_register_tokens: '***'")
    (step / "config.yaml").write_text(config.replace("data:\n", "data:\n  val_shards: /data/heldout\n", 1))
    args = ["ckpt", "export", str(run_dir), "--format", "wan"]
    assert cli([*args, "--out", str(tmp_path / "refused")]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "model.scene.vggt.num_register_tokens masked as '***'" in err
    assert "give the run's values as overrides" in err and not (tmp_path / "refused").exists()
    out = tmp_path / "export"
    assert cli([*args, "model.scene.vggt.num_register_tokens=4", "--out", str(out)]) == 0
    capsys.readouterr()
    from cinescene.ckpt import checkpoint_config, resolve_checkpoint

    for source in (resolve_checkpoint(run_dir), resolve_checkpoint(out)):  # the export keeps the saved config
        cfg = checkpoint_config(source, ["model.scene.vggt.num_register_tokens=4"])
        assert cfg.eval.data == "/data/heldout" and cfg.model.scene.vggt.num_register_tokens == 4
    assert load_exported_model(out).scene_encoder is not None


def test_interpolations_in_received_configs_are_refused_in_one_line(smoke_run, tmp_path, monkeypatch, capsys):
    """A ${oc.env:...} in a checkpoint's config.yaml or an export's config would copy this machine's secret
    into whatever is written next: configs read from checkpoints and exports are data, never resolved."""
    monkeypatch.setenv("CINESCENE_TEST_TOKEN", "s3cr3t-value-never-to-leak")
    run_dir, step = copied_run(smoke_run, tmp_path)
    clean = (step / "config.yaml").read_text()
    assert "  notes: null\n" in clean
    (step / "config.yaml").write_text(
        clean.replace("  notes: null\n", "  notes: ${oc.env:CINESCENE_TEST_TOKEN}\n")
    )
    out = tmp_path / "export"
    assert cli(["ckpt", "export", str(run_dir), "--format", "wan", "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "tracking.wandb.notes holds an interpolation" in err
    assert "s3cr3t" not in err and not out.exists()
    from cinescene.ckpt import checkpoint_config, resolve_checkpoint

    with pytest.raises(CineSceneError, match="never resolved"):
        checkpoint_config(resolve_checkpoint(run_dir))
    notes = checkpoint_config(resolve_checkpoint(run_dir), ["tracking.wandb.notes=mine"]).tracking.wandb.notes
    assert notes == "mine"  # an override replaces the saved value, which is then never read
    (step / "config.yaml").write_text(clean)
    assert cli(["ckpt", "export", str(run_dir), "--format", "wan", "--out", str(out)]) == 0
    capsys.readouterr()
    saved = (out / "cinescene_config.yaml").read_text()
    (out / "cinescene_config.yaml").write_text(
        saved.replace("  notes: null\n", "  notes: ${oc.env:CINESCENE_TEST_TOKEN}\n")
    )
    with pytest.raises(
        CineSceneError, match="cinescene_config.yaml: tracking.wandb.notes holds an interpolation"
    ):
        checkpoint_config(resolve_checkpoint(out))
    description = json.loads((out / "cinescene.json").read_text())
    description["model"]["name"] = "${oc.env:CINESCENE_TEST_TOKEN}"
    (out / "cinescene.json").write_text(json.dumps(description))
    with pytest.raises(CineSceneError, match="cinescene.json: model.name holds an interpolation"):
        load_exported_model(out)


def test_an_exports_config_cannot_size_the_model_before_its_keys_are_checked(
    smoke_run, tmp_path, monkeypatch, capsys
):
    """cinescene.json says which model to build: a hand-edited one (64 layers) is refused from the files'
    headers, on a model built on the meta device; nothing is allocated for it."""
    import cinescene.ckpt.export

    out = tmp_path / "export"
    export(smoke_run, out, capsys, "--format", "wan")
    description = json.loads((out / "cinescene.json").read_text())
    description["model"]["num_layers"] = 64
    (out / "cinescene.json").write_text(json.dumps(description))
    built, build = [], cinescene.ckpt.export.build_model

    def recording(cfg, **kwargs):
        built.append(kwargs.get("device"))
        return build(cfg, **kwargs)

    monkeypatch.setattr(cinescene.ckpt.export, "build_model", recording)
    with pytest.raises(CineSceneError, match=r"missing|blocks\.63"):
        load_exported_model(out)
    assert built and all(device == "meta" for device in built)
