"""Config composition, overrides and one-line validation errors (exit status 2)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from cinescene.config import ConfigError, load_config

SMOKE = "configs/experiments/smoke.yaml"


def test_smoke_composes_model_and_data(repo_root):
    cfg, raw = load_config(repo_root / SMOKE)
    assert cfg.model.name == "tiny" and cfg.model.dim == 64  # from ../model/tiny.yaml
    assert cfg.data.generate is True  # from ../data/synthetic.yaml
    assert cfg.launch.nproc == 2 and cfg.parallel.zero_stage == 3
    assert raw.run.dir == "runs/smoke"


def test_overrides_win_over_files(repo_root):
    cfg, _ = load_config(repo_root / SMOKE, ["train.lr=0.5", "model.attention.mask=context_readonly"])
    assert cfg.train.lr == 0.5 and cfg.model.attention.mask == "context_readonly"


def test_interpolation_resolves(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"run": {"name": "abc"}, "data": {"train_shards": "x"}}))
    cfg, _ = load_config(path)
    assert cfg.run.dir == "runs/abc"


def test_includes_are_relative_and_later_wins(tmp_path):
    (tmp_path / "a.yaml").write_text("train: {lr: 1.0, max_steps: 5}\n")
    (tmp_path / "b.yaml").write_text("train: {lr: 2.0}\n")
    (tmp_path / "c.yaml").write_text("defaults: [a.yaml, b.yaml]\ndata: {train_shards: s}\n")
    cfg, _ = load_config(tmp_path / "c.yaml")
    assert (cfg.train.lr, cfg.train.max_steps) == (2.0, 5)


def test_include_cycle_is_reported(tmp_path):
    (tmp_path / "a.yaml").write_text("defaults: [b.yaml]\n")
    (tmp_path / "b.yaml").write_text("defaults: [a.yaml]\n")
    with pytest.raises(ConfigError, match="include cycle"):
        load_config(tmp_path / "a.yaml")


@pytest.mark.parametrize(
    "override, key, text",
    [
        ("trian.lr=1", "trian", "did you mean 'train'"),
        ("train.lrr=1", "train.lrr", "did you mean 'train.lr'"),
        ("train.lr=abc", "train.lr", "expected float"),
        ("train.lr=-1", "train.lr", "expected a value > 0"),
        ("train.betas=[a,b]", "train.betas[0]", "expected float"),
        (
            "train.ema=3",
            "train.ema",
            "expected a section of keys (train.ema.enabled, train.ema.decay, ...), got 3",
        ),
        ("model.attention.mask=bogus", "model.attention.mask", "one of ['full', 'context_readonly']"),
        ("data.synth.frames=16", "data.synth.frames", "1 + 4k frames"),
        ("parallel.zero_stage=5", "parallel.zero_stage", "one of [1, 2, 3]"),
        ("parallel.zero_stage=0", "parallel.zero_stage", "one of [1, 2, 3]"),
        ("model.dim=65", "model.dim", "multiple of num_heads"),
        ("nokey", "nokey", "key.path=value"),
    ],
)
def test_bad_values_name_the_key(repo_root, override, key, text):
    with pytest.raises(ConfigError) as info:
        load_config(repo_root / SMOKE, [override])
    assert info.value.key == key
    assert text in str(info.value)


def test_training_requires_shards(tmp_path):
    """Model-only configs load; anything that trains names the missing key."""
    from cinescene.data.ensure import require_train_shards

    (tmp_path / "c.yaml").write_text("train: {lr: 1.0}\n")
    cfg, _ = load_config(tmp_path / "c.yaml")
    with pytest.raises(ConfigError) as info:
        require_train_shards(cfg.data)
    assert info.value.key == "data.train_shards" and "required for training" in str(info.value)


def test_bad_yaml_and_missing_file(tmp_path):
    (tmp_path / "bad.yaml").write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="invalid YAML at line"):
        load_config(tmp_path / "bad.yaml")
    with pytest.raises(ConfigError, match="none.yaml does not exist"):
        load_config(tmp_path / "none.yaml")


def _cli(repo_root, *args):
    return subprocess.run(
        [sys.executable, "-m", "cinescene", *args], cwd=repo_root, capture_output=True, text=True, timeout=120
    )


def test_cli_print_config_exits_0(repo_root):
    out = _cli(repo_root, "train", SMOKE, "--print-config", "train.lr=0.25")
    assert out.returncode == 0, out.stderr
    printed = yaml.safe_load(out.stdout)
    assert printed["train"]["lr"] == 0.25 and printed["model"]["name"] == "tiny"


@pytest.mark.parametrize("override, key", [("trian.lr=1", "trian"), ("train.lr=abc", "train.lr")])
def test_cli_bad_config_exits_2_with_one_line(repo_root, override, key):
    out = _cli(repo_root, "train", SMOKE, override)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and f"config error: {key}:" in lines[0]


def test_cli_validation_does_not_import_torch(repo_root):
    code = (
        f"import sys; from cinescene.launch.cli import main; rc = main(['train', '{SMOKE}', "
        "'--print-config']); assert 'torch' not in sys.modules, 'torch imported'; sys.exit(rc)"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=repo_root, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def test_cli_help_at_every_level(repo_root):
    top = _cli(repo_root, "--help")
    assert top.returncode == 0
    for name in ["train", "submit", "sweep", "data", "ckpt", "model", "sample", "eval", "bench"]:
        assert name in top.stdout
        assert _cli(repo_root, name, "--help").returncode == 0
