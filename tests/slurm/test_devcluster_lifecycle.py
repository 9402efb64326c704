"""start.sh is idempotent and stop.sh stops only what its start.sh started.

A second cluster, in its own directory on its own ports, is started twice, runs a job, and is
stopped, while the session's cluster (the ``slurm_cluster`` fixture) keeps running throughout.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.fixtures.slurm import REPO

pytestmark = pytest.mark.slurm

DEVCLUSTER = REPO / "slurm" / "devcluster"
DAEMONS = {
    "munged": "munge/munged.pid",
    "mariadbd": "db/mariadbd.pid",
    "slurmdbd": "slurmdbd.pid",
    "slurmctld": "slurmctld.pid",
}


def daemon_pids(state_dir: Path) -> dict[str, int]:
    """The live daemons a cluster's pid files name (a pid counts only while it runs that program);
    one slurmd per node, as ``slurmd-<node>``."""
    files = {name: state_dir / rel for name, rel in DAEMONS.items()}
    files.update({path.stem: path for path in state_dir.glob("slurmd-*.pid")})
    pids = {}
    for name, path in files.items():
        if path.is_file() and path.read_text().strip().isdigit():
            pid = int(path.read_text().strip())
            comm = Path(f"/proc/{pid}/comm")
            if comm.exists() and comm.read_text().strip() == name.partition("-")[0]:
                pids[name] = pid
    return pids


def script(name: str, env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(DEVCLUSTER / name), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )


def test_start_twice_is_harmless_and_stop_leaves_other_clusters_alone(slurm_cluster, tmp_path):
    main_pids = daemon_pids(slurm_cluster.dir)
    expected = set(DAEMONS) | {f"slurmd-{node}" for node in slurm_cluster.nodes}
    assert set(main_pids) == expected, f"the session's cluster is not fully up: {main_pids}"
    # munged wants every directory above its socket searchable by all, which pytest's tmp_path is not.
    state = Path(tempfile.mkdtemp(prefix="cinescene-slurm-second-"))
    state.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SBATCH_"))}
    env.update(
        CINESCENE_SLURM_DIR=str(state),
        CINESCENE_SLURM_CTLD_PORT="7817",
        CINESCENE_SLURM_SLURMD_PORT="7818",
        CINESCENE_SLURM_DBD_PORT="7819",
        CINESCENE_SLURM_DB_PORT="14306",
        CINESCENE_SLURM_NO_INSTALL="1",
        CINESCENE_SLURM_SECOND_NODE="0",
    )  # the namespace and its addresses belong to the main cluster
    try:
        first = script("start.sh", env)
        assert first.returncode == 0, first.stderr[-3000:]
        conf = str(state / "etc" / "slurm.conf")
        assert first.stdout.strip().splitlines()[-1] == f"export SLURM_CONF={conf}"
        started = daemon_pids(state)
        node = slurm_cluster.nodes[0]
        assert set(started) == set(DAEMONS) | {f"slurmd-{node}"} and not set(started.values()) & set(
            main_pids.values()
        )

        again = script("start.sh", env)
        assert again.returncode == 0 and "cluster already up" in again.stderr, again.stderr[-3000:]
        assert daemon_pids(state) == started  # nothing restarted

        job_env = dict(env, SLURM_CONF=conf)
        job = subprocess.run(
            ["sbatch", "--wait", "--parsable", "-o", str(tmp_path / "%j.out"), "--wrap", "true"],
            env=job_env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert job.returncode == 0, job.stderr
    finally:
        pids_before_stop = daemon_pids(state)
        stopped = script("stop.sh", env, "--purge")
    assert stopped.returncode == 0, stopped.stderr[-3000:]
    assert all(not Path(f"/proc/{pid}").exists() for pid in pids_before_stop.values())
    assert not state.exists()  # --purge removed the directory start.sh made
    assert daemon_pids(slurm_cluster.dir) == main_pids  # the other cluster is untouched
    assert slurm_cluster.run(["sinfo", "-h", "-o", "%P"]).stdout.split() == ["debug*", "urgent"]
