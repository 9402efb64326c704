"""What `cinescene train` checks before any rank starts: the weight rule (model.init) and --dry-run."""

from __future__ import annotations

import subprocess
import sys

import pytest
from safetensors.torch import save_file

from cinescene.config import ConfigError, load_config
from cinescene.distributed.batching import plan_batch
from cinescene.distributed.env import standalone
from cinescene.errors import CineSceneError
from cinescene.models import build_model
from cinescene.models.weights import is_cinescene_extension
from cinescene.train.engine import deepspeed_config
from cinescene.train.entry import run_rank
from cinescene.train.preflight import check_deepspeed_config, check_initial_weights, dry_run
from tests.models.helpers import randomize, recorded_reads, write_header_only_safetensors

from .conftest import REPO, run_env
from .standins import standin_components, tiny_config

RECIPE = "configs/experiments/cinescene_wan1.3b.yaml"
SMOKE = "configs/experiments/smoke.yaml"


def cli(*args, timeout=300):
    return subprocess.run(
        [sys.executable, "-m", "cinescene", *args],
        cwd=REPO,
        env=run_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.parametrize(
    "dry", [pytest.param(False, id="train"), pytest.param(True, id="dry-run", marks=pytest.mark.slow)]
)
def test_the_recipe_without_weights_refuses_to_start_in_one_line(tmp_path, dry):
    out = cli("train", RECIPE, f"run.dir={tmp_path / 'run'}", *(["--dry-run"] if dry else []))
    assert out.returncode == 1, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cinescene train: error: "), out.stderr
    assert "model.pretrained and model.scene.vggt.weights are unset" in lines[0]
    assert "model.init=random" in lines[0]  # says how to train from scratch on purpose
    assert not (tmp_path / "run").exists()  # nothing started, nothing written


def test_the_recipe_holds_the_published_values_and_counts_on_cpu():
    """--print-config (no torch needed) and model info (meta device) on the recipe, without weights."""
    import yaml

    from cinescene.models.flops import model_info

    out = cli("train", RECIPE, "--print-config")
    assert out.returncode == 0, out.stderr
    printed = yaml.safe_load(out.stdout)
    train, model = printed["train"], printed["model"]
    published = (
        train["max_steps"],
        train["global_batch_size"],
        train["lr"],
        train["flow"]["shift"],
        printed["data"]["scene_images"],
        printed["data"]["shuffle_scene_images"],
        model["scene"]["enabled"],
        model["scene"]["vggt_tokens"],
    )
    assert published == (10000, 16, 5e-5, 15.0, 20, True, True, True)
    assert (model["name"], model["init"], model["scene"]["pose_embedding"]) == (
        "wan1.3b",
        "pretrained",
        False,
    )
    assert (
        train["precision"],
        printed["parallel"]["zero_stage"],
        model["activation_checkpointing"],
        train["ema"]["enabled"],
        printed["eval"]["every_steps"],
    ) == ("bf16", 3, True, True, 500)
    cfg, _ = load_config(REPO / RECIPE)
    info = model_info(cfg)
    assert (info["dit_params"], info["seq_len"], info["video_tokens"]) == (1_418_996_800, 63_960, 32_760)


def test_the_weight_rule():
    cfg, _ = load_config(REPO / RECIPE, ["model.pretrained=/nonexistent/dit.safetensors"])
    with pytest.raises(CineSceneError, match=r"^model\.scene\.vggt\.weights is unset"):
        check_initial_weights(cfg.model)
    # A model without VGGT (pixel context only) needs the DiT's weights alone, and they must exist.
    cfg, _ = load_config(
        REPO / RECIPE,
        [
            "model.pretrained=/nonexistent/dit.safetensors",
            "model.scene.vggt_tokens=false",
            "model.scene.pixel_context=true",
        ],
    )
    with pytest.raises(
        CineSceneError, match="weights not found: model.pretrained=/nonexistent/dit.safetensors"
    ):
        check_initial_weights(cfg.model)
    cfg, _ = load_config(REPO / RECIPE, ["model.init=random"])
    check_initial_weights(cfg.model)  # explicit: allowed (rank 0 warns, see below)
    cfg, _ = load_config(REPO / SMOKE)
    assert cfg.model.init == "random"  # the tiny model says so in configs/model/tiny.yaml
    with pytest.raises(ConfigError, match=r"model\.scene\.vggt\.weights: set to 'v\.pt' with init=random"):
        load_config(REPO / SMOKE, ["model.scene.vggt.weights=v.pt"])
    with pytest.raises(ConfigError, match=r"model\.init: expected one of \['pretrained', 'random'\]"):
        load_config(REPO / SMOKE, ["model.init=scratch"])


@pytest.mark.slow
def test_random_init_warns_once_on_a_fresh_start_only(tmp_path):
    """Rank 0's log (appended across restarts) holds the warning once: the fresh start, not the resume."""
    run_dir = tmp_path / "run"
    for steps in (2, 3):
        assert (
            run_rank(
                tiny_config(
                    run_dir, "model.init=random", f"train.max_steps={steps}", "checkpoint.every_steps=2"
                ),
                standalone(1),
                standin_components(),
            )
            == 0
        )
    log = (run_dir / "logs" / "rank0.log").read_text()
    assert "resumed from" in log
    warnings = [line for line in log.splitlines() if "model.init=random" in line]
    assert len(warnings) == 1 and " W " in warnings[0], warnings
    other = tmp_path / "pretrained"  # the stand-ins load nothing either way; the setting decides the warning
    assert run_rank(tiny_config(other, "train.max_steps=1"), standalone(1), standin_components()) == 0
    assert "model.init=random" not in (other / "logs" / "rank0.log").read_text()


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory):
    """A DiT checkpoint (Wan keys only) and a VGGT one (with a head we do not build) for the tiny model."""
    folder = tmp_path_factory.mktemp("weights")
    cfg, _ = load_config(REPO / SMOKE)
    model = build_model(cfg.model, load_weights=False)
    randomize(model, seed=0)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file({k: v for k, v in state.items() if not is_cinescene_extension(k)}, folder / "dit.safetensors")
    vggt = {
        k[len("scene_encoder.vggt.") :]: v for k, v in state.items() if k.startswith("scene_encoder.vggt.")
    }
    save_file(
        dict(vggt, **{"depth_head.proj.weight": vggt["aggregator.camera_token"].clone()}),
        folder / "vggt.safetensors",
    )
    return folder


