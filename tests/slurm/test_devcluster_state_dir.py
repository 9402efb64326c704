"""start.sh refuses a state directory another user could have prepared, before it writes or starts anything.

Each test points CINESCENE_SLURM_DIR at a hostile directory of its own (the session's cluster in
/tmp/cinescene-slurm is never touched). The SLURM and munge programs are stand-ins that fail, so even a
start.sh without these checks could get no further than its first daemon: what a test sees is what the
script wrote before that. A safe fresh directory passes the checks and reaches the first daemon.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.fixtures.slurm import START_SH

NOBODY = 65534
# Every program start.sh runs from the SLURM, munge and MariaDB packages (its `bins`).
PROGRAMS = (
    "munged mungekey munge unmunge slurmctld slurmd slurmdbd sbatch squeue scontrol sinfo scancel sacct "
    "mariadbd mariadb-install-db mariadb"
).split()

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="start.sh runs as root")


@pytest.fixture
def start(tmp_path):
    """``start(state_dir)``: run start.sh on ``state_dir`` with failing stand-ins for the daemons."""
    stubs = tmp_path / "stubs"
    stubs.mkdir()
    for name in PROGRAMS:
        (stubs / name).write_text("#!/bin/sh\necho stand-in >&2\nexit 1\n")
        (stubs / name).chmod(0o755)

    def run(state_dir: Path) -> subprocess.CompletedProcess:
        env = {
            **os.environ,
            "PATH": f"{stubs}:{os.environ['PATH']}",
            "CINESCENE_SLURM_DIR": str(state_dir),
            "CINESCENE_SLURM_NO_INSTALL": "1",
            "CINESCENE_SLURM_SECOND_NODE": "0",
            "CINESCENE_SLURM_CTLD_PORT": "16817",
            "CINESCENE_SLURM_SLURMD_PORT": "16818",
            "CINESCENE_SLURM_DBD_PORT": "16819",
            "CINESCENE_SLURM_DB_PORT": "23306",
        }
        return subprocess.run(
            ["bash", str(START_SH)],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
        )

    return run


def _tree(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*")) if path.is_dir() else []


def _refused(out: subprocess.CompletedProcess, state_dir: Path, why: str) -> None:
    errors = [line for line in out.stderr.splitlines() if "ERROR" in line]
    assert out.returncode == 5 and len(errors) == 1, out.stderr
    assert f"unsafe state directory {state_dir}: " in errors[0] and why in errors[0], errors[0]


def _victim(tmp_path: Path) -> Path:
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    return victim


def test_a_directory_of_another_user_is_refused(tmp_path, start):
    state = tmp_path / "state"
    state.mkdir()
    os.chown(state, NOBODY, NOBODY)
    _refused(start(state), state, "belongs to nobody, not root")
    assert _tree(state) == []


def test_a_world_writable_directory_is_refused(tmp_path, start):
    state = tmp_path / "state"
    state.mkdir()
    state.chmod(0o777)
    _refused(start(state), state, "writable by other users (mode 777)")
    assert _tree(state) == []


def test_a_state_directory_that_is_a_symlink_is_refused(tmp_path, start):
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "state").symlink_to(real)
    _refused(start(tmp_path / "state"), tmp_path / "state", "is a symlink")
    assert _tree(real) == []


@pytest.mark.parametrize("name", [".start.lock", "etc/slurm.conf", "log/slurmctld.log", "munge/munge.key"])
def test_a_symlink_inside_is_never_followed(tmp_path, start, name):
    state = tmp_path / "state"
    (state / name).parent.mkdir(parents=True, exist_ok=True)
    victim = _victim(tmp_path)
    (state / name).symlink_to(victim)
    _refused(start(state), state, f"{state / name} is a symlink (never followed)")
    assert victim.read_text() == "precious\n"


def test_a_planted_munge_key_is_refused(tmp_path, start):
    state = tmp_path / "state"
    (state / "munge").mkdir(parents=True)
    key = state / "munge" / "munge.key"
    key.write_bytes(b"k" * 1024)
    os.chown(key, NOBODY, NOBODY)
    _refused(start(state), state, f"{key} belongs to nobody")
    assert key.read_bytes() == b"k" * 1024


def test_a_file_writable_by_another_group_is_refused(tmp_path, start):
    state = tmp_path / "state"
    (state / "etc").mkdir(parents=True)
    conf = state / "etc" / "slurm.conf"
    conf.write_text("x\n")
    os.chown(conf, 0, NOBODY)
    conf.chmod(0o664)
    _refused(start(state), state, f"{conf} belongs to root or is writable")


@pytest.mark.parametrize("owner, mode, why", [(NOBODY, 0o755, "belongs to nobody"), (0, 0o777, "not sticky")])
def test_a_parent_another_user_can_change_is_refused(tmp_path, start, owner, mode, why):
    parent = tmp_path / "shared"
    parent.mkdir()
    os.chown(parent, owner, owner)
    parent.chmod(mode)
    state = parent / "state"
    _refused(start(state), state, f"{parent}, above it, ")
    assert why in start(state).stderr
    assert not state.exists()  # refused before anything was made


def test_a_state_path_that_is_a_file_is_refused(tmp_path, start):
    state = tmp_path / "state"
    state.write_text("not a directory\n")
    _refused(start(state), state, "not a directory")


def test_a_fresh_directory_under_a_sticky_parent_passes_the_checks(tmp_path, start):
    parent = tmp_path / "sticky"
    parent.mkdir()
    parent.chmod(0o1777)  # like /tmp
    state = parent / "a" / "state"
    out = start(state)
    assert out.returncode not in (3, 4, 5), out.stderr  # the checks passed; the stand-in munge failed
    assert "unsafe state directory" not in out.stderr and "stand-in" in out.stderr
    assert state.stat().st_uid == 0 and (state.stat().st_mode & 0o777) == 0o755
    assert (state / ".start.lock").is_file() and (state / "etc").is_dir()  # made only after the checks
