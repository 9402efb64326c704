"""report.html of an evaluation and of an ablation: what it holds, that it is self-contained, and that it
works in a real browser (headless Chromium: no console errors, every video playable, one table row per
sample or arm, nothing fetched but the page and its data: URIs)."""

from __future__ import annotations

import json
import os
import re
import shutil

import pytest

from cinescene.data.synth.generate import render_synthetic_clip
from cinescene.eval.ablation_report import table_rows, write_html
from cinescene.eval.html_report import REPORT

from .browser import find_chromium, open_page
from .evaluation_dir import write_evaluation

# CI installs Chromium and sets this, so that the browser test cannot be skipped there.
REQUIRE_BROWSER = "CINESCENE_REQUIRE_BROWSER"


@pytest.fixture(scope="module")
def clips():
    return [render_synthetic_clip(i, 3, 9, (32, 32), 2) for i in range(3)]


@pytest.fixture(scope="module")
def evaluation(clips, tmp_path_factory):
    out = tmp_path_factory.mktemp("evaluation")
    return out, write_evaluation(out, clips, label="run step 7")


@pytest.fixture(scope="module")
def ablation(clips, tmp_path_factory):
    """Two arms and a floor over the same clips, and the ablation.json that names them."""
    import numpy as np

    root = tmp_path_factory.mktemp("ablation")
    evaluations = {
        "arm0": write_evaluation(root / "arm0", clips, generated=lambda c: np.zeros_like(c.video[::4])),
        "arm1": write_evaluation(root / "arm1", clips),
        "floor": write_evaluation(root / "floor", clips, generated=lambda c: c.video[::4]),
    }

    def summary(name):
        data = evaluations[name]
        kept = {k: data[k] for k in ("mean", "count", "sfm_failures", "sfm_attempts", "settings")}
        return {
            **kept,
            "per_sample": {r["key"]: r["metrics"] for r in data["samples"]},
            "dir": str(root / name),
        }

    def arm(index, camera, scene):
        return {
            "index": index,
            "label": f"arm {index}",
            "camera": camera,
            "scene": {
                "enabled": scene,
                "vggt_tokens": False,
                "pixel_context": scene,
                "pose_embedding": False,
            },
            "steps": 2,
            "train": {"wall_s": 60.0},
            "final_loss": 0.5,
            "eval": summary(f"arm{index}"),
            "attention": None,
        }

    results = {
        "name": "camera",
        "command": "cinescene bench ablation x.yaml",
        "date": "2026-12-06",
        "commit": "abc",
        "device": "CPU",
        "metrics": ["psnr", "bg_psnr"],
        "budget": {
            "steps": 2,
            "global_batch": 2,
            "lr": 0.1,
            "seed": 0,
            "train_clips": 4,
            "nproc": 1,
            "model": "tiny",
            "data": "9 frames",
            "heldout": "h",
            "heldout_samples": 3,
            "sample_steps": 2,
            "cfg_scale": 5.0,
            "ema": True,
        },
        "arms": [arm(0, False, False), arm(1, True, False)],
        "floors": [{"kind": "ground_truth", "label": "ground truth", "eval": summary("floor")}],
        "goals": [],
    }
    write_html(root, results)
    return root, results


def _rows(html: str, css: str) -> int:
    return len(re.findall(rf'<tr class="{css}">', html))


def test_the_evaluation_report_holds_the_table_and_every_sample(evaluation, clips):
    out, data = evaluation
    html = (out / REPORT).read_text()
    assert _rows(html, "sample") == len(clips) and _rows(html, "paper") == 1 and _rows(html, "mean") == 1
    assert "run step 7" in html and "CineScene (paper)" in html
    for clip in clips:
        section = html.split(f'id="sample-{clip.clip_id}"')[1].split("</section>")[0]
        assert section.count("data:video/mp4;base64,") == 2  # the ground truth and the generated video
        assert section.count("data:image/png;base64,") == 1  # the scene images
        assert section.count("<svg") == 1 and "requested" in section
    assert "SfM failed (no reconstruction)" in html  # odd samples' SfM failed, and the plot says so
    assert f"{data['sfm_attempts'] - data['sfm_failures']} of {data['sfm_attempts']}" in html


def test_the_report_is_self_contained(evaluation, tmp_path):
    out, _ = evaluation
    html = (out / REPORT).read_text()
    assert "<script" not in html and "http://" not in html.replace("http://www.w3.org/2000/svg", "")
    assert "https://" not in html and "<link" not in html
    sources = re.findall(r'src="([^"]*)"', html)
    assert sources and all(s.startswith("data:") for s in sources)
    # Moved away from the evaluation directory, it still holds everything.
    moved = tmp_path / "elsewhere" / REPORT
    moved.parent.mkdir()
    shutil.copy(out / REPORT, moved)
    assert moved.read_text() == html


