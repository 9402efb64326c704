"""`cinescene sample` on a trained smoke checkpoint: the
mp4, its metadata and JSON, the PNG, and the errors."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from tests.fixtures.checkpoint import REPO, cli_env
from tests.fixtures.video import read_mp4

pytestmark = [pytest.mark.slow, pytest.mark.dist]


def sample(*args, timeout=300, gpu=False):
    return subprocess.run(
        [sys.executable, "-m", "cinescene", "sample", *map(str, args)],
        cwd=REPO,
        env=cli_env(gpu),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_sample_from_shards_writes_an_mp4_with_its_settings(smoke_run, tmp_path):
    out = tmp_path / "a.mp4"
    done = sample(
        smoke_run.run_dir,
        "--scene",
        f"{smoke_run.shards}:clip_000003",
        "--camera",
        "dolly_in",
        "--prompt",
        "A dog runs in a room",
        "--steps",
        3,
        "--seed",
        5,
        "--out",
        out,
        "--png",
        tmp_path / "a.png",
    )
    assert done.returncode == 0, done.stderr[-2000:]
    frames, metadata = read_mp4(out)
    assert frames.shape == (5, 64, 64, 3)  # 17 frames -> 5 latent frames of the pixel proxy
    sidecar = json.loads(out.with_suffix(".json").read_text())
    assert metadata["seed"] == sidecar["seed"] == 5 and sidecar["steps"] == 3 and sidecar["codec"]
    assert sidecar["prompt"] == "A dog runs in a room" and sidecar["camera"] == "preset dolly_in x1"
    assert sidecar["step"] == 4 and sidecar["weights"] == "trained" and len(sidecar["cameras_c2w"]) == 5
    assert Image.open(tmp_path / "a.png").size == (5 * 64 + 4 * 2, 64)
    assert f"wrote {out}" in done.stdout and "Traceback" not in done.stderr

    again = sample(
        smoke_run.run_dir,
        "--scene",
        f"{smoke_run.shards}:clip_000003",
        "--camera",
        "dolly_in",
        "--prompt",
        "A dog runs in a room",
        "--steps",
        3,
        "--seed",
        5,
        "--out",
        tmp_path / "b.mp4",
    )
    assert again.returncode == 0 and np.array_equal(read_mp4(tmp_path / "b.mp4")[0], frames)  # seeded


def test_sample_from_a_folder_with_ema_weights(smoke_run, tmp_path):
    folder = tmp_path / "scene"
    folder.mkdir()
    for i, colour in enumerate([(200, 30, 30), (30, 200, 30)]):
        Image.new("RGB", (100, 80), colour).save(folder / f"view_{i}.jpg")  # another size: cropped, resized
    trajectory = tmp_path / "path.json"
    trajectory.write_text(json.dumps({"c2w": np.repeat(np.eye(4)[None], 5, 0).tolist(), "fov": 60}))
    done = sample(
        smoke_run.step_dir,
        "--scene",
        folder,
        "--camera",
        trajectory,
        "--prompt",
        "a red room",
        "--steps",
        2,
        "--ema",
        "--out",
        tmp_path / "c.mp4",
    )
    assert done.returncode == 0, done.stderr[-2000:]
    sidecar = json.loads((tmp_path / "c.json").read_text())
    assert sidecar["weights"] == "ema" and sidecar["scene_images"] == ["view_0.jpg", "view_1.jpg"]
    assert sidecar["fov"] == 60 and read_mp4(tmp_path / "c.mp4")[0].shape == (5, 64, 64, 3)


def test_an_anchored_model_samples_a_shard_scene_with_its_cameras(smoke_run, tmp_path):
    """A model with scene anchoring (here the smoke checkpoint with its zero-initialised pose embedding) gets
    the shard sample's scene cameras; a preset trajectory is moved to start where the sample's clip starts."""
    from cinescene.config import load_config
    from cinescene.sampling.inputs import ShardSamples
    from cinescene.sampling.spec import training_spec

    out = tmp_path / "anchored.mp4"
    done = sample(
        smoke_run.run_dir,
        "model.scene.pose_embedding=true",
        "--scene",
        f"{smoke_run.shards}:clip_000003",
        "--camera",
        "dolly_in",
        "--steps",
        2,
        "--out",
        out,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    sidecar = json.loads(out.with_suffix(".json").read_text())
    assert sidecar["scene_anchoring"] == "the scene cameras of sample clip_000003"
    cfg, _ = load_config(REPO / "configs/experiments/smoke.yaml", [f"data.train_shards={smoke_run.shards}"])
    samples = ShardSamples(smoke_run.shards, training_spec(cfg), cfg.model)
    first = samples.read(samples.index_of("clip_000003")).cameras[0]
    assert np.allclose(np.array(sidecar["cameras_c2w"][0]), first[:3], atol=1e-5)
    plain = sample(
        smoke_run.run_dir,
        "--scene",
        f"{smoke_run.shards}:clip_000003",
        "--camera",
        "dolly_in",
        "--steps",
        2,
        "--out",
        tmp_path / "plain.mp4",
    )
    assert (
        plain.returncode == 0 and json.loads((tmp_path / "plain.json").read_text())["scene_anchoring"] is None
    )


@pytest.mark.parametrize(
    "case, status, message",
    [
        ("missing checkpoint", 1, "checkpoint not found"),
        ("unknown preset", 1, "unknown camera preset 'zoom'"),
        ("unknown key", 1, "no sample 'clip_999'"),
        ("no scene", 1, "neither a folder of images nor SHARDS:KEY"),
        ("too many images", 1, "the model takes 1 to 6"),
        ("bad steps", 2, "--steps: expected a value in [1, 1000]"),
        ("no camera", 2, "--camera: required"),
        ("anchored, no scene cameras", 1, "give the scene images' cameras with --scene-cameras"),
        ("anchored, wrong scene cameras", 1, "1 cameras for 2 scene images"),
    ],
)
def test_mistakes_are_one_line(smoke_run, tmp_path, capsys, case, status, message):
    """In process: every check runs before the model is built, so the command line's own main is enough."""
    from cinescene.launch.cli import main

    ckpt, scene = smoke_run.run_dir, f"{smoke_run.shards}:clip_000001"
    args = {
        "missing checkpoint": [tmp_path / "nope", "--scene", scene],
        "unknown preset": [ckpt, "--scene", scene, "--camera", "zoom"],
        "unknown key": [ckpt, "--scene", f"{smoke_run.shards}:clip_999"],
        "no scene": [ckpt, "--scene", tmp_path / "nothing", "--camera", "static", "--prompt", "x"],
        "too many images": [ckpt, "--scene", tmp_path / "many", "--camera", "static", "--prompt", "x"],
        "bad steps": [ckpt, "--scene", scene, "--steps", 0],
        "no camera": [ckpt, "--scene", tmp_path / "few", "--prompt", "x"],
        "anchored, no scene cameras": [
            ckpt,
            "model.scene.pose_embedding=true",
            "--scene",
            tmp_path / "few",
            "--camera",
            "static",
            "--prompt",
            "x",
        ],
        "anchored, wrong scene cameras": [
            ckpt,
            "model.scene.pose_embedding=true",
            "--scene",
            tmp_path / "few",
            "--camera",
            "static",
            "--prompt",
            "x",
            "--scene-cameras",
            tmp_path / "one.json",
        ],
    }[case]
    (tmp_path / "one.json").write_text(json.dumps({"c2w": [np.eye(4).tolist()]}))
    for name, count in (("many", 7), ("few", 2)):
        (tmp_path / name).mkdir()
        for i in range(count):
            Image.new("RGB", (8, 8)).save(tmp_path / name / f"{i}.png")
    code = main(["sample", *map(str, args), "--out", str(tmp_path / "x.mp4")])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "cinescene sample:" in line]
    assert code == status and len(lines) == 1 and message in lines[0], err[-2000:]
    assert "Traceback" not in err and not (tmp_path / "x.mp4").exists()


@pytest.mark.gpu
def test_sample_on_a_gpu_in_bf16_with_the_fused_attention_and_the_context_cache(smoke_run, tmp_path):
    done = sample(
        smoke_run.run_dir,
        "--scene",
        f"{smoke_run.shards}:clip_000002",
        "--steps",
        3,
        "--device",
        "cuda",
        "--dtype",
        "bf16",
        "--out",
        tmp_path / "g.mp4",
        "model.attention.mask=context_readonly",
        "model.attention.backend=fused",
        gpu=True,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    sidecar = json.loads((tmp_path / "g.json").read_text())
    assert sidecar["dtype"] == "bfloat16" and sidecar["context_cache"] == "on" and sidecar["device"] == "cuda"
    assert read_mp4(tmp_path / "g.mp4")[0].shape == (5, 64, 64, 3)
