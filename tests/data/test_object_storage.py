"""Shards on object storage, against a real S3 server on loopback (SeaweedFS, tests/fixtures/s3_server.py).

`data prepare --out s3://...` writes the same bytes a local prepare writes; the loader reads them by ranged
GETs and gives the same batches as from local disk, at any world size and from any cursor; a deleted
object's samples are skipped and counted like a deleted local shard's; transient errors are retried with
backoff, then one line. The training run on s3 shards, killed and resumed, is in tests/train/.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import threading

import pytest

from cinescene.config import ConfigError, load_config
from cinescene.config.data import ObjectStoreConfig
from cinescene.data.manifest import load_manifest
from cinescene.data.prepare import prepare
from cinescene.errors import CineSceneError
from tests.conftest import REPO as REPO_ROOT

from .test_loader import global_keys, loader


@pytest.fixture
def staged(tmp_path, monkeypatch):
    """prepare's staging directories go under the test's tmp_path."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def s3_shards(s3, tiny_clips, staged) -> str:
    """The tiny clips prepared straight into the bucket, as tiny_shards are on disk."""
    url = f"{s3.url}/tiny/shards"
    manifest = prepare(
        tiny_clips, url, encoder="none", rank=0, world=1, shard_size_mb=0.16, show_progress=False
    )
    assert str(manifest) == f"{url}/manifest.json"
    return url


def test_prepare_to_s3_writes_the_bytes_a_local_prepare_writes(s3, s3_shards, tiny_shards):
    fs = s3.fs()
    local = sorted(p.name for p in tiny_shards.iterdir() if p.is_file() and not p.name.startswith("."))
    remote = sorted(p.rsplit("/", 1)[1] for p in fs.ls(s3_shards.removeprefix("s3://")))
    assert remote == local
    for name in local:
        assert (
            fs.cat_file(f"{s3_shards.removeprefix('s3://')}/{name}") == (tiny_shards / name).read_bytes()
        ), name
    assert load_manifest(s3_shards).data == load_manifest(tiny_shards).data


def test_prepare_again_uploads_nothing_and_a_second_rank_merges_from_the_bucket(s3, tiny_clips, staged):
    url = f"{s3.url}/two-ranks"
    assert prepare(tiny_clips, url, encoder="none", rank=0, world=2, show_progress=False) is None
    shutil.rmtree(staged)  # rank 1 runs on another machine: nothing staged there
    assert str(prepare(tiny_clips, url, encoder="none", rank=1, world=2, show_progress=False)).endswith(
        "/manifest.json"
    )
    fs = s3.fs()
    before = {p: fs.info(p)["LastModified"] for p in fs.ls(url.removeprefix("s3://"))}
    assert prepare(tiny_clips, url, encoder="none", rank=1, world=2, show_progress=False)
    after = {
        p: fs.info(p, refresh=True)["LastModified"] for p in fs.ls(url.removeprefix("s3://"), refresh=True)
    }
    changed = sorted(p.rsplit("/", 1)[1] for p in before if after[p] != before[p])
    assert changed in ([], ["manifest.json"])  # shards, markers and rank manifests are not uploaded again
    assert load_manifest(url).num_samples == 6


def test_the_loader_gives_the_same_batches_from_s3_at_any_world_size_and_cursor(s3_shards, tiny_shards):
    reference = global_keys([loader(tiny_shards, micro=2)], 7)
    assert global_keys([loader(s3_shards, micro=2)], 7) == reference
    two = [loader(s3_shards, rank=r, world=2, micro=1) for r in range(2)]
    first = global_keys(two, 4)
    one = loader(s3_shards, micro=2)
    one.load_state_dict(two[0].state_dict())
    assert first + global_keys([one], 3) == reference
    local, remote = next(iter(loader(tiny_shards, micro=3))), next(iter(loader(s3_shards, micro=3)))
    assert all(
        (local[k] == remote[k]).all() if hasattr(local[k], "shape") else local[k] == remote[k] for k in local
    )


def test_worker_processes_read_s3_with_their_own_clients(s3_shards, tiny_shards):
    reference = global_keys([loader(tiny_shards, micro=1)], 7)
    assert global_keys([loader(s3_shards, micro=1, num_workers=2)], 7) == reference


def test_a_deleted_object_is_skipped_and_counted_like_a_deleted_local_shard(
    s3, s3_shards, shards_copy, caplog
):
    name = load_manifest(shards_copy).data["shards"][1]["name"]
    (shards_copy / name).unlink()
    s3.fs().rm_file(f"{s3_shards.removeprefix('s3://')}/{name}")
    with caplog.at_level(logging.WARNING, logger="cinescene"):
        local, remote = loader(shards_copy, micro=2), loader(s3_shards, micro=2)
        keys = global_keys([remote], 6)
    assert keys == global_keys([local], 6)
    assert remote.stats["skipped"] == local.stats["skipped"] > 0
    assert dict(remote.stats["skipped_by_shard"]) == {name: remote.stats["skipped"]}
    assert f"1 of 3 shards in {s3_shards} are damaged" in caplog.text and f"{name} (missing)" in caplog.text


class FlakyProxy:
    """A TCP proxy on loopback in front of the server that resets its first ``drop`` connections."""

    def __init__(self, target: str, drop: int):
        host, port = target.removeprefix("http://").split(":")
        self.target, self.drop, self.dropped = (host, int(port)), drop, 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if self.dropped < self.drop:
                self.dropped += 1
                client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                client.close()  # linger 0: a reset
                continue
            upstream = socket.create_connection(self.target)
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(1 << 16):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self.listener.close()


