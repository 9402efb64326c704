"""Where shard directories live: a local directory, or a prefix on S3-compatible object storage.

``data.train_shards``, ``eval.data`` and ``cinescene data prepare --out`` take either a path or
``s3://bucket/prefix``. A shard directory on object storage holds the same objects a local one holds
files (``manifest.json``, ``shard-*.tar``, ...), and is read the same way: the loader reads each sample
with one ranged GET of the byte range the manifest indexes, so exact resume and world-size changes work
as on local disk. :class:`ObjectPath` is to an object what :class:`pathlib.Path` is to a file (``root /
name``, ``.name``); the functions here take either.

Client: s3fs (fsspec) on botocore's usual configuration: credentials from ``AWS_ACCESS_KEY_ID`` /
``AWS_SECRET_ACCESS_KEY`` (/ ``AWS_SESSION_TOKEN``) or a profile (``AWS_PROFILE``, ``~/.aws``), the
endpoint of an S3-compatible server from ``AWS_ENDPOINT_URL`` (or ``AWS_ENDPOINT_URL_S3``), the region
from ``AWS_REGION``. Nothing of it is a config key: credentials are never in a config, a log line or an
error (a URL carrying one is refused, and the credential variables' values are masked in logs by
``cinescene.secrets``).

Errors. A missing object is ``FileNotFoundError`` (the loader skips and counts its samples, as for a
missing local shard); a denied one is one CineSceneError naming the object (no sample of it could be
read either, and the cause is the credentials, not the data). Anything else -- a refused or reset
connection, a timeout, a 5xx, throttling -- is transient: retried ``attempts`` times with exponential
backoff, then one CineSceneError naming the object, the attempts and the last cause.
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

from cinescene.config.data import OBJECT_URL_SCHEME as SCHEME
from cinescene.config.data import ObjectStoreConfig, check_object_url
from cinescene.errors import CineSceneError
from cinescene.log import get_logger

log = get_logger("data.storage")


def is_object_url(location: str | os.PathLike | ObjectPath) -> bool:
    return isinstance(location, ObjectPath) or str(location).startswith(SCHEME)


class ObjectPath:
    """An object (or a prefix) on S3-compatible storage, by URL: ``s3://bucket/prefix/name``."""

    __slots__ = ("url",)

    def __init__(self, url: str):
        self.url = check_object_url(url)

    @property
    def name(self) -> str:
        return self.url.rsplit("/", 1)[-1]

    @property
    def key(self) -> str:
        """``bucket/prefix/name``: the path s3fs takes."""
        return self.url[len(SCHEME) :]

    def __truediv__(self, name: str) -> ObjectPath:
        return ObjectPath(f"{self.url}/{name}")

    def __str__(self) -> str:
        return self.url

    def __repr__(self) -> str:
        return f"ObjectPath({self.url!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ObjectPath) and other.url == self.url

    def __hash__(self) -> int:
        return hash(self.url)


def location(value: str | os.PathLike | ObjectPath) -> Path | ObjectPath:
    """A shard directory (or file) as the config or the command line gives it."""
    if isinstance(value, (Path, ObjectPath)):
        return value
    return ObjectPath(str(value)) if is_object_url(value) else Path(value)


# Errors that no retry can fix (botocore's 403 and 404 reach us as these, through s3fs).
_PERMANENT = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)
CONNECT_TIMEOUT_S, READ_TIMEOUT_S = 10, 60
CHUNK = 8 << 20


