"""Read W&B's offline run files back: the logged history, for tests and scripts.

An offline run is ``<dir>/wandb/offline-run-<time>-<id>/run-<id>.wandb``: a
LevelDB-style log of protobuf ``Record`` messages (wandb's own
``wandb_internal_pb2``). Layout, as wandb writes it: a 7-byte file header
(``:W&B``, magic 0xBEE1 little-endian, version 0), then 32 KiB blocks of
records, each with a 7-byte header (CRC32, little-endian length, type
1=full 2=first 3=middle 4=last); a block tail shorter than a header is zero
padding. wandb 0.31 no longer ships a Python reader, hence this small one.

A resumed run (same id, ``resume="allow"``) writes another offline-run
directory; :func:`read_history` merges them in time order, so a step logged
again after a resume shows its latest values.

Media in a ``wandb.Table`` (the eval hook's videos) are not in the run's
``files/``: W&B logs the table as a ``run_table`` artifact whose files wait,
until ``wandb sync``, in its staging directory (under ``WANDB_DATA_DIR``,
default ``~/.local/share/wandb``); :func:`read_artifacts` lists them.
"""

from __future__ import annotations

import json
import struct
import time
from collections.abc import Iterator
from pathlib import Path

FILE_HEADER = struct.Struct("<4sHB")
RECORD_HEADER = struct.Struct("<IHB")
BLOCK = 32768
IDENT, MAGIC = b":W&B", 0xBEE1
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def iter_records(path: str | Path) -> Iterator[bytes]:
    """Serialized Record messages of one .wandb file (a truncated tail is ignored)."""
    data = Path(path).read_bytes()
    ident, magic, _version = FILE_HEADER.unpack_from(data, 0)
    if ident != IDENT or magic != MAGIC:
        raise ValueError(f"{path} is not a W&B run file")
    pos, pending = FILE_HEADER.size, b""
    while pos + RECORD_HEADER.size <= len(data):
        left_in_block = BLOCK - pos % BLOCK
        if left_in_block < RECORD_HEADER.size:
            pos += left_in_block
            continue
        _crc, length, kind = RECORD_HEADER.unpack_from(data, pos)
        pos += RECORD_HEADER.size
        if kind == 0 and length == 0:  # zero padding at the end of a block
            pos += left_in_block - RECORD_HEADER.size
            continue
        chunk = data[pos : pos + length]
        if len(chunk) < length:
            return
        pos += length
        if kind == FULL:
            yield chunk
        elif kind == FIRST:
            pending = chunk
        elif kind == MIDDLE:
            pending += chunk
        elif kind == LAST:
            yield pending + chunk
            pending = b""


def offline_runs(run_dir: str | Path, run_id: str | None = None) -> list[Path]:
    """The .wandb files under ``<run_dir>/wandb``, oldest first (directory names start with the time).

    The id is read from the file name (``run-<id>.wandb``), not the directory's: a run resumed
    within the same second gets a directory with a ``-1`` style suffix."""
    files = (
        sorted(d.glob("run-*.wandb"))[:1] for d in sorted((Path(run_dir) / "wandb").glob("offline-run-*"))
    )
    return [f[0] for f in files if f and (run_id is None or run_id_of(f[0]) == run_id)]


def run_id_of(path: Path) -> str:
    """The run id of a ``run-<id>.wandb`` file."""
    return path.stem[len("run-") :]


def _records(run_dir: str | Path, kind: str, run_id: str | None = None) -> Iterator[object]:
    """The ``kind`` records ("run", "metric", "summary", ...) of the offline runs under ``run_dir``, in
    order."""
    from wandb.proto import wandb_internal_pb2 as pb

    for path in offline_runs(run_dir, run_id):
        for raw in iter_records(path):
            record = pb.Record()
            record.ParseFromString(raw)
            if record.WhichOneof("record_type") == kind:
                yield getattr(record, kind)


def read_history(run_dir: str | Path, run_id: str | None = None) -> dict[int, dict[str, object]]:
    """{step: {key: value}} of every history row logged offline under ``run_dir`` (merged over resumes)."""
    rows: dict[int, dict[str, object]] = {}
    for history in _records(run_dir, "history", run_id):
        row = {}
        for item in history.item:
            key = item.key or "/".join(item.nested_key)
            row[key] = json.loads(item.value_json)
        step = int(row.get("_step", history.step.num))
        rows.setdefault(step, {}).update(row)
    return rows


def read_artifacts(run_dir: str | Path, run_id: str | None = None) -> list[dict[str, object]]:
    """The artifacts logged offline under ``run_dir``: ``{"name", "type", "files": {path in the artifact:
    local file}}`` each, in logging order (the local files are W&B's staged copies)."""
    return [
        {
            "name": artifact.name,
            "type": artifact.type,
            "files": {e.path: e.local_path for e in artifact.manifest.contents},
        }
        for artifact in _records(run_dir, "artifact", run_id)
    ]


def read_metric_definitions(run_dir: str | Path, run_id: str | None = None) -> dict[str, str]:
    """{metric name or glob: its step metric ("" when it has none)} from the runs' ``define_metric`` calls."""
    return {(m.name or m.glob_name): m.step_metric for m in _records(run_dir, "metric", run_id)}


def read_summary(run_dir: str | Path, run_id: str | None = None) -> dict[str, object]:
    """The run summary as the offline files leave it (later updates win; nested keys joined with '/')."""
    summary: dict[str, object] = {}
    for record in _records(run_dir, "summary", run_id):
        for item in record.update:
            summary[item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
    return summary


def read_run_starts(run_dir: str | Path, run_id: str | None = None) -> list[dict[str, object]]:
    """One ``{"config", "git_commit"}`` per start of the run (its ``run`` record), oldest first."""
    return [
        {
            "config": {item.key: json.loads(item.value_json) for item in run.config.update},
            "git_commit": run.git.commit,
        }
        for run in _records(run_dir, "run", run_id)
    ]


def read_run_ids(run_dir: str | Path) -> list[str]:
    """Run ids of the offline runs under ``run_dir`` (one per start; equal ids = one resumed run)."""
    return [run_id_of(p) for p in offline_runs(run_dir)]


def _finished(path: Path) -> bool:
    from wandb.proto import wandb_internal_pb2 as pb

    last = None
    for raw in iter_records(path):
        last = raw
    if last is None:
        return False
    record = pb.Record()
    record.ParseFromString(last)
    return record.WhichOneof("record_type") == "exit"


def wait_until_written(run_dir: str | Path, timeout: float = 30.0) -> None:
    """Block until every offline run under ``run_dir`` ends with its exit record.

    ``run.finish()`` returns once W&B's service has the run's last records, which its writer
    may flush to disk a moment later; a reader in the same process (a test) waits here."""
    deadline = time.monotonic() + timeout
    while not all(_finished(p) for p in offline_runs(run_dir)):
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"W&B offline runs under {run_dir} still lack their exit record after {timeout} s"
            )
        time.sleep(0.05)
