"""checkpoint.async in real 2-rank runs (the stand-in model through the `cinescene train` launch path):
the same weights and files as synchronous saves, a preemption while a save is in flight, kill -9 of a rank
or the launcher at 21 points of a background save, and a save on a full disk.

The kill test runs one uninterrupted reference run that keeps every step, then one chain of starts of the
same run: each start is killed in a chosen phase of its first save (``CINESCENE_TEST_SAVE_TRACE`` says
where the save is and holds each phase open for a moment, so every kill lands in its phase), and the next
start resumes from what the kill left. After each kill every complete checkpoint must equal the
reference's at that step, byte for byte; the last start trains to the end, which must equal the reference
run's weights and losses exactly.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cinescene.ckpt.layout import is_complete, read_pointer
from cinescene.ckpt.manifest import read_manifest
from cinescene.ckpt.weights import weights_digest
from cinescene.train.checkpoint import validate

from .conftest import REPO, finish, run_env, start

pytestmark = pytest.mark.dist

TRACE_ENV = "CINESCENE_TEST_SAVE_TRACE"


def standin(run_dir, *extra) -> list[str]:
    return [
        sys.executable,
        "-m",
        "tests.train.standin_train",
        str(run_dir),
        "launch.nproc=2",
        "tracking.wandb.mode=disabled",
        "train.ema.enabled=true",
        *extra,
    ]


def metrics(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def steps(run_dir: Path) -> dict[int, Path]:
    ck = Path(run_dir) / "checkpoints"
    return {int(p.name[5:]): p for p in ck.glob("step_*")} if ck.is_dir() else {}


def files_of(step_dir: Path) -> dict[str, str]:
    """The step's ZeRO and rank files with their digests (trainer_state.json holds the save's time)."""
    return {
        k: v.digest for k, v in read_manifest(step_dir).items() if k.startswith(("zero/", "rank_states/"))
    }


def run_to_end(cmd, log: Path, **env) -> None:
    assert finish(start(cmd, log, **env)) == 0, log.read_text()[-3000:]


def test_async_and_synchronous_saves_give_the_same_weights_and_files(tmp_path):
    args = ("train.max_steps=6", "checkpoint.every_steps=2", "checkpoint.keep_last=3")
    sync, background, log = tmp_path / "sync", tmp_path / "async", tmp_path / "run.log"
    run_to_end(standin(sync, *args, "checkpoint.async=false"), log)
    run_to_end(standin(background, *args, "checkpoint.async=true"), log)
    text = log.read_text()
    assert "checkpoint.async: the host copy of a save takes" in text and "written in the background" in text
    assert sorted(steps(sync)) == sorted(steps(background)) == [2, 4, 6]
    for step, path in steps(sync).items():
        assert files_of(path) == files_of(steps(background)[step])  # shards, RNG and EMA: byte for byte
    assert weights_digest(steps(sync)[6]) == weights_digest(steps(background)[6])
    assert [(r["loss"], r["grad_norm"]) for r in metrics(sync)] == [
        (r["loss"], r["grad_norm"]) for r in metrics(background)
    ]
    assert not list((background / "checkpoints").glob(".tmp-*"))


def trace_lines(path: Path) -> list[tuple[int, int, str]]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        step, rank, point = line.split()
        out.append((int(step), int(rank), point))
    return out


def wait_for_point(trace: Path, step: int, rank: int, point: str, proc, timeout=300) -> None:
    deadline = time.monotonic() + timeout
    while (step, rank, point) not in trace_lines(trace):
        assert proc.poll() is None, f"the run ended before step {step}'s save reached {point} on rank {rank}"
        assert time.monotonic() < deadline, f"no {point} of step {step} on rank {rank} within {timeout} s"
        time.sleep(0.02)


def test_a_preemption_waits_for_the_save_in_flight_then_saves_its_own_step(tmp_path):
    run_dir, log, trace = tmp_path / "run", tmp_path / "run.log", tmp_path / "trace"
    args = ("train.max_steps=50", "checkpoint.every_steps=2", "checkpoint.async=true")
    proc = start(standin(run_dir, *args), log, **{TRACE_ENV: f"{trace}:1.0"})
    wait_for_point(trace, 2, 1, "write", proc)  # step 2's save in flight on the writer threads
    os.kill(proc.pid, signal.SIGUSR1)
    assert finish(proc) == 124, log.read_text()[-3000:]
    text = log.read_text()
    assert "the save of step_00000002 was still being written: waited" in text
    stopped = metrics(run_dir)[-1]["step"]
    assert stopped > 2 and sorted(steps(run_dir))[-1] == stopped
    assert all(is_complete(p) for p in steps(run_dir).values())
    assert read_pointer(run_dir / "checkpoints").name == f"step_{stopped:08d}"
    assert not list((run_dir / "checkpoints").glob(".tmp-*"))


# ---------------------------------------------------------------------------------- kill -9
PHASES = (
    "copy",
    "write",
    "after_shards",
    "after_rank_states",
    "before_rename",
    "after_rename",
    "after_latest",
)
VICTIMS = ("launcher", "rank 0", "rank 1")
COMMIT = ("before_rename", "after_rename", "after_latest")  # rank 0 only
KILL_STEPS = 26  # more steps than kill points: a kill after the rename moves the run on by one
PAUSE_S = 0.5


def rank_pids(launcher: int) -> dict[int, int]:
    """The launcher's rank processes, by rank (from /proc: their parent and their RANK variable)."""
    pids = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            if ppid != launcher:
                continue
            env = (entry / "environ").read_bytes().split(b"\0")
            pids[next(int(v[5:]) for v in env if v.startswith(b"RANK="))] = int(entry.name)
        except (OSError, StopIteration, ValueError, IndexError):
            continue
    return pids


