"""Where `sample`, `eval` and `ckpt export` write, and what (issue 20, items 5, 10, 11).

An output never lands inside a checkpoint step directory, never overwrites another output or an input of
the same command, and everything written passes through the secret masking; exports are fsynced, file and
directory, before the command says done. Checks that need no model run in process before any is built.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cinescene.launch.cli import main
from tests.fixtures.checkpoint import REPO, cli_env
from tests.fixtures.video import read_mp4

pytestmark = [pytest.mark.slow, pytest.mark.dist]


def one_line(capsys, code: int, status: int) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("cinescene ")]
    assert code == status and len(lines) == 1 and "Traceback" not in err, err[-2000:]
    return lines[0]


def verified(step: Path) -> bool:
    done = subprocess.run(
        [sys.executable, "-m", "cinescene", "ckpt", "info", str(step), "--verify"],
        cwd=REPO,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    return done.returncode == 0


def test_outputs_inside_a_checkpoint_are_refused(smoke_run, tmp_path, capsys):
    step = smoke_run.step_dir
    scene = f"{smoke_run.shards}:clip_000001"
    commands = {
        "sample --out": ["sample", str(smoke_run.run_dir), "--scene", scene, "--out", str(step / "a.mp4")],
        "sample --png": [
            "sample",
            str(smoke_run.run_dir),
            "--scene",
            scene,
            "--out",
            str(tmp_path / "a.mp4"),
            "--png",
            str(step / "zero" / "a.png"),
        ],
        "eval --out": ["eval", str(smoke_run.run_dir), "--out", str(step / "eval"), "--num", "1"],
        "export --out": ["ckpt", "export", str(step), "--format", "wan", "--out", str(step / "export")],
        "export --out = step": ["ckpt", "export", str(step), "--format", "wan", "--out", str(step)],
    }
    for what, argv in commands.items():
        line = one_line(capsys, main(argv), 2)
        assert f"is inside the checkpoint {step.resolve()}" in line, (what, line)
    assert verified(step)


@pytest.mark.parametrize(
    "flags, said",
    [
        (["--out", "{tmp}/a.json"], "--out: expected an mp4 path"),
        (["--out", "{tmp}/a.mp4", "--png", "{tmp}/a.json"], "is also the settings file beside --out"),
        (["--out", "{tmp}/traj.mp4", "--camera", "{tmp}/traj.json"], "is the input --camera: it would be"),
        (["--out", "/dev/null"], "inside the system directory /dev"),
        (["--out", "{tmp}/a.mp4", "--shift", "inf"], "--shift: expected a value in (0, 1000], got inf"),
        (["--out", "{tmp}/a.mp4", "--cfg", "1e308"], "--cfg: expected a value in [0, 100]"),
        (["--out", "{tmp}/a.mp4", "--camera", "dolly_in", "--camera-scale", "1e308"], "--camera-scale"),
        (["--out", "{tmp}/a.mp4", "--seed", "-1"], "--seed: expected a value in [0, "),
        (["--out", "{tmp}/a.mp4", "--steps", "1000000000"], "--steps: expected a value in [1, 1000]"),
    ],
)
def test_sample_refuses_absurd_flags_and_colliding_outputs(smoke_run, tmp_path, capsys, flags, said):
    (tmp_path / "traj.json").write_text(json.dumps({"c2w": [np.eye(4).tolist()] * 5}))
    before = (tmp_path / "traj.json").read_text()
    argv = ["sample", str(smoke_run.run_dir), "--scene", f"{smoke_run.shards}:clip_000001"]
    argv += [f.format(tmp=tmp_path) for f in flags]
    line = one_line(capsys, main(argv), 2)
    assert said in line, line
    assert (tmp_path / "traj.json").read_text() == before
    assert not list(tmp_path.glob("*.mp4"))


def test_what_sample_and_export_write_is_masked_and_synced(smoke_run, tmp_path):
    # A secret's value that the outputs would carry: a part of the checkpoint's own path.
    secret = smoke_run.run_dir.parent.name
    assert len(secret) >= 8
    env = dict(cli_env(), HF_TOKEN=secret)
    out = tmp_path / "a.mp4"
    done = subprocess.run(
        [
            sys.executable, "-m", "cinescene", "sample", str(smoke_run.run_dir), "--scene",
            f"{smoke_run.shards}:clip_000001", "--steps", "1", "--out", str(out),
            "--prompt", f"a {secret} walks",
        ],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    _, metadata = read_mp4(out)
    sidecar = out.with_suffix(".json").read_text()
    for text in (json.dumps(metadata), sidecar):
        assert secret not in text and "***" in text

    from cinescene.ckpt.export import export
    from cinescene.ckpt.locate import DESCRIPTION, RUN_CONFIG

    synced: list[Path] = []
    real = os.fsync

    def fsync(fd):
        synced.append(Path(os.readlink(f"/proc/self/fd/{fd}")))
        real(fd)

    os.environ["HF_TOKEN"] = secret
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(os, "fsync", fsync)
            report = export(smoke_run.run_dir, tmp_path / "export", fmt="wan")
    finally:
        del os.environ["HF_TOKEN"]
    for name in (DESCRIPTION, RUN_CONFIG):
        assert secret not in (report.out / name).read_text()
    assert "***" in (report.out / DESCRIPTION).read_text()
    names = {p.name for p in synced}
    assert set(report.files) <= names  # every file (under the work directory's name: before the rename)
    assert synced[-1] == tmp_path  # then the directory holding the export, after the rename
