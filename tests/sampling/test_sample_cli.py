"""`cinescene sample` on a trained smoke checkpoint: the mp4, its metadata and JSON, the PNG, and the errors."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from cinescene.sampling.video import read_mp4
from tests.fixtures.checkpoint import REPO, cli_env

pytestmark = [pytest.mark.slow, pytest.mark.dist]


def sample(*args, timeout=300, gpu=False):
    return subprocess.run([sys.executable, "-m", "cinescene", "sample", *map(str, args)], cwd=REPO,
                          env=cli_env(gpu), capture_output=True, text=True, timeout=timeout)


def test_sample_from_shards_writes_an_mp4_with_its_settings(smoke_run, tmp_path):
    out = tmp_path / "a.mp4"
    done = sample(smoke_run.run_dir, "--scene", f"{smoke_run.shards}:clip_000003", "--camera", "dolly_in",
                  "--prompt", "A dog runs in a room", "--steps", 3, "--seed", 5, "--out", out, "--png",
                  tmp_path / "a.png")
    assert done.returncode == 0, done.stderr[-2000:]
    frames, metadata = read_mp4(out)
    assert frames.shape == (5, 64, 64, 3)                 # 17 frames -> 5 latent frames of the pixel proxy
    sidecar = json.loads(out.with_suffix(".json").read_text())
    assert metadata["seed"] == sidecar["seed"] == 5 and sidecar["steps"] == 3 and sidecar["codec"]
    assert sidecar["prompt"] == "A dog runs in a room" and sidecar["camera"] == "preset dolly_in x1"
    assert sidecar["step"] == 4 and sidecar["weights"] == "trained" and len(sidecar["cameras_c2w"]) == 5
    assert Image.open(tmp_path / "a.png").size == (5 * 64 + 4 * 2, 64)
    assert f"wrote {out}" in done.stdout and "Traceback" not in done.stderr

    again = sample(smoke_run.run_dir, "--scene", f"{smoke_run.shards}:clip_000003", "--camera", "dolly_in",
                   "--prompt", "A dog runs in a room", "--steps", 3, "--seed", 5, "--out", tmp_path / "b.mp4")
    assert again.returncode == 0 and np.array_equal(read_mp4(tmp_path / "b.mp4")[0], frames)   # seeded


def test_sample_from_a_folder_with_ema_weights(smoke_run, tmp_path):
    folder = tmp_path / "scene"
    folder.mkdir()
    for i, colour in enumerate([(200, 30, 30), (30, 200, 30)]):
        Image.new("RGB", (100, 80), colour).save(folder / f"view_{i}.jpg")       # another size: cropped, resized
    trajectory = tmp_path / "path.json"
    trajectory.write_text(json.dumps({"c2w": np.repeat(np.eye(4)[None], 5, 0).tolist(), "fov": 60}))
    done = sample(smoke_run.step_dir, "--scene", folder, "--camera", trajectory, "--prompt", "a red room",
                  "--steps", 2, "--ema", "--out", tmp_path / "c.mp4")
    assert done.returncode == 0, done.stderr[-2000:]
    sidecar = json.loads((tmp_path / "c.json").read_text())
    assert sidecar["weights"] == "ema" and sidecar["scene_images"] == ["view_0.jpg", "view_1.jpg"]
    assert sidecar["fov"] == 60 and read_mp4(tmp_path / "c.mp4")[0].shape == (5, 64, 64, 3)


@pytest.mark.parametrize("case, status, message", [
    ("missing checkpoint", 1, "checkpoint not found"),
    ("unknown preset", 1, "unknown camera preset 'zoom'"),
    ("unknown key", 1, "no sample 'clip_999'"),
    ("no scene", 1, "neither a folder of images nor SHARDS:KEY"),
    ("too many images", 1, "the model takes 1 to 6"),
    ("bad steps", 2, "--steps: expected a value > 0"),
    ("no camera", 2, "--camera: required"),
])
def test_mistakes_are_one_line(smoke_run, tmp_path, capsys, case, status, message):
    """In process: every check runs before the model is built, so the command line's own main is enough."""
    from cinescene.launch.cli import main

    ckpt, scene = smoke_run.run_dir, f"{smoke_run.shards}:clip_000001"
    args = {"missing checkpoint": [tmp_path / "nope", "--scene", scene],
            "unknown preset": [ckpt, "--scene", scene, "--camera", "zoom"],
            "unknown key": [ckpt, "--scene", f"{smoke_run.shards}:clip_999"],
            "no scene": [ckpt, "--scene", tmp_path / "nothing", "--camera", "static", "--prompt", "x"],
            "too many images": [ckpt, "--scene", tmp_path / "many", "--camera", "static", "--prompt", "x"],
            "bad steps": [ckpt, "--scene", scene, "--steps", 0],
            "no camera": [ckpt, "--scene", tmp_path / "few", "--prompt", "x"]}[case]
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
    done = sample(smoke_run.run_dir, "--scene", f"{smoke_run.shards}:clip_000002", "--steps", 3, "--device", "cuda",
                  "--dtype", "bf16", "--out", tmp_path / "g.mp4", "model.attention.mask=context_readonly",
                  "model.attention.backend=fused", gpu=True)
    assert done.returncode == 0, done.stderr[-2000:]
    sidecar = json.loads((tmp_path / "g.json").read_text())
    assert sidecar["dtype"] == "bfloat16" and sidecar["context_cache"] == "on" and sidecar["device"] == "cuda"
    assert read_mp4(tmp_path / "g.mp4")[0].shape == (5, 64, 64, 3)
