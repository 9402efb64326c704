"""`cinescene bench checkpoint`: it works in a new directory of its own under --dir (nothing already there is
touched or removed), and one run reports the synchronous and the checkpoint.async save side by side."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from cinescene.errors import CineSceneError
from cinescene.log import VERBOSE_ENV
from cinescene.train import checkpoint_bench as bench


def user_files(directory):
    """What a user had under --dir before the benchmark: a run and an export named like the old defaults."""
    for name in ("bench-run", "bench-export"):
        (directory / name).mkdir(parents=True)
        (directory / name / "precious.txt").write_text(name)
    (directory / "bench-result.json").write_text("{}")
    return sorted(p.relative_to(directory) for p in directory.rglob("*"))


def test_a_failed_benchmark_touches_nothing_already_there_and_keeps_its_log(tmp_path, monkeypatch):
    before = user_files(tmp_path)
    monkeypatch.setenv(VERBOSE_ENV, "1")  # this test's own output stays where pytest captures it
    monkeypatch.setattr(bench, "bench_overrides", lambda state, base: base)
    monkeypatch.setattr(bench, "spawn_local_ranks", lambda argv, nproc: 3)
    with pytest.raises(CineSceneError) as info:
        bench.run(state_gb=1.0, nproc=2, directory=tmp_path, export_shard=10**8, repeats=1, keep=False)
    (work,) = tmp_path.glob("bench-checkpoint-*")
    assert str(info.value) == (
        f"the benchmark ranks failed (exit status 3); their output is in {work}/logs/bench.log"
    )
    after = sorted(
        p.relative_to(tmp_path) for p in tmp_path.rglob("*") if work not in p.parents and p != work
    )
    assert after == before


def test_a_directory_that_cannot_be_made_is_one_line(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(CineSceneError, match=r"--dir .*/file/sub: cannot create a directory there"):
        bench.run(
            state_gb=1.0, nproc=2, directory=tmp_path / "file" / "sub", export_shard=1, repeats=1, keep=False
        )


@pytest.mark.slow
@pytest.mark.dist
def test_the_benchmark_reports_both_saves_and_touches_nothing_of_the_users(tmp_path, repo_root, cli_env):
    before = user_files(tmp_path)
    cli_env["CUDA_VISIBLE_DEVICES"] = ""
    done = subprocess.run(
        [sys.executable, "-m", "cinescene", "bench", "checkpoint", "--state-gb", "0.01", "--repeats", "1"]
        + ["--dir", str(tmp_path), "--json"],
        cwd=repo_root,
        env=cli_env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    for key in ("save_s", "async_blocked_s", "async_copy_wait_s", "async_write_s", "dd_write_s", "load_s"):
        assert report[key] > 0 or key == "async_copy_wait_s", key
    assert report["host_copy_bytes"] > report["checkpoint_bytes"] / 2 * 0.9  # about one rank's partition
    assert report["async_blocked_s"] < report["save_s"]
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
    print(bench.format_report(report))
