"""The training eval hook on the README's smoke job (2 local ranks, ZeRO-3 over gloo, EMA on).

One run with the hook (every 10 steps, 2 held-out samples) gets SIGUSR1 while its first evaluation runs:
the evaluation is abandoned, the run saves at that step boundary and exits 124; resumed, it evaluates at the
last step. Against a run without the hook it ends with bit-identical weights and losses (the hook swaps the
EMA in and out, uses the model in eval mode and touches no RNG a training step reads). The evaluation is
logged to metrics.jsonl and to the offline W&B run (read back from its files), its mp4s are written, and its
numbers equal those `cinescene eval --ema` computes from the same checkpoint.

ZeRO-3 keeps parameters under ``parallel.param_persistence_threshold`` whole on every rank; the runs set it to
1000 elements, so the tiny model has both kinds (weights partitioned, biases and norms persistent) and the
EMA swap is checked on both.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cinescene.ckpt.weights import weights_digest
from cinescene.provenance import git_state
from tests.fixtures.video import read_mp4
from tests.fixtures.wandb_files import (
    read_artifacts,
    read_history,
    read_metric_definitions,
    read_run_starts,
    read_summary,
)

from .conftest import REPO, finish, run_env, start

pytestmark = [pytest.mark.slow, pytest.mark.dist]

STEPS, EVERY = 20, 10
METRICS = ["psnr", "ssim", "bg_psnr", "bg_ssim"]


def train_cmd(run_dir: Path, shards: Path, *extra: str):
    return [
        sys.executable,
        "-m",
        "cinescene",
        "train",
        "configs/experiments/smoke.yaml",
        "--nproc",
        "2",
        f"run.dir={run_dir}",
        f"data.train_shards={shards}",
        f"train.max_steps={STEPS}",
        f"checkpoint.every_steps={EVERY}",
        "parallel.param_persistence_threshold=1000",
        *extra,
    ]


def eval_args(heldout: Path):
    return [
        f"eval.every_steps={EVERY}",
        "eval.num_samples=2",
        f"eval.data={heldout}",
        "eval.sample_steps=10",
        f"eval.metrics=[{','.join(METRICS)}]",
    ]


def rows(run_dir: Path):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def final_step(run_dir: Path) -> Path:
    checkpoints = run_dir / "checkpoints"
    return checkpoints / (checkpoints / "latest").read_text().strip()


def wait_for(path: Path, proc: subprocess.Popen, timeout=300) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, f"the run ended before {path} appeared"
        assert time.monotonic() < deadline, f"no {path} within {timeout} s"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def runs(smoke_run, heldout_shards, tmp_path_factory):
    root = tmp_path_factory.mktemp("eval_hook")
    off, on, log = root / "off", root / "on", root / "run.log"
    staging = {"WANDB_DATA_DIR": str(root / "wandb_data")}  # where W&B stages the table's videos
    assert finish(start(train_cmd(off, smoke_run.shards, "tracking.wandb.mode=disabled"), log)) == 0, (
        log.read_text()[-3000:]
    )

    proc = start(train_cmd(on, smoke_run.shards, *eval_args(heldout_shards)), log, **staging)
    wait_for(on / "eval" / f"step_{EVERY:08d}" / "samples", proc)  # the first evaluation has begun
    os.kill(proc.pid, signal.SIGUSR1)  # the launcher forwards it to the ranks
    assert finish(proc) == 124, log.read_text()[-3000:]
    preempted = log.read_text()
    assert finish(start(train_cmd(on, smoke_run.shards, *eval_args(heldout_shards)), log, **staging)) == 0, (
        log.read_text()[-3000:]
    )
    assert list((root / "wandb_data").rglob("*"))
    return off, on, preempted, log.read_text(), heldout_shards


def test_a_preemption_during_an_evaluation_saves_at_that_step(runs):
    _, on, preempted, text, _ = runs
    assert f"eval at step {EVERY} abandoned" in preempted and f"saving at step {EVERY}" in preempted
    assert f"resumed from {on}/checkpoints/step_{EVERY:08d}" in text
    assert "Traceback" not in text


def test_training_with_the_hook_ends_bit_identical(runs):
    off, on, _, _, _ = runs
    assert [r["loss"] for r in rows(on)] == [r["loss"] for r in rows(off)]
    assert [r["step"] for r in rows(on)] == list(range(1, STEPS + 1))  # one row per step, eval included
    digest_off, digest_on = weights_digest(final_step(off)), weights_digest(final_step(on))
    print(f"\nfinal weights sha256: hook off {digest_off}\n                      hook on  {digest_on}")
    assert digest_off == digest_on


def test_metrics_go_to_jsonl_and_the_offline_wandb_run(runs):
    _, on, _, _, _ = runs
    by_step = {r["step"]: r for r in rows(on)}
    last = by_step[STEPS]
    for name in METRICS:
        assert isinstance(last[f"eval/{name}"], float), name
    assert 0 < last["eval/psnr"] < 40 and 0 < last["eval/time_share"] < 1 and last["eval/seconds"] > 0
    assert (
        "eval/psnr" not in by_step[EVERY] and by_step[EVERY]["eval/seconds"] > 0
    )  # abandoned: its cost only
    assert not any(k.startswith("eval/") for s, r in by_step.items() if s not in (EVERY, STEPS) for k in r)

    history = read_history(on)
    # Every eval/* series is plotted against the training step, which every row carries.
    assert read_metric_definitions(on)["eval/*"] == "trainer/step"
    assert all(row["trainer/step"] == step for step, row in history.items())
    starts = read_run_starts(on)  # one per start of the run: the preempted one and its resume
    assert len(starts) == 2 and all(s["git_commit"] == (git_state()["commit"] or "") for s in starts)
    assert starts[-1]["config"]["train"]["max_steps"] == STEPS
    assert read_summary(on)["checkpoint/path"] == str(final_step(on))
    for name in METRICS + ["seconds"]:
        assert history[STEPS][f"eval/{name}"] == pytest.approx(last[f"eval/{name}"])
    table, sheet = media(history[STEPS], "eval/videos"), media(history[STEPS], "eval/contact_sheet")
    assert table["_type"] == "table-file" and table["nrows"] == 2 and sheet["_type"] == "image-file"
    assert list(on.glob(f"wandb/offline-run-*/files/{sheet['path']}"))
    assert all(media(history[s], "eval/videos") == {} for s in history if s != STEPS)
    # The table's videos travel in a run_table artifact, staged until `wandb sync`.
    (artifact,) = [a for a in read_artifacts(on) if "eval/videos.table.json" in a["files"]]
    content = json.loads(Path(artifact["files"]["eval/videos.table.json"]).read_text())
    assert content["columns"] == ["key", "prompt", "ground truth", "generated"] and len(content["data"]) == 2
    videos = [cell for row in content["data"] for cell in row[2:]]
    assert all(cell["_type"] == "video-file" for cell in videos) and len({c["sha256"] for c in videos}) == 4
    assert all(read_mp4(artifact["files"][c["path"]])[0].shape == (5, 64, 64, 3) for c in videos)
    # Per sample, under its key: the generated video beside the ground truth, and the camera trajectory.
    keys = [row[0] for row in content["data"]]
    for key in keys:
        pair, plot = (
            media(history[STEPS], f"eval/side_by_side/{key}"),
            media(history[STEPS], f"eval/trajectory/{key}"),
        )
        assert pair["_type"] == "video-file" and plot["_type"] == "html-file", (pair, plot)
        (pair_file,) = on.glob(f"wandb/offline-run-*/files/{pair['path']}")
        assert read_mp4(pair_file)[0].shape == (5, 14 + 64, 2 * 64 + 2, 3)  # a title line over the two
        (plot_file,) = on.glob(f"wandb/offline-run-*/files/{plot['path']}")
        assert "<svg" in plot_file.read_text() and ">requested<" in plot_file.read_text()
    assert not any(
        k.startswith(("eval/side_by_side/", "eval/trajectory/"))
        for s in history
        if s != STEPS
        for k in history[s]
    )


def media(row: dict, key: str) -> dict:
    """A logged W&B object's fields (history rows hold them flattened, as ``key/field``)."""
    return {k[len(key) + 1 :]: v for k, v in row.items() if k.startswith(key + "/")}


