"""The Wan path end to end as a user runs it: each step one `cinescene` command started from the project root.

Tiny randomly initialised Wan VAE, umT5 + tokenizer and CLIP saved with ``save_pretrained``
(tests/fixtures/pretrained.py) stand in for the released weights; nothing else is a stand-in:

    data synth -> data prepare --encoder wan (training shards; held-out shards with their pixels)
    -> train (2 local ranks, `python -m cinescene` children) with the eval hook decoding the held-out
       samples through the Wan VAE and scoring CLIP-V/CLIP-T
    -> sample and eval from the run -> ckpt export
    -> the same job through `cinescene submit` on the dev cluster, preempted once and requeued: its
       final weights equal the local run's, tensor for tensor.

Every command runs with the project root as its working directory, so the project root is first on
the ranks' ``sys.path`` (the case where a folder of the repository could hide an installed package).
Select them with ``pytest -k "wan and end_to_end"``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from cinescene.ckpt.weights import weights_digest
from cinescene.data.manifest import load_manifest
from tests.fixtures.checkpoint import REPO, cli_env
from tests.fixtures.pretrained import TEXT_DIM, TEXT_LEN
from tests.fixtures.video import read_mp4

pytestmark = pytest.mark.slow

FRAMES, SIZE, SCENE_IMAGES = 9, 32, 3
LATENT_SHAPE = [16, (FRAMES - 1) // 4 + 1, SIZE // 8, SIZE // 8]  # Wan VAE: 16 channels, stride (4, 8, 8)
STEPS, CHECKPOINT_EVERY, EVAL_EVERY = 20, 5, 10
CLIP_METRICS = ("clip_v", "clip_t")


def cinescene(*args, timeout: float = 600) -> subprocess.CompletedProcess:
    """One `python -m cinescene ...` call from the project root; fails the test with its stderr."""
    done = subprocess.run(
        [sys.executable, "-m", "cinescene", *map(str, args)],
        cwd=REPO,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, f"cinescene {args[0]} exited {done.returncode}:\n{done.stderr[-4000:]}"
    return done


@dataclass
class WanData:
    shards: Path
    heldout: Path


@dataclass
class WanRun:
    config: Path
    run_dir: Path
    log: str  # the command's console

    @property
    def final_step(self) -> Path:
        return self.run_dir / "checkpoints" / f"step_{STEPS:08d}"


@pytest.fixture(scope="module")
def wan_data(tiny_wan, tmp_path_factory) -> WanData:
    root = tmp_path_factory.mktemp("wan_e2e_data")
    shape = ["--frames", FRAMES, "--size", SIZE, SIZE, "--scene-images", SCENE_IMAGES]
    cinescene("data", "synth", "--out", root / "clips", "--clips", 6, "--seed", 0, *shape)
    cinescene("data", "synth", "--out", root / "heldout_clips", "--clips", 3, "--seed", 1, *shape)
    encoders = ["--encoder", "wan", "--vae", tiny_wan, "--text-encoder", tiny_wan]
    cinescene("data", "prepare", "--src", root / "clips", "--out", root / "shards", *encoders)
    cinescene(
        "data",
        "prepare",
        "--src",
        root / "heldout_clips",
        "--out",
        root / "heldout",
        *encoders,
        "--keep-pixels",
    )
    return WanData(root / "shards", root / "heldout")


def write_config(path: Path, data: WanData, clip: Path) -> Path:
    """A user's experiment file: the tiny model on the Wan-encoded shards, the eval hook on held-out ones."""
    config = {
        "defaults": [str(REPO / "configs/experiments/smoke.yaml")],
        "run": {"name": "wan-e2e", "dir": str(path.parent / "run")},
        # Wan latents (16 channels) and the tiny umT5's embeddings, zero-padded to Wan's text length.
        "model": {
            "in_dim": 16,
            "out_dim": 16,
            "text_dim": TEXT_DIM,
            "text_len": TEXT_LEN,
            "data_shape": {
                "frames": FRAMES,
                "size": [SIZE, SIZE],
                "scene_images": SCENE_IMAGES,
                "encoder": "wan",
            },
        },
        "data": {"train_shards": str(data.shards), "generate": False, "scene_images": SCENE_IMAGES},
        "train": {"max_steps": STEPS},
        "checkpoint": {"every_steps": CHECKPOINT_EVERY},
        "eval": {
            "every_steps": EVAL_EVERY,
            "data": str(data.heldout),
            "num_samples": 2,
            "sample_steps": 2,
            "metrics": ["psnr", "ssim", *CLIP_METRICS],
            "clip": {"weights": str(clip)},
        },
    }
    path.write_text(json.dumps(config, indent=1))  # JSON is YAML
    return path


@pytest.fixture(scope="module")
def wan_run(wan_data, tiny_clip, tmp_path_factory) -> WanRun:
    root = tmp_path_factory.mktemp("wan_e2e_run")
    config = write_config(root / "wan_tiny.yaml", wan_data, tiny_clip)
    done = cinescene("train", config, "--nproc", 2)
    return WanRun(config, root / "run", done.stderr)


def mean_metrics(metrics_json: Path) -> dict:
    data = json.loads(metrics_json.read_text())
    assert data["absent"] == {}, data["absent"]
    return data["mean"]


