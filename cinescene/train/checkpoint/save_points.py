"""Named points of a save, where tests kill the job or watch it (two environment variables, tests only).

A save passes these points in order (rank 0 alone for the first and the
commit's, every rank for the others; with ``checkpoint.async`` ``write`` to
``after_rank_states`` run on the writer thread and the commit on rank 0's):

    tmp_created        rank 0 made .tmp-step_N/
    copy               the rank takes its state (the host copy with checkpoint.async)
    write              the rank starts writing its files
    after_shards       its ZeRO shard files are written
    after_rank_states  its rank state file and manifest part are written
    before_commit      rank 0: every rank wrote its part; config, record and manifest next
    before_rename      rank 0: the directory is complete and fsynced
    after_rename       rank 0: step_N/ exists, `latest` still names the previous step
    after_latest       rank 0: `latest` names step_N; retention next

``CINESCENE_TEST_CRASH_AT=<point>[@<step>]`` SIGKILLs the rank's whole process
group at that point, like ``kill -9`` of the job.
``CINESCENE_TEST_SAVE_TRACE=<file>[:<pause seconds>]`` appends
``<step> <rank> <point>`` to the file at each point, then sleeps: a test reads
where a save is and kills a process of its choice while the save sits in
that phase, however fast the machine writes.
"""

from __future__ import annotations

import os
import signal
import time

CRASH_ENV = "CINESCENE_TEST_CRASH_AT"
TRACE_ENV = "CINESCENE_TEST_SAVE_TRACE"
POINTS = (
    "tmp_created",
    "copy",
    "write",
    "after_shards",
    "after_rank_states",
    "before_commit",
    "before_rename",
    "after_rename",
    "after_latest",
)


def save_point(point: str, step: int, rank: int) -> None:
    """The test hooks above; nothing when neither variable is set."""
    crash = os.environ.get(CRASH_ENV)
    if crash:
        name, _, at = crash.partition("@")
        if name == point and (not at or int(at) == step):
            os.killpg(os.getpgid(0), signal.SIGKILL)
    trace = os.environ.get(TRACE_ENV)
    if trace:
        path, _, pause = trace.rpartition(":") if ":" in trace else (trace, "", "0")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            os.write(fd, f"{step} {rank} {point}\n".encode())
        finally:
            os.close(fd)
        time.sleep(float(pause or 0))