def test_videos_and_report_are_written_and_match_cinescene_eval(runs, tmp_path):
    _, on, _, _, heldout = runs
    out = on / "eval" / f"step_{STEPS:08d}"
    report = json.loads((out / "metrics.json").read_text())
    assert report["weights"] == "ema" and report["step"] == STEPS and len(report["samples"]) == 2
    for sample in report["samples"]:
        frames, metadata = read_mp4(out / sample["video"])
        assert frames.shape == (5, 64, 64, 3) and metadata["step"] == STEPS and metadata["weights"] == "ema"
        assert read_mp4(on / "eval" / "ground_truth" / f"{sample['key']}.mp4")[0].shape == (5, 64, 64, 3)
    assert (out / "contact_sheet.png").is_file() and (out / "table.md").is_file()
    assert (out / "report.html").is_file() and report["samples"][0]["ground_truth"].startswith(
        "../ground_truth/"
    )

    # The same samples from the saved step through the command line: the hook sampled with the EMA weights.
    cli = tmp_path / "cli"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "cinescene",
            "eval",
            str(final_step(on)),
            "--ema",
            "--data",
            str(heldout),
            "--out",
            str(cli),
            "--num",
            "2",
            "--steps",
            "10",
            "--metrics",
            ",".join(METRICS),
            "--nproc",
            "1",
        ],
        cwd=REPO,
        env=run_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    theirs = {s["key"]: s["metrics"] for s in json.loads((cli / "metrics.json").read_text())["samples"]}
    ours = {s["key"]: s["metrics"] for s in report["samples"]}
    assert set(theirs) == set(ours)
    for key in ours:
        for name in METRICS:
            assert ours[key][name] == pytest.approx(theirs[key][name], rel=1e-4), (key, name)