def test_wan_end_to_end_prepare_writes_latents_and_text_embeddings(wan_data, tiny_wan):
    for shards, pixels in ((wan_data.shards, False), (wan_data.heldout, True)):
        manifest = load_manifest(shards)
        encoder = manifest.data["encoder"]
        assert manifest.encoder == "wan" and encoder["text_len"] == TEXT_LEN
        assert encoder["vae"] == str(tiny_wan / "vae") and encoder["text_encoder"] == str(
            tiny_wan / "text_encoder"
        )
        assert manifest.fields["latents.npy"]["shape"] == LATENT_SHAPE
        assert manifest.fields["text.npy"]["shape"] == [-1, TEXT_DIM]
        assert (
            "video.npy" in manifest.fields
        ) is pixels  # held-out shards keep the frames the metrics compare


@pytest.mark.dist
def test_wan_end_to_end_train_with_the_eval_hook(wan_run):
    assert "started 2 local ranks" in wan_run.log and f"done at step {STEPS}" in wan_run.log
    rows = [json.loads(line) for line in (wan_run.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    evaluated = [r for r in rows if "eval/clip_v" in r]
    assert [r["step"] for r in evaluated] == list(range(EVAL_EVERY, STEPS + 1, EVAL_EVERY))
    for step in range(EVAL_EVERY, STEPS + 1, EVAL_EVERY):
        out = wan_run.run_dir / "eval" / f"step_{step:08d}"
        mean = mean_metrics(out / "metrics.json")
        row = next(r for r in evaluated if r["step"] == step)
        for name in CLIP_METRICS:
            assert -1 <= mean[name] <= 1 and row[f"eval/{name}"] == pytest.approx(mean[name]), name
        videos = sorted((out / "videos").glob("*.mp4"))
        assert len(videos) == 2
        for video in videos:  # decoded from Wan latents by the VAE, at the data's size
            frames, _ = read_mp4(video)
            assert frames.shape == (FRAMES, SIZE, SIZE, 3) and frames.std() > 0


@pytest.mark.dist
def test_wan_end_to_end_sample_decodes_with_the_vae(wan_run, wan_data, tmp_path):
    key = load_manifest(wan_data.heldout).samples()[0].key
    video = tmp_path / "a.mp4"
    done = cinescene(
        "sample", wan_run.run_dir, "--scene", f"{wan_data.heldout}:{key}", "--out", video, "--steps", 2
    )
    assert f"wrote {video}" in done.stdout
    frames, metadata = read_mp4(video)
    assert frames.shape == (FRAMES, SIZE, SIZE, 3) and frames.dtype == np.uint8
    assert metadata["encoder"] == "wan" and metadata["step"] == STEPS and metadata["frames"] == FRAMES


@pytest.mark.dist
def test_wan_end_to_end_eval_reports_clip_v_and_clip_t(wan_run, wan_data, tmp_path):
    out = tmp_path / "eval"
    done = cinescene("eval", wan_run.run_dir, "--data", wan_data.heldout, "--out", out, "--steps", 2)
    mean = mean_metrics(out / "metrics.json")  # eval.clip.weights comes from the run's config
    assert all(isinstance(mean[name], float) and -1 <= mean[name] <= 1 for name in CLIP_METRICS), mean
    assert "CLIP-V" in done.stdout and "CLIP-T" in done.stdout
    for video in sorted((out / "videos").glob("*.mp4")):
        assert read_mp4(video)[0].shape == (FRAMES, SIZE, SIZE, 3)


@pytest.mark.dist
def test_wan_end_to_end_export_loads_in_diffusers(wan_run, tmp_path):
    import torch
    from diffusers import WanTransformer3DModel

    out = tmp_path / "exported"
    cinescene("ckpt", "export", wan_run.run_dir, "--format", "diffusers", "--out", out)
    model = WanTransformer3DModel.from_pretrained(out)
    assert model.config.in_channels == 16 and model.config.text_dim == TEXT_DIM
    with torch.no_grad():  # the trained DiT runs in stock diffusers on a Wan latent
        x = torch.randn(1, *LATENT_SHAPE)
        y = model(x, torch.tensor([500.0]), torch.randn(1, 7, TEXT_DIM), return_dict=False)[0]
    assert y.shape == x.shape and torch.isfinite(y).all()


@pytest.mark.slurm
@pytest.mark.dist
@pytest.mark.timeout(1800)  # a whole job with two starts, after the module's preparation and local run
def test_wan_end_to_end_submit_preempted_requeued_equals_the_local_run(wan_run, slurm, tmp_path):
    run_dir = tmp_path / "slurm_run"
    # Pinned to one node, whose jobs the preemption requeues (the other SLURM tests use the first node).
    node = slurm.nodes[-1]
    job = slurm.submit_run(
        [
            wan_run.config,
            "--nodes",
            "1",
            "--gpus-per-node",
            "0",
            f"run.dir={run_dir}",
            f"launch.slurm.extra=[--nodelist={node}]",
        ]
    )
    metrics = run_dir / "metrics.jsonl"
    slurm.wait_for(
        "the job to train 2 steps", lambda: metrics.exists() and metrics.read_text().count("\n") >= 2, 600
    )
    slurm.preempt(job)
    state = slurm.wait(job, timeout=900, poll=0.5)
    log = (run_dir / "slurm" / f"{job}.out").read_text()
    assert state == "COMPLETED", log[-4000:]
    slurm.sacct_states(job, ["PREEMPTED", "COMPLETED"])
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert rows[-1]["step"] == STEPS and rows[-1]["restarts"] == 1
    assert "resumed from" in (run_dir / "logs" / "rank0.log").read_text()
    assert mean_metrics(run_dir / "eval" / f"step_{STEPS:08d}" / "metrics.json").keys() >= set(CLIP_METRICS)
    assert weights_digest(run_dir / "checkpoints" / f"step_{STEPS:08d}") == weights_digest(wan_run.final_step)