class ObjectStore:
    """s3fs for this process (a DataLoader worker makes its own), every call bounded by ``retry``."""

    def __init__(self, retry: ObjectStoreConfig):
        import s3fs

        self.retry = retry
        self.fs = s3fs.S3FileSystem(
            skip_instance_cache=True,
            endpoint_url=_endpoint(),
            config_kwargs={
                "retries": {"total_max_attempts": 1, "mode": "standard"},  # ours: below
                "connect_timeout": CONNECT_TIMEOUT_S,
                "read_timeout": READ_TIMEOUT_S,
            },
        )
        self.fs.retries = 1  # the retries are ours (below), with one bound for every kind of call
        self.transient = _transient_errors()

    def call(self, what: str, path: ObjectPath, function, *args, **kwargs):
        """``function(*args, **kwargs)``, retried on transient errors; permanent ones are raised as they are,
        except a denial, which is one line (the credentials, not the data, are wrong)."""
        delay = self.retry.backoff_s
        for attempt in range(1, self.retry.attempts + 1):
            try:
                return function(*args, **kwargs)
            except PermissionError as exc:
                raise CineSceneError(
                    f"{path}: access denied ({_cause(exc)}); check the credentials (AWS_ACCESS_KEY_ID / "
                    "AWS_PROFILE) and the bucket's policy"
                ) from None
            except _PERMANENT:
                raise
            except self.transient as exc:
                if attempt == self.retry.attempts:
                    raise CineSceneError(
                        f"{path}: {what} failed {attempt} times over {self._waited(attempt):.3g} s, last "
                        f"with {_cause(exc)}; check the endpoint (AWS_ENDPOINT_URL) and the network"
                    ) from None
                log.warning(
                    "%s: %s failed (%s); retry %d of %d in %.1f s",
                    path,
                    what,
                    _cause(exc),
                    attempt,
                    self.retry.attempts - 1,
                    delay,
                )
                time.sleep(delay)
                delay = min(2 * delay, self.retry.max_backoff_s)
        raise AssertionError("unreachable")

    def _waited(self, attempts: int) -> float:
        delays, delay = 0.0, self.retry.backoff_s
        for _ in range(attempts - 1):
            delays, delay = delays + delay, min(2 * delay, self.retry.max_backoff_s)
        return delays

    def read_range(self, path: ObjectPath, offset: int, length: int) -> bytes:
        """Bytes ``offset .. offset+length`` (fewer when the object ends earlier; none past its end)."""
        try:
            return self.call("read", path, self.fs.cat_file, path.key, start=offset, end=offset + length)
        except OSError as exc:
            if "InvalidRange" in str(exc) or "Requested Range Not Satisfiable" in str(exc):
                return b""  # the object ends before the range starts: a truncated shard
            raise

    def read_bytes(self, path: ObjectPath) -> bytes:
        return self.call("read", path, self.fs.cat_file, path.key)

    def sizes(self, root: ObjectPath) -> dict[str, int]:
        """{object name: size} of the objects directly under ``root`` (one listing)."""
        try:
            entries = self.call("list", root, self.fs.ls, root.key, detail=True, refresh=True)
        except FileNotFoundError:
            return {}
        return {e["name"].rsplit("/", 1)[-1]: int(e["size"]) for e in entries if e.get("type") == "file"}

    def size(self, path: ObjectPath) -> int | None:
        try:
            return int(self.call("stat", path, self.fs.info, path.key, refresh=True)["size"])
        except FileNotFoundError:
            return None

    def sha256(self, path: ObjectPath) -> str:
        """The object's SHA-256, streamed in 8 MiB reads (a transient error restarts the whole read)."""

        def digest() -> str:
            hasher = hashlib.sha256()
            with self.fs.open(path.key, "rb", block_size=CHUNK) as f:
                for chunk in iter(lambda: f.read(CHUNK), b""):
                    hasher.update(chunk)
            return hasher.hexdigest()

        return self.call("read", path, digest)

    def write_bytes(self, path: ObjectPath, data: bytes) -> None:
        """One PUT: an object appears whole or not at all."""
        self._writing(path, self.fs.pipe_file, path.key, data)

    def put_file(self, local: Path, path: ObjectPath) -> None:
        self._writing(path, self.fs.put_file, str(local), path.key)

    def _writing(self, path: ObjectPath, function, *args) -> None:
        try:
            self.call("write", path, function, *args)
        except FileNotFoundError:  # S3's NoSuchBucket
            raise CineSceneError(f"{path}: its bucket does not exist; create it first") from None

    def delete(self, path: ObjectPath) -> None:
        self.call("delete", path, self.fs.rm_file, path.key)


def _endpoint() -> str | None:
    """An S3-compatible server's URL from the environment (botocore's own variables); None: AWS."""
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def _transient_errors() -> tuple[type[BaseException], ...]:
    """What a retry may fix: the network's and the server's errors (s3fs turns S3's error codes into
    OSErrors; botocore's connection errors, aiohttp's and timeouts reach us as they are)."""
    import aiohttp
    import botocore.exceptions

    return (OSError, TimeoutError, botocore.exceptions.BotoCoreError, aiohttp.ClientError)


def _cause(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:200]}" if text else type(exc).__name__


_stores: dict[tuple, ObjectStore] = {}


def object_store(retry: ObjectStoreConfig | None = None) -> ObjectStore:
    """This process's client (a forked worker gets a new one: s3fs sessions do not survive a fork)."""
    retry = retry or ObjectStoreConfig()
    key = (os.getpid(), _endpoint(), retry.attempts, retry.backoff_s, retry.max_backoff_s)
    if key not in _stores:
        try:
            _stores[key] = ObjectStore(retry)
        except ImportError:
            raise CineSceneError("s3:// locations need s3fs: pip install s3fs") from None
    return _stores[key]


# ---------------------------------------------------------------- either kind of location
# ``retry``: how an object store's transient errors are retried (None: the defaults).
def read_bytes(path: Path | ObjectPath, retry: ObjectStoreConfig | None = None) -> bytes:
    """A whole file or object; FileNotFoundError when it is not there."""
    return object_store(retry).read_bytes(path) if isinstance(path, ObjectPath) else Path(path).read_bytes()


def exists(path: Path | ObjectPath, retry: ObjectStoreConfig | None = None) -> bool:
    return (
        object_store(retry).size(path) is not None if isinstance(path, ObjectPath) else Path(path).is_file()
    )


def sizes(
    root: Path | ObjectPath, names: list[str], retry: ObjectStoreConfig | None = None
) -> dict[str, int | None]:
    """{name: size in bytes, None when missing} of files in the directory (or prefix) ``root``."""
    if isinstance(root, ObjectPath):
        listed = object_store(retry).sizes(root)
        return {name: listed.get(name) for name in names}
    found: dict[str, int | None] = {}
    for name in names:
        path = Path(root) / name
        found[name] = path.stat().st_size if path.is_file() else None
    return found


def staging_dir(url: ObjectPath) -> Path:
    """The local directory `cinescene data prepare` writes shards to before uploading them to ``url``:
    per URL, so a prepare that is run again resumes from what it staged."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "cinescene" / "stage" / hashlib.sha256(url.url.encode()).hexdigest()[:16]