def _pretrained_tiny(weights, *overrides):
    cfg, _ = load_config(
        REPO / SMOKE,
        [
            "model.init=pretrained",
            f"run.dir={weights / 'run'}",
            f"model.pretrained={weights / 'dit.safetensors'}",
            f"model.scene.vggt.weights={weights / 'vggt.safetensors'}",
            *overrides,
        ],
    )
    return cfg


def test_dry_run_checks_names_and_shapes_without_reading_tensors(tiny_weights):
    with recorded_reads() as reads:
        checks = {c.what: c.result for c in dry_run(_pretrained_tiny(tiny_weights), world_size=2)}
    assert reads.keys == []  # headers only: no tensor data read
    assert checks["batch"].startswith("micro 2 x accumulation 1 x data-parallel 2 = 4")
    assert "tensors match by name and shape" in checks["model.pretrained"]
    assert "new-module tensors start as initialised" in checks["model.pretrained"]
    assert "tensors match by name and shape" in checks["model.scene.vggt.weights"]
    assert checks["deepspeed"].startswith("ZeRO-3, fp32, train batch 4 = 2 x 1 x 2")


def test_dry_run_failures_are_one_error_each(tiny_weights, tmp_path):
    with pytest.raises(CineSceneError, match="not a multiple of"):
        dry_run(_pretrained_tiny(tiny_weights, "train.global_batch_size=6"), world_size=4)
    with pytest.raises(CineSceneError, match="parallel.sequence=4 does not divide the 2 attention heads"):
        dry_run(_pretrained_tiny(tiny_weights, "model.num_heads=2", "parallel.sequence=4"), world_size=4)
    # The VGGT file given as the DiT's: the report names what does not fit, before any data is read.
    with recorded_reads() as reads, pytest.raises(CineSceneError, match="does not fit the model"):
        dry_run(_pretrained_tiny(tiny_weights, f"model.pretrained={tiny_weights / 'vggt.safetensors'}"), 2)
    assert reads.keys == []


def test_dry_run_refuses_the_checkpoint_resume_a_real_start_refuses(tmp_path):
    """The dry run chooses the start point as a start does: a path that is no checkpoint, a checkpoint of
    another model, one whose bytes were altered; and a fork's path is ignored once the run has its own."""
    import torch

    from cinescene.config.checkpoint import CheckpointConfig
    from cinescene.train.checkpoint import CheckpointManager
    from tests.ckpt.fakes import FakeZeroEngine, rank_state, record

    def config(*overrides):
        cfg, _ = load_config(REPO / SMOKE, [f"run.dir={tmp_path / 'run'}", *overrides])
        return cfg

    checks = {c.what: c.result for c in dry_run(config(), world_size=1)}
    assert checks["checkpoint"].startswith("fresh start")
    with pytest.raises(CineSceneError, match=r"checkpoint.resume=\S*nowhere: checkpoint not found"):
        dry_run(config(f"checkpoint.resume={tmp_path / 'nowhere'}"), world_size=1)
    other = CheckpointManager(tmp_path / "other", CheckpointConfig(), rank=0, world_size=1)
    other.save(FakeZeroEngine(step=3), record(3), rank_state(3), "run: {}\n")
    with pytest.raises(CineSceneError, match="was saved for another model config"):
        dry_run(config(f"checkpoint.resume={tmp_path / 'other'}"), world_size=1)
    shard = tmp_path / "other" / "step_00000003" / "zero" / "zero_pp_rank_0_mp_rank_00_optim_states.pt"
    data = bytearray(shard.read_bytes())
    flat = torch.cat([t.reshape(-1) for t in FakeZeroEngine().weights.values()]).numpy().tobytes()
    data[data.index(flat)] ^= 0xFF  # one byte of the fp32 weights, the size unchanged: only the hash sees it
    shard.write_bytes(bytes(data))
    with pytest.raises(CineSceneError, match=f"{shard}: altered"):
        dry_run(config(f"checkpoint.resume={tmp_path / 'other'}"), world_size=1)