def wait_group_gone(pgid: int, timeout=60) -> None:
    """Kill whatever of the run's process group is left and wait until none of it exists."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            return
        assert time.monotonic() < deadline, "processes of a killed run stayed alive"
        time.sleep(0.1)


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_kill_9_of_a_rank_or_the_launcher_during_a_background_save_loses_nothing(tmp_path):
    args = (f"train.max_steps={KILL_STEPS}", "checkpoint.every_steps=1", "checkpoint.async=true")
    reference, chain, log = tmp_path / "reference", tmp_path / "chain", tmp_path / "run.log"
    run_to_end(standin(reference, *args, f"checkpoint.keep_last={KILL_STEPS}"), log)
    expected = {step: files_of(path) for step, path in steps(reference).items()}
    assert sorted(expected) == list(range(1, KILL_STEPS + 1))

    seed = int(os.environ.get("CINESCENE_TEST_KILL_SEED", time.time_ns() % 10**6))
    print(f"\nkill offsets drawn with CINESCENE_TEST_KILL_SEED={seed}")
    draw = random.Random(seed)
    chain_args = (*args, "checkpoint.keep_last=3")
    resumed = 0
    for index, (phase, victim) in enumerate((p, v) for p in PHASES for v in VICTIMS):
        trace = tmp_path / f"trace{index}"
        proc = start(standin(chain, *chain_args), log, **{TRACE_ENV: f"{trace}:{PAUSE_S}"})
        target = resumed + 1 if resumed else 2  # this start's first save (the first start: its second)
        watched = 1 if victim == "rank 1" and phase not in COMMIT else 0
        wait_for_point(trace, target, watched, phase, proc)
        time.sleep(draw.uniform(0, 0.8 * PAUSE_S))
        pid = proc.pid if victim == "launcher" else rank_pids(proc.pid)[int(victim[-1])]
        os.kill(pid, signal.SIGKILL)
        try:
            proc.wait(timeout=60)
        finally:
            wait_group_gone(proc.pid)
        where = f"kill point {index} ({victim} in {phase} of step {target}'s save)"
        # The previous complete checkpoint stands, and every complete one is the reference's, bit for bit.
        latest = read_pointer(chain / "checkpoints")
        assert latest is not None and validate(latest).step >= resumed, where
        for step, path in steps(chain).items():
            assert is_complete(path) and files_of(path) == expected[step], f"{where}: step {step} differs"
        if phase in ("after_rename", "after_latest") and victim != "rank 1":
            assert target in steps(chain), f"{where}: a renamed step directory is complete"
        resumed = max(steps(chain))
        print(f"{where}: {sorted(steps(chain))} complete, `latest` {latest.name}")

    run_to_end(standin(chain, *chain_args), log)
    assert weights_digest(steps(chain)[KILL_STEPS]) == weights_digest(steps(reference)[KILL_STEPS])
    assert files_of(steps(chain)[KILL_STEPS]) == expected[KILL_STEPS]
    ours, theirs = metrics(chain), metrics(reference)
    assert [r["step"] for r in ours] == list(range(1, KILL_STEPS + 1))
    assert [(r["loss"], r["grad_norm"]) for r in ours] == [(r["loss"], r["grad_norm"]) for r in theirs]
    assert not list((chain / "checkpoints").glob(".tmp-*"))


# -------------------------------------------------------------------------------- full disk
def _private_mounts() -> bool:
    if not shutil.which("unshare"):
        return False
    probe = subprocess.run(["unshare", "-rm", "true"], capture_output=True)
    return probe.returncode == 0


FULL_DISK_SCRIPT = r"""
set -u
mount -t tmpfs -o size=8m tmpfs "$CK" || exit 97
train() {  # train NAME MAX_STEPS [ASYNC]: `cinescene train` of the smoke job, checkpoints on the small disk
  "$PYTHON" -m cinescene train configs/experiments/smoke.yaml --nproc 2 "run.dir=$RUN" \
    "data.train_shards=$SHARDS" "checkpoint.dir=$CK" "train.max_steps=$2" checkpoint.every_steps=2 \
    "checkpoint.async=${3:-true}" tracking.wandb.mode=disabled >"$OUT/$1.out" 2>"$OUT/$1.err"
  echo $? >"$OUT/$1.rc"
}
fill() { dd if=/dev/zero of="$CK/filler" bs=4k >/dev/null 2>&1; sync; }
train first 2
fill
train full_save 6   # step 4: a background save (the last step would save synchronously)
ls -A "$CK" >"$OUT/after_full_save"
train full_sync_save 6 false
ls -A "$CK" >"$OUT/after_full_sync_save"
rm -f "$CK/filler"
train second 4
printf 'step_00000002\n' >"$CK/latest"   # a save killed between its rename and the pointer update
fill
train full_start 6
ls -A "$CK" >"$OUT/after_full_start"
cat "$CK/latest" >"$OUT/latest"
"$PYTHON" -m cinescene ckpt info "$CK" >"$OUT/info.out" 2>"$OUT/info.err"
echo $? >"$OUT/info.rc"
"""


@pytest.mark.slow
@pytest.mark.skipif(not _private_mounts(), reason="needs `unshare -rm` to mount a small tmpfs")
def test_a_full_disk_stops_the_run_in_one_line_and_loses_no_checkpoint(smoke_shards, tmp_path):
    ck, out = tmp_path / "ck", tmp_path / "out"
    ck.mkdir()
    out.mkdir()
    env = run_env(
        CK=str(ck), RUN=str(tmp_path / "run"), SHARDS=str(smoke_shards), OUT=str(out), PYTHON=sys.executable
    )
    done = subprocess.run(
        ["unshare", "-rm", "bash", "-c", FULL_DISK_SCRIPT],
        cwd=REPO,
        env=env,
        capture_output=True,
        timeout=1500,
    )
    assert done.returncode == 0, done.stderr.decode()[-2000:]

    def read(name: str) -> str:
        return (out / name).read_text()

    assert read("first.rc").strip() == "0", read("first.err")[-2000:]
    # A save on the full disk, in the background or not: one line naming the file, on the console; nothing
    # left behind.
    for name in ("full_save", "full_sync_save"):
        assert read(f"{name}.rc").strip() == "1"
        errors = [line for line in read(f"{name}.err").splitlines() if "cinescene train: error:" in line]
        assert errors, read(f"{name}.err")[-2000:]
        assert all(
            line.endswith(": No space left on device; step_00000002 stays the newest complete checkpoint")
            and "the save of step 4 failed: rank " in line
            and f"cannot write {ck}/.tmp-step_00000004/" in line
            for line in errors
        ), errors
        assert "Traceback" not in read(f"{name}.err")
        # run.lock: the checkpoint directory's lock (one run per checkpoint directory)
        assert read(f"after_{name}").split() == ["filler", "latest", "run.lock", "step_00000002"]
    assert read("second.rc").strip() == "0", read("second.err")[-2000:]
    # Start-up on the full disk cannot move `latest` forward: it stops in one line, the pointer as it was.
    assert read("full_start.rc").strip() == "1"
    assert (
        f"cinescene train: error: cannot write {ck}/latest: No space left on device (it was left as it was)"
        in (read("full_start.err"))
    )
    assert "Traceback" not in read("full_start.err")
    assert read("latest") == "step_00000002\n"
    assert read("after_full_start").split() == [
        "filler",
        "latest",
        "run.lock",
        "step_00000002",
        "step_00000004",
    ]
    assert read("info.rc").strip() == "0", read("info.err")
    assert "step_00000002" in read("info.out")
