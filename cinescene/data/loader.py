"""The training loader: indexed reads of webdataset shards, with exact, world-size independent resume.

Design (docs/DATA.md, "Loader"). This is not webdataset's streaming
pipeline with a shuffle buffer: a buffer's contents depend on what every
worker of every rank has streamed so far, so no cursor can restore it at
another world size. Instead ``manifest.json`` indexes every sample's byte
range in its shard, the global sample order is a seeded permutation
(:mod:`cinescene.data.order`: ``data.shuffle`` = ``global`` or ``block``),
and each sample is read with one seek. The shards themselves stay plain
webdataset tars, which ``webdataset.WebDataset`` streams as usual.

Contract (the trainer's side)::

    loader = build_train_loader(cfg.data, cfg.model, rank=r, world_size=W, seed=cfg.run.seed,
                                micro_batch_size=cfg.train.micro_batch_size,
                                start_sample=state.get("consumed_samples", 0))
    for batch in loader:            # infinite; batch dicts as in docs/CONTRACTS.md
        ...
        save(loader.state_dict())   # {"consumed_samples": ..., ...}; restore with load_state_dict()

The cursor is the GLOBAL number of consumed samples ``c``; every ``next()``
on any rank advances it by ``micro_batch_size * world_size`` (counted when a
batch is handed out, so a checkpoint after a step includes that step's
batch). Micro-batch ``k`` after the cursor covers global positions
``c + k*m*W ... c + (k+1)*m*W - 1``; position ``g`` goes to rank
``(g - c) % W`` -- i.e. ranks interleave inside each global micro-batch.
Position ``g`` names a sample through :mod:`cinescene.data.order`, a pure
function of (seed, epoch, manifest). So restoring ``c`` at another world
size (or micro-batch size) continues the same global sequence.

Within a rank, DataLoader worker ``w`` of ``n`` builds micro-batches
``k = w, w + n, ...``; torch hands worker outputs back round-robin, so the
rank's batch order does not depend on the number of workers either.

Unreadable samples (missing or truncated shard, corrupt bytes, undecodable
arrays) are logged with their shard name (once per process) and replaced by
the next readable sample in the global order -- a choice that depends only
on the position and on which samples are bad, so it is the same at any world
size. A position whose own sample is unreadable counts as one skipped sample
(so a bad sample counts once per epoch); each batch carries that count of its
own positions as ``skipped_samples``, which makes the total exact whatever
the number of workers or ranks (the trainer sums it into ``data/skipped``).
A dataset with nothing readable left is a one-line CineSceneError.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable, Iterator

import torch

from cinescene.config.data import ObjectStoreConfig
from cinescene.errors import CineSceneError
from cinescene.log import get_logger

from . import storage
from .ensure import require_train_shards
from .manifest import Manifest, load_manifest
from .order import ORDERS, GlobalOrder
from .samples import LoaderDims, SampleDecoder, collate
from .shards import SampleError, ShardReader

log = get_logger("data.loader")
SKIPPED_SAMPLES = (
    "skipped_samples"  # batch entry (docs/CONTRACTS.md): this batch's positions whose sample was bad
)
_SKIPPED_SHARDS = (
    "_skipped_shards"  # private: their shards' names, for loader.stats (removed before yielding)
)
_FAILED = "_failed"  # private: a worker's one-line CineSceneError, re-raised by the consuming process


def new_skip_stats() -> dict[str, object]:
    """``loader.stats``: skipped samples in total and per shard name."""
    return {"skipped": 0, "skipped_by_shard": Counter()}


def count_skips(stats: dict[str, object], shard_names: Iterable[str]) -> None:
    for name in shard_names:
        stats["skipped"] += 1
        stats["skipped_by_shard"][name] += 1


class SampleSource:
    """Reads the sample at a global position; substitutes the next readable one for a bad one."""

    def __init__(
        self,
        manifest: Manifest,
        decoder: SampleDecoder,
        order: GlobalOrder,
        training: bool,
        retry: ObjectStoreConfig | None = None,
    ):
        self.manifest, self.decoder, self.order, self.training = manifest, decoder, order, training
        self.retry = retry  # shards on object storage: how transient errors are retried
        self.refs = manifest.samples()
        self.bad: dict[int, str] = {}  # manifest index -> reason, as found by this process
        self._reader: ShardReader | None = None
        self._pid = None

    def __getstate__(self):  # worker processes open their own files
        state = dict(self.__dict__)
        state["_reader"], state["_pid"] = None, None
        return state

    @property
    def reader(self) -> ShardReader:
        if self._reader is None or self._pid != os.getpid():
            self._reader, self._pid = ShardReader(retry=self.retry), os.getpid()
        return self._reader

    def try_read(self, index: int, position: int, training: bool) -> dict | None:
        """The sample at manifest ``index``, or None when it is unreadable (logged the first time)."""
        if index in self.bad:
            return None
        ref = self.refs[index]
        try:
            fields = self.reader.read(ref.shard, ref.key, ref.offset, ref.length, ref.crc)
            return self.decoder.decode(fields, ref.key, position, training)
        except SampleError as exc:
            self.bad[index] = str(exc)
            log.warning("skipping sample %s in shard %s: %s", ref.key, ref.shard.name, exc)
            return None

    def get(self, position: int) -> tuple[dict, str | None]:
        """The sample for ``position``, and the shard name of the position's own sample when that was bad."""
        skipped = None
        probe = position
        while True:  # every epoch visits every index, so this ends within two epochs
            index = self.order.index_at(probe)
            sample = self.try_read(index, position, self.training)
            if sample is not None:
                return sample, skipped
            if probe == position:
                skipped = self.refs[index].shard.name
            if len(self.bad) == len(self.refs):
                index, reason = next(iter(self.bad.items()))
                raise CineSceneError(
                    f"no readable sample left in {self.manifest.root}: all {len(self.refs)} "
                    f"failed (e.g. {self.refs[index].shard.name}: {reason})"
                )
            probe += 1


