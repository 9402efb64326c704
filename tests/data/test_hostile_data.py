"""Data that lies and absurd values to the data commands (issue 20, item 11): damaged clips are skipped and
counted, impossible cameras never reach a shard, a manifest cannot claim what its arrays do not hold, and
flags out of range are one line each."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

from cinescene.data.manifest import load_manifest
from cinescene.data.prepare import prepare, resolve_rank
from cinescene.errors import CineSceneError
from cinescene.launch.cli import main


def _pose(clip, frame: int, value) -> None:
    path = clip / "cameras.json"
    cameras = json.loads(path.read_text())
    cameras["frames"][frame]["c2w"] = value
    path.write_text(json.dumps(cameras))


MIRRORED = np.diag([-1.0, 1.0, 1.0, 1.0]).tolist()
FAR = [[1, 0, 0, 1e300], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]
BOTTOM = [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [1, 2, 3, 4]]

DAMAGE = {
    "nan pose": lambda c: _pose(c, 2, [[float("nan")] * 4] * 4),
    "mirrored pose": lambda c: _pose(c, 2, MIRRORED),
    "pose 1e300 m away": lambda c: _pose(c, 2, FAR),
    "bottom row not 0 0 0 1": lambda c: _pose(c, 2, BOTTOM),
    "truncated video": lambda c: (c / "video.npy").write_bytes((c / "video.npy").read_bytes()[:300]),
    "garbage cameras.json": lambda c: (c / "cameras.json").write_bytes(b"\xff{"),
    "scene image not a png": lambda c: (c / "scene_01.png").write_bytes(b"not a png"),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_clip_is_skipped_and_counted(tiny_clips, tmp_path, damage):
    clips = shutil.copytree(tiny_clips, tmp_path / "clips")
    DAMAGE[damage](clips / "clip_000002")
    prepare(clips, tmp_path / "shards", encoder="none", rank=0, world=1, show_progress=False)
    manifest = load_manifest(tmp_path / "shards")
    assert manifest.num_samples == 5
    [skipped] = manifest.data["skipped_clips"]
    assert skipped["clip"] == "clip_000002" and "clip_000002" in skipped["reason"]
    keys = [ref.key for ref in manifest.samples()]
    assert "clip_000002" not in keys and len(keys) == 5


def test_a_directory_of_damaged_clips_only_says_so(tiny_clips, tmp_path):
    clips = shutil.copytree(tiny_clips, tmp_path / "clips")
    for clip in clips.iterdir():
        if clip.is_dir():
            DAMAGE["nan pose"](clip)
    with pytest.raises(CineSceneError, match="no rank wrote any sample \\(all 6 clips damaged, e.g. clip"):
        prepare(clips, tmp_path / "shards", encoder="none", rank=0, world=1, show_progress=False)


@pytest.mark.parametrize(
    "edit, key",
    [
        ({"frames": 81, "latent_frames": 21}, "frames"),
        ({"scene_images": 20}, "scene_images"),
        ({"size": [480, 832]}, "size"),
        ({"latent_frames": 4}, "latent_frames"),
    ],
)
def test_a_manifest_claiming_other_shapes_than_its_arrays_is_refused(shards_copy, capsys, edit, key):
    path = shards_copy / "manifest.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **edit}))
    code = main(["data", "inspect", str(shards_copy), "--verify"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and f"not a valid shard manifest: {key}: expected " in err[0], err


@pytest.mark.parametrize(
    "args, key",
    [
        (["--world", "0"], "--world"),
        (["--rank", "-1", "--world", "2"], "--rank"),
        (["--shard-size-mb", "nan"], "--shard-size-mb"),
        (["--shard-size-mb", "inf"], "--shard-size-mb"),
    ],
)
def test_prepare_flags_out_of_range(tiny_clips, tmp_path, capsys, args, key):
    out = tmp_path / "shards"
    code = main(["data", "prepare", "--src", str(tiny_clips), "--out", str(out), "--encoder", "none", *args])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and f"config error: {key}: " in err[-1] and not out.exists(), err


@pytest.mark.parametrize("out", ["{src}", "{src}/./", "{src}/shards"])
def test_prepare_never_writes_into_its_source(tiny_clips, tmp_path, capsys, out):
    clips = shutil.copytree(tiny_clips, tmp_path / "clips")
    before = sorted(p.name for p in clips.iterdir())
    target = out.format(src=clips)
    code = main(["data", "prepare", "--src", str(clips), "--out", target, "--encoder", "none"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and "config error: --out: " in err[-1] and "--src" in err[-1], err
    assert sorted(p.name for p in clips.iterdir()) == before


@pytest.mark.parametrize(
    "variable", ["SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT", "SLURM_ARRAY_TASK_MIN"]
)
def test_a_slurm_variable_that_is_no_integer_is_one_line(monkeypatch, variable):
    for name, value in (("SLURM_ARRAY_TASK_ID", "1"), ("SLURM_ARRAY_TASK_COUNT", "2")):
        monkeypatch.setenv(name, value)
    monkeypatch.setenv(variable, "abc")
    with pytest.raises(CineSceneError, match=f"environment variable {variable}='abc' is not an integer"):
        resolve_rank(None, None)


@pytest.mark.parametrize("hfov", ["nan", "180", "0", "-5", "inf", "1e308"])
def test_convert_refuses_an_impossible_field_of_view(tmp_path, capsys, hfov):
    from cinescene.data.synth import synthesize

    synthesize(tmp_path / "sd", 1, 5, (32, 32), 2, layout="scene-decoupled", show_progress=False)
    cam = next((tmp_path / "sd").rglob("*_cam.json"))
    data = json.loads(cam.read_text())
    data.pop("fov", None)  # the flag is what counts
    cam.write_text(json.dumps(data))
    code = main(
        ["data", "convert", "--src", str(tmp_path / "sd"), "--out", str(tmp_path / "o"), "--hfov", hfov]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and "config error: --hfov: expected a horizontal field of view in [1, 170]" in err[-1]
    assert not (tmp_path / "o").exists()


def test_a_camera_file_whose_fov_is_a_boolean_is_refused(tmp_path):
    from cinescene.data.scene_decoupled import parse_camera_file
    from cinescene.data.synth import synthesize

    synthesize(tmp_path / "sd", 1, 5, (32, 32), 2, layout="scene-decoupled", show_progress=False)
    cam = next((tmp_path / "sd").rglob("*_cam.json"))
    cam.write_text(json.dumps({**json.loads(cam.read_text()), "fov": True}))
    with pytest.raises(
        CineSceneError, match="'fov': expected a horizontal field of view in degrees, got True"
    ):
        parse_camera_file(cam)


def test_synth_refuses_a_negative_seed_and_a_damaged_index(tmp_path, capsys):
    assert main(["data", "synth", "--out", str(tmp_path / "c"), "--clips", "1", "--seed", "-1"]) == 2
    assert "config error: --seed: expected a value >= 0, got -1" in capsys.readouterr().err
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "synth.json").write_bytes(b"\xff garbage")
    assert main(["data", "synth", "--out", str(tmp_path / "c"), "--clips", "1"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "synth.json: not valid JSON" in err[0], err


@pytest.mark.parametrize(
    "args, said",
    [
        (["--size", "100000", "100000"], "--size[0]: expected a value <= 1024"),
        (["--frames", "100001"], "--frames: expected a value <= 161"),
    ],
)
def test_synth_refuses_clips_too_large_to_hold(tmp_path, capsys, args, said):
    assert main(["data", "synth", "--out", str(tmp_path / "c"), "--clips", "1", *args]) == 2
    assert said in capsys.readouterr().err


@pytest.mark.parametrize("target", ["/dev/null", "/", "/etc/cinescene-shards"])
def test_data_outputs_never_go_to_system_places(tiny_clips, capsys, target):
    code = main(["data", "prepare", "--src", str(tiny_clips), "--out", target, "--encoder", "none"])
    assert code == 2 and "config error: --out: " in capsys.readouterr().err
    assert not os.path.exists("/etc/cinescene-shards")
