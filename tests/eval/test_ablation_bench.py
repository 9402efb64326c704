"""`cinescene bench ablation` at a tiny budget, so the benchmark that makes the README's tables cannot rot.

Two of the four arms (no scene context; pixel context with scene anchoring) of the scene ablation's sweep
file, 2 training steps each on 4 synthetic clips, evaluated on 2 held-out clips of another seed with 2
sampling steps, beside the floor of those clips. The camera ablation's arms are checked without training,
and its goals are computed from made-up evaluations.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from cinescene.config import ConfigError
from cinescene.eval.ablation import arms_of
from cinescene.eval.ablation_report import goals, table
from tests.fixtures.checkpoint import REPO, cli_env

ARMS = REPO / "configs/experiments/ablation/arms.yaml"
CAMERA = REPO / "configs/experiments/ablation/camera.yaml"


def _one_budget(arms) -> bool:
    cfgs = [a.cfg for a in arms]
    return (
        len(
            {
                (
                    c.train.max_steps,
                    c.run.seed,
                    c.train.lr,
                    c.data.train_shards,
                    c.train.ema.decay,
                    c.eval.data,
                )
                for c in cfgs
            }
        )
        == 1
    )


def test_the_scene_arms_are_the_four_of_their_issue():
    _, _, arms = arms_of(ARMS, [], None, None)
    assert [a.label for a in arms] == [
        "camera, no scene context",
        "camera + VGGT tokens",
        "camera + pixel (VAE-proxy)",
        "camera + pixel (VAE-proxy) + anchoring",
    ]
    assert _one_budget(arms)


def test_the_camera_arms_are_the_four_of_their_issue():
    _, root, arms = arms_of(CAMERA, [], None, None)
    assert [a.label for a in arms] == [
        "no camera, no scene context",
        "camera, no scene context",
        "camera + pixel (VAE-proxy)",
        "camera + pixel (VAE-proxy) + anchoring",
    ]
    assert _one_budget(arms) and str(root) == "runs/ablation_camera"
    synth = arms[0].cfg.data.synth
    assert "pan" not in synth.camera_moves and "landscape" not in synth.scenes  # SfM can measure them
    assert synth.size == [128, 128] and synth.frames == 65
    assert {"rot_err", "trans_err", "cam_mc", "bg_psnr", "bg_ssim", "mat_pix"} <= set(
        arms[0].cfg.eval.metrics
    )


def test_arms_outside_the_sweep_are_a_usage_error():
    with pytest.raises(ConfigError, match=r"^--arms: the sweep has arms 0\.\.3, got 1,7$"):
        arms_of(CAMERA, [], [1, 7], None)


def _row(label, camera, scene, cam_mc, bg_psnr):
    """An arm of ablation.json with per-sample CamMC (None: SfM failed on that clip)."""
    values = [v for v in cam_mc.values() if v is not None]
    return {
        "label": label,
        "camera": camera,
        "scene": {"enabled": scene},
        "eval": {
            "mean": {"cam_mc": sum(values) / len(values) if values else None, "bg_psnr": bg_psnr},
            "per_sample": {k: {"cam_mc": v} for k, v in cam_mc.items()},
            "sfm_failures": sum(v is None for v in cam_mc.values()),
            "sfm_attempts": len(cam_mc),
        },
    }


def test_camera_goal_compares_the_clips_both_arms_registered():
    rows = [
        _row("a", False, False, {"x": 10.0, "y": 2.0, "z": None}, 12.0),
        _row("b", True, False, {"x": 5.0, "y": None, "z": 1.0}, 12.5),
        _row("c", True, True, {"x": 5.5, "y": None, "z": None}, 16.0),
    ]
    text = goals(rows)
    camera, scene, keeps = text
    # Paired on clip x only: 5 against 10, a 50 % cut (unpaired means would say 3.0 against 6.0).
    assert "met; 5.00 against 10.00 on the 1 clips both registered (+50% cut)" in camera
    assert "3.00 against 6.00" in camera
    assert "best c +3.50 dB" in scene and scene.startswith("scene context gains >= 3 dB") and "met" in scene
    assert "5.50 against 5.00 on the 1 clips both registered (+10%)" in keeps
    rows[1]["eval"]["per_sample"]["x"]["cam_mc"] = None
    assert "not measurable" in goals(rows)[0] and "not measurable" in goals(rows)[2]


def test_one_ablation_at_a_time_per_run_root(tmp_path):
    from cinescene.train.run_lock import RunDirLock

    lock = RunDirLock(tmp_path / "ablation").acquire()  # another ablation is running there
    try:
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "cinescene",
                "bench",
                "ablation",
                str(CAMERA),
                "--out",
                str(tmp_path / "ablation"),
            ],
            cwd=REPO,
            env=cli_env(),
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        lock.release()
    assert done.returncode == 1 and "is in use by another run" in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and not (tmp_path / "ablation" / "floor").exists()


@pytest.mark.slow
@pytest.mark.dist
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
    assert (none["label"], anchored["label"]) == (
        "camera, no scene context",
        "camera + pixel (VAE-proxy) + anchoring",
    )
    for arm in (none, anchored):
        assert arm["steps"] == 2 and arm["train"]["wall_s"] > 0 and arm["final_loss"] > 0
        assert 0 < arm["train"]["cpu_s"] <= arm["train"]["wall_s"] * os.cpu_count() + 1
        assert arm["eval"]["count"]["bg_psnr"] == 2 and 0 < arm["eval"]["mean"]["bg_psnr"] < 40
        assert arm["eval"]["sfm_attempts"] == 2 and len(arm["eval"]["per_sample"]) == 2
    assert none["attention"] is None
    probe = anchored["attention"]
    assert 0 < probe["mass"] < 1 and 0 < probe["uniform"] < 1 and len(probe["per_layer"]) == 2
    gain = anchored["eval"]["mean"]["bg_psnr"] - none["eval"]["mean"]["bg_psnr"]
    (scene_goal,) = results["goals"]
    assert scene_goal.startswith("scene context gains >= 3 dB") and f"{gain:+.2f} dB" in scene_goal
    # The floors of the same held-out clips: the ground truth itself, and through the pixel proxy (pool 4).
    truth, codec = results["floors"]
    assert (truth["kind"], codec["kind"]) == ("ground_truth", "codec")
    assert truth["eval"]["mean"]["bg_psnr"] == "inf" and truth["eval"]["mean"]["psnr"] == "inf"
    assert 10 < codec["eval"]["mean"]["bg_psnr"] < 60 and codec["eval"]["sfm_attempts"] == 2
    text = (out / "table.md").read_text()
    assert text == table(results) and text in done.stdout
    assert "| camera, no scene context | 2 |" in text and "| floor: ground truth | – |" in text
    assert "cinescene bench ablation" in text and "Goal: scene context gains" in text
    html = (out / "report.html").read_text()
    assert html.count('<tr class="arm">') == 2 and html.count('<tr class="floor">') == 2
    assert html.count('<section class="sample"') == 2

    # A second call reuses the finished arms and the floors: nothing is trained or scored again.
    again = subprocess.run(
        command + ["--arms", "0"], cwd=REPO, env=cli_env(), capture_output=True, text=True, timeout=600
    )
    assert again.returncode == 0, again.stderr[-3000:]
    assert "reusing the finished run" in again.stderr and "floor (ground truth): reusing" in again.stderr
    assert json.loads((out / "ablation.json").read_text())["arms"][0]["train"] == none["train"]