class _RankBatches(torch.utils.data.IterableDataset):
    """This rank's micro-batches from a cursor, split across DataLoader workers by batch index."""

    def __init__(self, source: SampleSource, rank: int, world: int, micro: int, start: int):
        super().__init__()
        self.source, self.rank, self.world, self.micro, self.start = source, rank, world, micro, start

    def __iter__(self) -> Iterator[dict]:
        info = torch.utils.data.get_worker_info()
        k, step = (info.id, info.num_workers) if info is not None else (0, 1)
        while True:
            base = self.start + k * self.micro * self.world + self.rank
            samples, skipped = [], []
            try:
                for i in range(self.micro):
                    sample, bad_shard = self.source.get(base + i * self.world)
                    samples.append(sample)
                    if bad_shard is not None:
                        skipped.append(bad_shard)
            except CineSceneError as exc:
                # Raised in a worker, it would reach the consumer wrapped in the worker's traceback text.
                yield {_FAILED: str(exc)}
                return
            batch = collate(samples)
            batch[SKIPPED_SAMPLES] = len(skipped)
            batch[_SKIPPED_SHARDS] = skipped
            yield batch
            k += step


class TrainLoader:
    """Infinite iterator of training micro-batches with a global-sample cursor (see module doc)."""

    def __init__(
        self,
        source: SampleSource,
        *,
        rank: int,
        world_size: int,
        micro_batch_size: int,
        num_workers: int = 0,
        start_sample: int = 0,
    ):
        self.source = source
        self.rank, self.world_size, self.micro_batch_size = rank, world_size, micro_batch_size
        self.num_workers = num_workers
        self._consumed = int(start_sample)
        self.stats = new_skip_stats()  # skipped samples in the batches this loader handed out

    @property
    def samples_per_step(self) -> int:
        """Global samples one micro-batch step consumes (all ranks together)."""
        return self.micro_batch_size * self.world_size

    @property
    def consumed_samples(self) -> int:
        return self._consumed

    @property
    def manifest(self) -> Manifest:
        return self.source.manifest

    def state_dict(self) -> dict:
        order = self.source.order
        return {
            "consumed_samples": self._consumed,
            "seed": order.seed,
            "order": order.mode,
            "num_samples": order.total,
        }

    def load_state_dict(self, state: dict) -> None:
        order = self.source.order
        saved = (
            state.get("seed", order.seed),
            state.get("order", order.mode),
            state.get("num_samples", order.total),
        )
        if saved != (order.seed, order.mode, order.total):
            log.warning(
                "loader state was saved with (seed, order, samples)=%s, now %s: the global order changes "
                "from here on",
                saved,
                (order.seed, order.mode, order.total),
            )
        self._consumed = int(state["consumed_samples"])

    def __iter__(self) -> Iterator[dict]:
        dataset = _RankBatches(self.source, self.rank, self.world_size, self.micro_batch_size, self._consumed)
        if self.num_workers > 0:
            batches = iter(
                torch.utils.data.DataLoader(
                    dataset, batch_size=None, num_workers=self.num_workers, prefetch_factor=2
                )
            )
        else:
            batches = iter(dataset)
        for batch in batches:
            if _FAILED in batch:
                raise CineSceneError(batch[_FAILED])
            count_skips(self.stats, batch.pop(_SKIPPED_SHARDS))
            self._consumed += self.samples_per_step
            yield batch