def test_text_from_the_data_is_escaped(clips, tmp_path):
    clip = clips[0]
    clip = type(clip)(**{**vars(clip), "prompt": 'A <script>alert("x")</script> dog'})
    write_evaluation(tmp_path, [clip])
    html = (tmp_path / REPORT).read_text()
    assert "<script>" not in html and "&lt;script&gt;" in html


def test_a_record_cannot_put_another_file_into_the_page(clips, tmp_path):
    from cinescene.eval.html_report import write_eval_report

    data = write_evaluation(tmp_path / "eval", clips[:1])
    secret = tmp_path / "secret.png"
    secret.write_bytes(b"not for the page")
    data["samples"][0]["video"] = "../../secret.png"
    data["samples"][0]["ground_truth"] = str(secret)
    write_eval_report(tmp_path / "eval", data, "x")
    html = (tmp_path / "eval" / REPORT).read_text()
    assert "bm90IGZvciB0aGUgcGFnZQ" not in html and html.count("(no video)") == 2


def test_records_hold_the_cameras_the_plot_draws(evaluation, clips):
    out, data = evaluation
    for record, clip in zip(data["samples"], clips):
        assert len(record["cameras"]) == len(clip.c2w[::4])
        assert (record["sfm"]["recovered"] is None) == bool(record["sfm"]["failure"])
        for name in ("video", "ground_truth", "side_by_side", "scene_images"):
            assert (out / record[name]).is_file(), name


def test_the_ablation_report_has_one_row_per_arm_then_the_floors(ablation):
    root, results = ablation
    html = (root / REPORT).read_text()
    assert _rows(html, "arm") == 2 and _rows(html, "floor") == 1
    header, rows = table_rows(results)
    assert [css for _, css in rows] == ["arm", "arm", "floor"] and rows[2][0][0] == "floor: ground truth"
    section = html.split('id="sample-clip_000000"')[1].split("</section>")[0]
    # The ground truth and each arm's video; the floor's video is the ground truth, not shown twice.
    assert section.count("data:video/mp4;base64,") == 3 and section.count("<svg") == 1
    assert "arm 0" in section and "arm 1" in section and "floor: ground truth" in section
    json.dumps(results)  # what ablation.json holds


def _browser() -> str:
    chromium = find_chromium()
    if chromium is None:
        if os.environ.get(REQUIRE_BROWSER) == "1":
            pytest.fail(f"{REQUIRE_BROWSER}=1 but no Chromium on PATH")
        pytest.skip("no Chromium on PATH (Debian: apt-get install chromium)")
    return chromium


@pytest.mark.slow
@pytest.mark.browser
@pytest.mark.parametrize("which", ["evaluation", "ablation"])
def test_the_report_works_in_a_browser(which, evaluation, ablation, clips, tmp_path):
    chromium = _browser()
    root = evaluation[0] if which == "evaluation" else ablation[0]
    rows = ("samples", len(clips)) if which == "evaluation" else ("arms", 3)
    with open_page(root / REPORT, chromium) as page:
        videos = page.wait_until(
            "(() => { const v = Array.from(document.querySelectorAll('video'));"
            " return v.length > 0 && v.every(e => e.readyState >= 2) ? v.length : 0; })()",
            timeout=60,
        )
        states = page.evaluate("Array.from(document.querySelectorAll('video')).map(v => v.readyState)")
        assert videos and all(state >= 2 for state in states), states
        assert page.evaluate("Array.from(document.querySelectorAll('video')).every(v => !v.error)")
        assert page.evaluate(f"document.querySelectorAll('#{rows[0]} tbody tr').length") == rows[1]
        # Every frame decodes: the last frame of a video can be shown.
        assert page.evaluate(
            "Promise.all(Array.from(document.querySelectorAll('video')).map(v => new Promise(ok => {"
            " v.pause(); v.onseeked = () => ok(v.currentTime); v.currentTime = v.duration * 0.99; })))"
            ".then(times => times.every(t => t > 0))",
            timeout=60,
        )
        page.screenshot(tmp_path / "page.png", 1000)
        errors = page.console_errors()
        urls = page.requested_urls()
    assert errors == []
    assert urls and all(u.startswith(("file:", "data:")) for u in urls), [u[:60] for u in urls]
    assert (tmp_path / "page.png").stat().st_size > 10_000
