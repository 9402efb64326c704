"""`cinescene bench floor`: the held-out ground truth scored as a generated video, written as eval does."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.fixtures.checkpoint import REPO, cli_env

SMOKE = REPO / "configs/experiments/smoke.yaml"


def bench_floor(*args, timeout=600):
    return subprocess.run(
        [sys.executable, "-m", "cinescene", "bench", "floor", str(SMOKE), *map(str, args)],
        cwd=REPO,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.slow
def test_the_floors_of_held_out_clips(tmp_path):
    overrides = [
        f"data.train_shards={tmp_path / 'absent'}",
        f"eval.data={tmp_path / 'heldout'}",
        "data.synth.size=[32,32]",
        "data.synth.frames=9",
        "eval.metrics=[psnr,bg_psnr,cam_mc]",
    ]
    done = bench_floor(*overrides, "--out", tmp_path / "floor", "--heldout-clips", 2)
    assert done.returncode == 0, done.stderr[-3000:]
    truth = json.loads((tmp_path / "floor/ground_truth/metrics.json").read_text())
    codec = json.loads((tmp_path / "floor/codec/metrics.json").read_text())  # pixel pool 4 loses detail
    assert truth["mean"]["psnr"] == "inf" and truth["mean"]["bg_psnr"] == "inf"
    assert 10 < codec["mean"]["psnr"] < 60 and len(codec["samples"]) == 2
    assert truth["sfm_attempts"] == 2 and truth["weights"] == "no"
    for record in truth["samples"]:
        assert (
            len(record["cameras"]) == 3
            and (tmp_path / "floor/ground_truth" / record["ground_truth"]).is_file()
        )
    assert (
        "| ground truth | inf | inf |" in done.stdout
        and "ground truth through the pixel proxy" in done.stdout
    )
    assert (tmp_path / "floor/codec/report.html").is_file() and "Traceback" not in done.stderr

    # An --out in the way of the floors is one line, and what is there is left alone.
    (tmp_path / "file").write_text("mine")
    again = bench_floor(*overrides, "--out", tmp_path / "file", "--heldout-clips", 2)
    assert again.returncode == 1 and "cannot write the floor into" in again.stderr, again.stderr
    assert (tmp_path / "file").read_text() == "mine"


def test_a_bad_flag_is_one_line(tmp_path):
    done = bench_floor("--out", tmp_path, "--heldout-clips", 0)
    assert done.returncode == 2 and "--heldout-clips" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_mistakes_are_one_line(tmp_path):
    missing = bench_floor("--out", tmp_path, f"eval.data={tmp_path / 'none'}", "data.generate=false")
    assert missing.returncode == 1 and "holds no manifest.json" in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1, missing.stderr
