"""Config files and values a careless or hostile user writes: every one is a one-line ConfigError
(exit status 2) naming the file and place or the key path, never a traceback."""

from __future__ import annotations

import subprocess
import sys

import pytest

from cinescene.config import ConfigError, load_config
from cinescene.config.sweep import expand_sweep

SMOKE = "configs/experiments/smoke.yaml"


def _cli(repo_root, *args):
    return subprocess.run(
        [sys.executable, "-m", "cinescene", *args], cwd=repo_root, capture_output=True, text=True, timeout=120
    )


def _one_line(out, status=2):
    lines = out.stderr.strip().splitlines()
    assert out.returncode == status and len(lines) == 1, out.stderr
    return lines[0]


def test_a_config_that_is_not_utf8_names_the_file_and_byte_offset(tmp_path, repo_root):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("train:\n  lr: 0.5  # d\xe9j\xe0 vu\n".encode("latin-1"))
    line = _one_line(_cli(repo_root, "train", str(path)))
    assert f"{path}: not UTF-8 text (byte 0xe9 at offset 21, line 2)" in line


def test_a_sweep_file_that_is_not_utf8_is_read_by_the_same_reader(tmp_path, repo_root):
    path = tmp_path / "sweep.yaml"
    path.write_bytes(b"sweep:\n  name: caf\xe9\n")
    line = _one_line(_cli(repo_root, "sweep", str(path), "--dry-run"))
    assert "config error:" in line and "not UTF-8 text (byte 0xe9 at offset 18, line 2)" in line


@pytest.mark.parametrize(
    "text, key, where",
    [
        ("train:\n  lr: 0.1\n  max_steps: 3\n  lr: 0.2\n", "train.lr", "lines 2 and 4"),
        ("train: {lr: 0.1}\ntrain: {max_steps: 3}\n", "train", "lines 1 and 2"),
        ("tracking:\n  wandb:\n    tags: [a]\n    tags: [b]\n", "tracking.wandb.tags", "lines 3 and 4"),
    ],
)
def test_duplicate_keys_are_an_error_naming_the_key(tmp_path, text, key, where):
    (tmp_path / "c.yaml").write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "c.yaml")
    assert info.value.key == key and f"duplicate key in {tmp_path / 'c.yaml'} ({where})" in str(info.value)


def test_duplicate_keys_in_a_sweep_file(tmp_path, repo_root):
    path = tmp_path / "sweep.yaml"
    path.write_text(f"sweep:\n  name: s\n  base: {repo_root / SMOKE}\n  name: t\n")
    with pytest.raises(ConfigError) as info:
        expand_sweep(path)
    assert info.value.key == "sweep.name" and "duplicate key" in str(info.value)


def test_yaml_merge_keys_still_override(tmp_path):
    (tmp_path / "c.yaml").write_text(
        "train: &base {lr: 0.1, max_steps: 3}\neval:\n  every_steps: 0\ncheckpoint: {every_steps: 2}\n"
    )
    cfg, _ = load_config(tmp_path / "c.yaml")
    assert cfg.train.lr == 0.1


@pytest.mark.parametrize(
    "text, key, shown",
    [
        ("train: 5\n", "train", "got 5"),
        ("train: [1, 2]\n", "train", "got [1, 2]"),
        ("train:\n  flow: fast\n", "train.flow", "got 'fast'"),
        ("model:\n  scene:\n    vggt: 3\n", "model.scene.vggt", "got 3"),
    ],
)
def test_a_section_given_a_scalar_names_the_key_path_and_file(tmp_path, text, key, shown):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.key == key
    assert (
        "expected a section of keys" in str(info.value)
        and shown in str(info.value)
        and str(path) in str(info.value)
    )


def test_the_same_check_serves_overrides(repo_root):
    with pytest.raises(ConfigError) as info:
        load_config(repo_root / SMOKE, ["train=5"])
    assert info.value.key == "train" and "expected a section of keys (train.max_steps" in str(info.value)


@pytest.mark.parametrize(
    "text, message",
    [
        ("a: 1\x00\n", "invalid YAML at line 1: unacceptable character"),
        ("a: &x [*x]\n", "refers to a node that contains it"),
        ("[" * 3000 + "\n", "nested too deeply"),
    ],
)
def test_unreadable_yaml_is_one_line(tmp_path, text, message):
    (tmp_path / "c.yaml").write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "c.yaml")
    assert message in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize(
    "override, key",
    [
        ("train.lr=inf", "train.lr"),
        ("train.lr=nan", "train.lr"),
        ("train.betas=[0.9,nan]", "train.betas[1]"),
        ("train.weight_decay=inf", "train.weight_decay"),
        ("train.grad_clip=inf", "train.grad_clip"),
        ("train.eps=inf", "train.eps"),
        ("train.flow.shift=inf", "train.flow.shift"),
        ("train.flow.shift=-inf", "train.flow.shift"),
        ("model.scene.vggt.rope_freq=inf", "model.scene.vggt.rope_freq"),
        ("eval.cfg_scale=inf", "eval.cfg_scale"),
        ("tracking.peak_tflops=nan", "tracking.peak_tflops"),
    ],
)
def test_non_finite_floats_are_refused(repo_root, override, key):
    with pytest.raises(ConfigError) as info:
        load_config(repo_root / SMOKE, [override])
    assert info.value.key == key and "expected a finite number" in str(info.value)


def test_a_non_finite_float_in_a_yaml_file(tmp_path):
    (tmp_path / "c.yaml").write_text("train:\n  lr: .inf\n")
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "c.yaml")
    assert info.value.key == "train.lr"


@pytest.mark.parametrize(
    "override, key, reason",
    [
        ("model.dim=51200", "model.dim", "the widest Wan2.1 DiT (14B) has dim 5120"),
        ("train.micro_batch_size=100000", "train.micro_batch_size", "raise train.grad_accum instead"),
    ],
)
def test_sizes_have_upper_bounds_with_the_reason(repo_root, override, key, reason):
    with pytest.raises(ConfigError) as info:
        load_config(repo_root / SMOKE, [override])
    assert info.value.key == key and reason in str(info.value)


@pytest.mark.parametrize("name", ["../elsewhere", "a/b", "..", ".", "", "x" * 256])
def test_run_name_is_a_name_not_a_path(repo_root, name):
    with pytest.raises(ConfigError) as info:
        load_config(repo_root / SMOKE, [f"run.name='{name}'"])
    assert info.value.key == "run.name" and "a name, not a path" in str(info.value)


def test_run_dir_may_be_anywhere(repo_root, tmp_path):
    cfg, _ = load_config(
        repo_root / SMOKE, [f"run.dir={tmp_path.parent / 'elsewhere' / 'r'}", "run.name=a.b-c_1"]
    )
    assert cfg.run.dir == str(tmp_path.parent / "elsewhere" / "r") and cfg.run.name == "a.b-c_1"
    cfg, _ = load_config(repo_root / SMOKE, ["run.dir=../up/here"])
    assert cfg.run.dir == "../up/here"
