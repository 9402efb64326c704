"""`cinescene eval` on a trained smoke checkpoint with 2 local ranks: every output, the one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cinescene.config.eval import METRIC_NAMES
from tests.fixtures.checkpoint import REPO, cli_env
from tests.fixtures.video import read_mp4

pytestmark = [pytest.mark.slow, pytest.mark.dist]


def cinescene_eval(*args, timeout=600):
    return subprocess.run(
        [sys.executable, "-m", "cinescene", "eval", *map(str, args)],
        cwd=REPO,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def evaluated(smoke_run, heldout_shards, tiny_clip, tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    out = root / "out"
    done = cinescene_eval(
        smoke_run.run_dir,
        "--data",
        heldout_shards,
        "--out",
        out,
        "--num",
        3,
        "--steps",
        2,
        "--nproc",
        2,
        f"eval.clip.weights={tiny_clip}",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return out, done


def test_metrics_json_holds_every_configured_metric(evaluated):
    out, done = evaluated
    data = json.loads((out / "metrics.json").read_text())
    assert data["metrics"] == list(METRIC_NAMES) and set(data["mean"]) == set(METRIC_NAMES)
    assert data["step"] == 4 and data["settings"]["steps"] == 2 and len(data["samples"]) == 3
    assert data["absent"] == {} and data["sfm_attempts"] == 3 and 0 <= data["sfm_failures"] <= 3
    for name in ("psnr", "ssim", "bg_psnr", "bg_ssim", "clip_v", "clip_t", "mat_pix"):
        assert data["count"][name] == 3 and isinstance(data["mean"][name], float), name
        values = [s["metrics"][name] for s in data["samples"]]
        assert data["mean"][name] == pytest.approx(np.mean(values))
    assert data["count"]["rot_err"] == 3 - data["sfm_failures"]
    for sample in data["samples"]:
        assert sample["sfm"]["frames"] == 5 and len(sample["per_frame"]["psnr"]) == 5
        assert 0 < sample["metrics"]["psnr"] < 40 and -1 <= sample["metrics"]["clip_t"] <= 1


def test_table_videos_contact_sheet_and_logs(evaluated):
    out, done = evaluated
    table = (out / "table.md").read_text()
    header = table.splitlines()[0]
    for title in ("Mat.Pix.", "CLIP-V", "PSNR", "SSIM", "RotErr", "TransErr", "CamMC", "CLIP-T", "BG-PSNR"):
        assert title in header
    assert "| CineScene (paper) | 4617.51 | 0.8633 | 14.51 |" in table and "step 4 |" in table
    assert table in done.stdout
    keys = [s["key"] for s in json.loads((out / "metrics.json").read_text())["samples"]]
    for key in keys:
        frames, metadata = read_mp4(out / "videos" / f"{key}.mp4")
        assert frames.shape == (5, 64, 64, 3) and metadata["key"] == key and metadata["steps"] == 2
    sheet = Image.open(out / "contact_sheet.png")
    assert sheet.height > 3 * 3 * 64 and sheet.width > 5 * 64  # 3 samples x (GT, generated, error)
    assert (out / "logs" / "rank0.log").is_file() and (out / "logs" / "rank1.log").is_file()
    assert "Traceback" not in done.stderr
    # report.html: one row per sample, each sample's ground truth, generated video and trajectories.
    html = (out / "report.html").read_text()
    assert html.count('<tr class="sample">') == 3 and html.count("<svg") == 3 and "report.html" in done.stdout
    for record in json.loads((out / "metrics.json").read_text())["samples"]:
        assert len(record["cameras"]) == 5 and "recovered" in record["sfm"]
        assert read_mp4(out / record["ground_truth"])[0].shape == (5, 64, 64, 3)
        assert read_mp4(out / record["side_by_side"])[0].shape == (5, 14 + 64, 2 * 64 + 2, 3)


def test_one_rank_without_clip_weights_and_an_unreadable_sample(
    evaluated, smoke_run, heldout_shards, tmp_path
):
    """The same samples on 1 rank give the same videos as on 2; missing CLIP weights are one line and absent
    metrics; a corrupt sample is skipped and reported."""
    import shutil

    from cinescene.data.manifest import load_manifest

    out, _ = evaluated
    shards = Path(shutil.copytree(heldout_shards, tmp_path / "shards"))
    bad = load_manifest(shards).samples()[1]
    with open(bad.shard, "r+b") as handle:  # one flipped byte: the sample's CRC fails
        handle.seek(bad.offset + bad.length // 2)
        byte = handle.read(1)
        handle.seek(-1, 1)
        handle.write(bytes([byte[0] ^ 0xFF]))
    done = cinescene_eval(
        smoke_run.run_dir,
        "--data",
        shards,
        "--out",
        tmp_path / "out",
        "--num",
        0,
        "--steps",
        2,
        "--nproc",
        1,
        "--metrics",
        "psnr,clip_t",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    warnings = [line for line in done.stderr.splitlines() if "eval.clip.weights is not set" in line]
    assert len(warnings) == 1 and "absent" in warnings[0]
    data = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert data["mean"]["clip_t"] is None and "eval.clip.weights" in data["absent"]["clip_t"]
    assert list(data["unreadable"]) == [bad.key] and "checksum" in data["unreadable"][bad.key]
    assert len(data["samples"]) == 3 and data["count"]["psnr"] == 3
    assert "unreadable and are left out" in (tmp_path / "out" / "table.md").read_text()
    two_ranks = {
        s["key"]: s["metrics"]["psnr"] for s in json.loads((out / "metrics.json").read_text())["samples"]
    }
    one_rank = {s["key"]: s["metrics"]["psnr"] for s in data["samples"]}
    shared = set(one_rank) & set(two_ranks)
    assert len(shared) >= 2 and all(one_rank[k] == two_ranks[k] for k in shared)  # noise per sample key


@pytest.fixture(scope="module")
def small_shards(tmp_path_factory):
    from cinescene.data.prepare import prepare
    from cinescene.data.synth import synthesize

    root = tmp_path_factory.mktemp("small")
    synthesize(root / "clips", clips=1, frames=17, size=(32, 32), scene_images=6, seed=2, show_progress=False)
    prepare(root / "clips", root / "shards", encoder="none", rank=0, world=1, show_progress=False)
    return root / "shards"


@pytest.mark.parametrize(
    "case, message",
    [
        ("missing checkpoint", "checkpoint not found"),
        ("other resolution", "holds 17 frames at 32x32; the model was trained on 17 frames at 64x64"),
        ("training data", "no held-out samples: all 8 samples"),
        ("no data", "no evaluation data: pass --data"),
    ],
)
def test_mistakes_exit_1_with_one_line(smoke_run, small_shards, tmp_path, capsys, case, message):
    """In process (the checks run before any rank starts, so the command line's own main is enough)."""
    from cinescene.launch.cli import main

    args = {
        "missing checkpoint": [tmp_path / "nope", "--data", small_shards],
        "other resolution": [smoke_run.run_dir, "--data", small_shards],
        "training data": [smoke_run.run_dir, "--data", smoke_run.shards],
        "no data": [smoke_run.run_dir],
    }[case]
    status = main(["eval", *map(str, args), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "cinescene eval:" in line]
    assert status == 1 and len(lines) == 1 and message in lines[0], err[-2000:]
    assert "Traceback" not in err and not (tmp_path / "out" / "metrics.json").exists()