class EvalLoader:
    """One pass in manifest order, no scene shuffle; rank r takes samples r, r + W, ...; bad samples dropped.

    ``len()`` is exact: the first call reads this rank's samples once to find the unreadable ones (a
    finished pass remembers them too, so a later ``len()`` or pass costs no extra read). Each unreadable
    sample is logged and counted once in ``stats``.
    """

    def __init__(self, source: SampleSource, *, rank: int, world_size: int, micro_batch_size: int):
        self.source, self.rank, self.world_size, self.micro = source, rank, world_size, micro_batch_size
        self._readable: list[int] | None = None  # known after one full pass
        self.stats = new_skip_stats()

    def _samples(self) -> Iterator[dict]:
        indices = (
            self._readable
            if self._readable is not None
            else range(self.rank, self.source.order.total, self.world_size)
        )
        readable = []
        for index in indices:
            known_bad = index in self.source.bad
            sample = self.source.try_read(index, index, training=False)
            if sample is None:
                if not known_bad:
                    count_skips(self.stats, [self.source.refs[index].shard.name])
                continue
            readable.append(index)
            yield sample
        self._readable = readable

    def __len__(self) -> int:
        if self._readable is None:
            for _ in self._samples():
                pass
        return -(-len(self._readable) // self.micro)

    def __iter__(self) -> Iterator[dict]:
        samples = []
        for sample in self._samples():
            samples.append(sample)
            if len(samples) == self.micro:
                yield collate(samples)
                samples = []
        if samples:
            yield collate(samples)


def _check_shards(manifest: Manifest) -> None:
    """Warn about missing or truncated shards up front; fail when none exists at all.

    A truncated shard may still hold readable samples before the cut, so only
    missing files count towards "nothing there"; the rest is found out per sample.
    """
    files = manifest.shard_files()
    damaged = [f for f in files if f.status != "ok"]
    missing = [f for f in damaged if f.status == "missing"]
    if len(missing) == len(files):
        raise CineSceneError(
            f"none of the {len(files)} shards in {manifest.root} exists (e.g. {missing[0].describe()})"
        )
    if damaged:
        log.warning(
            "%d of %d shards in %s are damaged; their unreadable samples will be skipped: %s",
            len(damaged),
            len(files),
            manifest.root,
            ", ".join(f.describe() for f in damaged),
        )


def _source(data_cfg, dims, shards, seed: int, training: bool, order: str) -> SampleSource:
    manifest = load_manifest(storage.location(shards), data_cfg.object_store)
    _check_shards(manifest)
    decoder = SampleDecoder(
        manifest,
        data_cfg.scene_images,
        data_cfg.pixel_pool,
        LoaderDims.of(dims),
        seed,
        data_cfg.shuffle_scene_images,
        data_cfg.scene_images_min,
    )
    if order not in ORDERS:
        raise CineSceneError(f"unknown data.shuffle {order!r}; expected one of {list(ORDERS)}")
    sizes = [s["num_samples"] for s in manifest.data["shards"]]
    return SampleSource(
        manifest,
        decoder,
        GlobalOrder(sizes, seed, order, data_cfg.shuffle_buffer),
        training,
        data_cfg.object_store,
    )


def build_train_loader(
    data_cfg,
    model_cfg_or_dims,
    *,
    rank: int,
    world_size: int,
    seed: int,
    micro_batch_size: int,
    start_sample: int = 0,
    shards: str | None = None,
) -> TrainLoader:
    """The training loader of ``data_cfg.train_shards`` (or ``shards``); see the module doc for the contract.

    ``model_cfg_or_dims``: the ModelConfig (text_dim, text_len, in_dim are used) or a LoaderDims/dict.
    """
    if not 0 <= rank < world_size:
        raise CineSceneError(f"rank {rank} is outside world size {world_size}")
    source = _source(
        data_cfg, model_cfg_or_dims, shards or require_train_shards(data_cfg), seed, True, data_cfg.shuffle
    )
    return TrainLoader(
        source,
        rank=rank,
        world_size=world_size,
        micro_batch_size=micro_batch_size,
        num_workers=data_cfg.num_workers,
        start_sample=start_sample,
    )


def build_eval_loader(
    data_cfg, model_cfg_or_dims, *, shards: str, rank: int, world_size: int, micro_batch_size: int
) -> EvalLoader:
    """A finite, unshuffled pass over the shard directory ``shards`` (held-out data is ``eval.data``'s)."""
    source = _source(data_cfg, model_cfg_or_dims, shards, 0, False, "none")
    return EvalLoader(source, rank=rank, world_size=world_size, micro_batch_size=micro_batch_size)
