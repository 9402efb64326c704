"""`cinescene bench ablation` at a tiny budget, so the benchmark that makes the README's table cannot rot.

Two of the four arms (no scene context; pixel context with scene anchoring) of the real sweep file, 2 training
steps each on 4 synthetic clips, evaluated on 2 held-out clips of another seed with 2 sampling steps.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from cinescene.eval.ablation import arms_of, table
from tests.fixtures.checkpoint import REPO, cli_env

pytestmark = [pytest.mark.slow, pytest.mark.dist]
ARMS = REPO / "configs/experiments/ablation/arms.yaml"


def test_the_arms_are_the_four_of_the_issue():
    _, _, arms = arms_of(ARMS, [], None, None)
    assert [a.label for a in arms] == [
        "no scene context",
        "VGGT tokens",
        "pixel (VAE-proxy)",
        "pixel (VAE-proxy) + anchoring",
    ]
    assert (
        len({(a.cfg.train.max_steps, a.cfg.run.seed, a.cfg.train.lr, a.cfg.data.train_shards) for a in arms})
        == 1
    )


def test_a_tiny_budget_run_writes_the_table(tmp_path):
    out = tmp_path / "ablation"
    command = [
        sys.executable,
        "-m",
        "cinescene",
        "bench",
        "ablation",
        str(ARMS),
        "--arms",
        "0,3",
        "--out",
        str(out),
        "--heldout-clips",
        "2",
        f"data.train_shards={tmp_path / 'train'}",
        f"data.synth.out={tmp_path / 'clips'}",
        "data.synth.clips=4",
        "data.synth.workers=1",
        f"eval.data={tmp_path / 'heldout'}",
        "train.max_steps=2",
        "train.micro_batch_size=2",
        "train.warmup_steps=0",
        "checkpoint.every_steps=2",
        "eval.sample_steps=2",
        "eval.metrics=[bg_psnr,bg_ssim,psnr,cam_mc]",
    ]
    done = subprocess.run(command, cwd=REPO, env=cli_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((out / "ablation.json").read_text())
    none, anchored = results["arms"]
    assert (none["label"], anchored["label"]) == ("no scene context", "pixel (VAE-proxy) + anchoring")
    for arm in (none, anchored):
        assert arm["steps"] == 2 and arm["train"]["wall_s"] > 0 and arm["final_loss"] > 0
        assert arm["eval"]["count"]["bg_psnr"] == 2 and 0 < arm["eval"]["mean"]["bg_psnr"] < 40
        assert arm["eval"]["sfm_attempts"] == 2
    assert none["attention"] is None
    probe = anchored["attention"]
    assert 0 < probe["mass"] < 1 and 0 < probe["uniform"] < 1 and len(probe["per_layer"]) == 2
    assert results["bg_psnr_gain"]["db"] == pytest.approx(
        anchored["eval"]["mean"]["bg_psnr"] - none["eval"]["mean"]["bg_psnr"]
    )
    text = (out / "table.md").read_text()
    assert text == table(results) and text in done.stdout
    assert "| no scene context | 2 |" in text and "cinescene bench ablation" in text and "–" in text

    # A second call reuses the finished arms: nothing is trained again.
    again = subprocess.run(
        command + ["--arms", "0"], cwd=REPO, env=cli_env(), capture_output=True, text=True, timeout=600
    )
    assert again.returncode == 0, again.stderr[-3000:]
    assert "reusing the finished run" in again.stderr
    assert json.loads((out / "ablation.json").read_text())["arms"][0]["train"] == none["train"]