def test_transient_errors_are_retried_with_backoff(s3, s3_shards, tiny_shards, monkeypatch, caplog):
    proxy = FlakyProxy(s3.server.endpoint, drop=3)
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
    retry = ObjectStoreConfig(attempts=4, backoff_s=0.05)
    try:
        with caplog.at_level(logging.WARNING, logger="cinescene"):
            keys = global_keys([loader(s3_shards, micro=2, object_store=retry)], 3)
    finally:
        proxy.close()
    assert keys == global_keys([loader(tiny_shards, micro=2)], 3)
    # Not every reset reaches our retries: the S3 client stack absorbs one or two of the three here, varying
    # with timing. Each that reaches them is one warning; the next test's total wait checks the doubling.
    failures = caplog.text.count("failed (")
    assert proxy.dropped == 3 and 1 <= failures <= 3 and "retry 1 of 3 in 0.1 s" in caplog.text


def test_a_server_that_stays_away_is_one_line_after_the_bounded_retries(s3_shards, monkeypatch):
    with socket.create_server(("127.0.0.1", 0)) as closed:
        port = closed.getsockname()[1]
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    with pytest.raises(CineSceneError) as info:
        loader(s3_shards, micro=2, object_store=ObjectStoreConfig(attempts=3, backoff_s=0.05))
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{s3_shards}/manifest.json: ")
    assert "failed 3 times over 0.15 s, last with EndpointConnectionError" in message


@pytest.mark.slow  # waits out the default backoff (7.5 s)
def test_the_cli_says_one_line_and_never_the_credentials(s3, s3_shards):
    env = dict(os.environ, AWS_ENDPOINT_URL="http://127.0.0.1:9")  # discard port: refused
    out = subprocess.run(
        [sys.executable, "-m", "cinescene", "data", "inspect", s3_shards],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    errors = [line for line in out.stderr.splitlines() if line.startswith("cinescene")]
    assert out.returncode == 1 and len(errors) == 1 and "Traceback" not in out.stderr
    assert "failed 5 times" in errors[0] and "AWS_ENDPOINT_URL" in errors[0]
    assert s3.server.secret_key not in out.stderr + out.stdout


@pytest.mark.parametrize(
    "override, key",
    [
        ("data.train_shards=s3://AKIAKEY:secret@bucket/shards", "data.train_shards"),
        ("data.train_shards=s3://", "data.train_shards"),
        ("eval.data=s3://host:9000/shards", "eval.data"),
        ("data.train_shards=s3://bucket/shards", "data.generate"),  # smoke renders synthetic data
        ("data.object_store.attempts=0", "data.object_store.attempts"),
    ],
)
def test_bad_object_storage_settings_name_their_key(override, key):
    with pytest.raises(ConfigError) as info:
        load_config(REPO_ROOT / "configs/experiments/smoke.yaml", [override])
    assert info.value.key == key
    assert "secret" not in str(info.value)


def test_a_deleted_manifest_is_one_line(s3, s3_shards):
    s3.fs().rm_file(f"{s3_shards.removeprefix('s3://')}/manifest.json")
    with pytest.raises(CineSceneError, match=r"s3://.*/tiny/shards: no manifest.json \(run `cinescene data"):
        load_manifest(s3_shards)


@pytest.mark.slow
def test_bench_loader_times_s3_against_local_disk_in_one_run(s3_shards, tiny_shards, cinescene_cmd, cli_env):
    def bench(*extra):
        return subprocess.run(
            [
                *cinescene_cmd,
                "bench",
                "loader",
                str(REPO_ROOT / "configs/experiments/smoke.yaml"),
                f"data.train_shards={tiny_shards}",
                "data.scene_images=3",
                "--workers",
                "0",
                "1",
                "--batches",
                "3",
                "--step-time",
                "0.5",
                *extra,
            ],
            capture_output=True,
            text=True,
            env=dict(cli_env, **{k: os.environ[k] for k in os.environ if k.startswith("AWS_")}),
            timeout=300,
        )

    run = bench("--against", s3_shards, "--json")
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout)
    assert result["shards"] == str(tiny_shards) and result["against"]["shards"] == s3_shards
    assert [r["workers"] for r in result["against"]["rows"]] == [0, 1]
    assert all(r["samples_per_s"] > 0 and r["vs_shards"] > 0 for r in result["against"]["rows"])
    table = bench("--against", s3_shards).stdout
    assert f"from {tiny_shards}:" in table and f"from {s3_shards}:" in table and "x the first)" in table
    other = bench("--against", str(tiny_shards.parent))
    assert other.returncode == 1 and other.stderr.count("\n") == 1 and "Traceback" not in other.stderr


def test_held_out_data_on_s3_reads_like_local_disk(s3_shards, tiny_shards):
    """eval.data as an s3:// prefix: the eval loader's pass and the sampler's random access."""
    from cinescene.data.loader import build_eval_loader

    from .conftest import DIMS, data_config

    def keys(shards):
        ld = build_eval_loader(
            data_config(shards), DIMS, shards=shards, rank=0, world_size=1, micro_batch_size=4
        )
        return [key for batch in ld for key in batch["key"]]

    assert keys(s3_shards) == keys(str(tiny_shards)) and len(keys(s3_shards)) == 6
