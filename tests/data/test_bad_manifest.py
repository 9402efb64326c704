"""A manifest.json that is valid JSON but not a shard manifest is one line naming what is wrong, in the
loader, `data inspect`, `data prepare` and `train`; prepare's own bookkeeping files are checked too."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from cinescene.data.manifest import MANIFEST, load_manifest, rank_manifest_name
from cinescene.data.prepare import prepare
from cinescene.errors import CineSceneError


def _edit(shards, change):
    path = shards / MANIFEST
    data = json.loads(path.read_text())
    data = change(data)
    path.write_text(json.dumps(data))


def _set(path, value):
    def change(data):
        node = data
        for part in path[:-1]:
            node = node[part]
        if value is KeyError:
            del node[path[-1]]
        else:
            node[path[-1]] = value
        return data

    return change


CASES = [
    (lambda d: [d], "top level: expected a JSON object, got 'list'"),
    (_set(["shards"], KeyError), "shards: missing"),
    (_set(["num_samples"], "6"), "num_samples: expected a positive sample count, got '6'"),
    (_set(["shards"], {"a": 1}), "shards: expected a list of shard records"),
    (_set(["shards", 0], "shard-r00000-000000.tar"), "shards[0]: expected an object with name, bytes"),
    (
        _set(["shards", 1, "samples", 0], "clip_000002"),
        "shards[1].samples[0]: expected [key, offset, length, crc32]",
    ),
    (
        _set(["shards", 0, "samples", 1, 1], 10**9),
        "shards[0].samples[1]: expected [key, offset, length, crc32] inside the shard's bytes",
    ),
    (
        _set(["shards", 0, "name"], "../../etc/passwd"),
        "shards[0].name: expected a file name in the shard directory",
    ),
    (_set(["shards", 2, "num_samples"], 5), "shards[2].samples: expected a list of num_samples=5 entries"),
    (_set(["num_samples"], 7), "num_samples: expected the 6 samples the shards list, got 7"),
    (_set(["encoder"], "none"), "encoder: expected an object whose name is one of ['none', 'wan']"),
    (
        _set(["fields", "video.npy"], KeyError),
        "fields['video.npy']: expected a field every one of the 6 samples",
    ),
    (
        _set(["fields", "scene.npy", "dtype"], "float999"),
        "fields['scene.npy'].dtype: expected a numpy dtype name",
    ),
    (_set(["fields", "scene.npy", "shape"], [3, 32]), "fields['scene.npy'].shape: expected 4 dimensions"),
    (_set(["size"], [32]), "size: expected [height, width], got [32]"),
]


@pytest.mark.parametrize("change, message", CASES)
def test_each_structural_problem_is_one_line_naming_it(shards_copy, change, message):
    _edit(shards_copy, change)
    with pytest.raises(CineSceneError) as info:
        load_manifest(shards_copy)
    text = str(info.value)
    assert text.startswith(f"{shards_copy / MANIFEST}: not a valid shard manifest: ") and message in text, (
        text
    )
    assert "\n" not in text


def test_nested_too_deeply(shards_copy):
    (shards_copy / MANIFEST).write_text("[" * 100000 + "]" * 100000)
    with pytest.raises(CineSceneError, match="not valid JSON \\(nested too deeply\\)"):
        load_manifest(shards_copy)


def _cli(repo_root, *args):
    return subprocess.run(
        [sys.executable, "-m", "cinescene", *args], cwd=repo_root, capture_output=True, text=True, timeout=120
    )


def _one_error_line(out):
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 1 and len(lines) == 1, out.stderr
    return lines[0]


@pytest.mark.slow
def test_data_inspect_and_train_say_what_is_wrong(shards_copy, repo_root, tmp_path):
    _edit(shards_copy, _set(["shards"], KeyError))
    line = _one_error_line(_cli(repo_root, "data", "inspect", str(shards_copy)))
    assert line.startswith("cinescene data: error: ") and "shards: missing" in line
    # train: from the launcher, before any rank starts and before the run directory exists
    run_dir = tmp_path / "run"
    line = _one_error_line(
        _cli(
            repo_root,
            "train",
            "configs/experiments/smoke.yaml",
            f"run.dir={run_dir}",
            f"data.train_shards={shards_copy}",
            "data.generate=false",
        )
    )
    assert line.startswith("cinescene train: error: ") and "shards: missing" in line
    assert not run_dir.exists()


def test_data_prepare_checks_the_files_it_reads(tiny_clips, tmp_path, repo_root):
    out = tmp_path / "shards"
    prepare(tiny_clips, out, encoder="none", rank=0, world=1, shard_size_mb=0.16, show_progress=False)
    rank_manifest = out / rank_manifest_name(0, 1)
    rank_manifest.write_text(json.dumps({"shards": []}))
    line = _one_error_line(_cli(repo_root, "data", "prepare", "--out", str(out), "--merge"))
    assert f"{rank_manifest}: not a valid shard manifest: num_samples: missing" in line
    settings = out / "prepare.json"
    settings.write_text("[1, 2]")
    line = _one_error_line(
        _cli(
            repo_root,
            "data",
            "prepare",
            "--src",
            str(tiny_clips),
            "--out",
            str(out),
            "--encoder",
            "none",
            "--shard-size-mb",
            "0.16",
        )
    )
    assert f"{settings}: not the settings file" in line


def test_a_damaged_done_marker_only_re_encodes_its_shard(tiny_clips, tiny_shards, tmp_path, caplog):
    out = tmp_path / "shards"
    shutil.copytree(tiny_shards, out)
    marker = out / "shard-r00000-000001.tar.done.json"
    marker.write_text(json.dumps({"name": "shard-r00000-000001.tar", "samples": "?"}))
    prepare(tiny_clips, out, encoder="none", rank=0, world=1, shard_size_mb=0.16, show_progress=False)
    assert any(
        "shard-r00000-000001.tar.done.json: " in r.getMessage() and "re-encoding from it" in r.getMessage()
        for r in caplog.records
    )
    assert (out / MANIFEST).read_bytes() == (tiny_shards / MANIFEST).read_bytes()  # the same shards again