def test_deepspeed_rejects_what_its_schema_does_not_know(tiny_weights):
    cfg = _pretrained_tiny(tiny_weights)
    plan = plan_batch(cfg.train, 2)
    ds_config = deepspeed_config(cfg, plan)
    check_deepspeed_config(ds_config, plan)
    ds_config["zero_optimization"]["stage3_prefetch_bucket"] = 1  # a misspelt key
    with pytest.raises(CineSceneError, match="DeepSpeed rejects the ZeRO settings: .*stage3_prefetch_bucket"):
        check_deepspeed_config(ds_config, plan)
    ds_config["zero_optimization"].pop("stage3_prefetch_bucket")
    ds_config["train_batch_size"] = 8
    with pytest.raises(CineSceneError, match="train batch 8 != 4"):
        check_deepspeed_config(ds_config, plan)


@pytest.mark.slow
def test_dry_run_of_the_recipe_on_cpu_without_allocating_the_model(tmp_path):
    """Full-size 1.3B + VGGT-1B checkpoints as header-only sparse files: names, shapes checked; small RSS."""
    cfg, _ = load_config(REPO / RECIPE, ["model.init=random"])
    model = build_model(cfg.model, device="meta")
    write_header_only_safetensors(
        tmp_path / "dit.safetensors",
        {k: tuple(p.shape) for k, p in model.named_parameters() if not is_cinescene_extension(k)},
    )
    write_header_only_safetensors(
        tmp_path / "vggt.safetensors",
        {k: tuple(p.shape) for k, p in model.scene_encoder.vggt.named_parameters()},
    )
    del model
    # VmHWM: this process image's peak RSS (getrusage's maxrss would include the forking pytest's).
    code = (
        "import re, sys; from pathlib import Path; from tests.models.helpers import recorded_reads; "
        "from cinescene.launch.cli import main\n"
        "with recorded_reads() as reads: rc = main(sys.argv[1:])\n"
        "print('tensors read', len(reads.keys)); peak = re.search(r'VmHWM:\\s+(\\d+)', "
        "Path('/proc/self/status').read_text()).group(1); print('max rss MiB', int(peak) // 1024); "
        "sys.exit(rc)"
    )
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            code,
            "train",
            RECIPE,
            f"run.dir={tmp_path / 'run'}",
            f"model.pretrained={tmp_path / 'dit.safetensors'}",
            f"model.scene.vggt.weights={tmp_path / 'vggt.safetensors'}",
            "--dry-run",
        ],
        cwd=REPO,
        # As rank 0 of an 8-rank torchrun job: 8 ranks spawned on this 2-core machine would be refused.
        env={**run_env(), "RANK": "0", "WORLD_SIZE": "8", "LOCAL_RANK": "0"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    lines = dict(
        line.split(None, 1)
        for line in out.stdout.splitlines()
        if line and not line.startswith(("dry run", "tensors read", "max rss"))
    )
    assert lines["batch"].startswith("micro 1 x accumulation 2 x data-parallel 8 = 16")
    assert "2,405,046,848 parameters" in lines["model"] and "zero.Init" in lines["model"]
    assert lines["model.pretrained"].endswith(
        "825 tensors match by name and shape, 127 new-module tensors start as initialised"
    )
    assert "1210 tensors match by name and shape" in lines["model.scene.vggt.weights"]
    assert lines["deepspeed"].startswith("ZeRO-3, bf16, train batch 16 = 1 x 2 x 8")
    assert lines["deepspeed"].endswith("activation checkpointing on")
    assert "dry run passed" in out.stdout and "tensors read 0" in out.stdout
    rss = int(out.stdout.split("max rss MiB")[1].split()[0])
    print(f"dry run of the 1.3B recipe: max RSS {rss} MiB")
    assert rss < 1024  # the DiT alone is 2.8 GB in bf16; DiT + VGGT in fp32 9.6 GB
