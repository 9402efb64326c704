"""The training loader: exact, world-size independent resume over webdataset shards.

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
arrays) are logged once per process with their shard name, counted in
``loader.stats``, and replaced by the next readable sample in the global
order -- a choice that depends only on the position and on which samples
are bad, so it is the same at any world size. A dataset with nothing
readable left is a one-line CineSceneError.
"""
from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

import torch

from cinescene.errors import CineSceneError
from cinescene.log import get_logger

from .ensure import require_train_shards
from .manifest import Manifest, load_manifest
from .order import ORDERS, GlobalOrder
from .samples import LoaderDims, SampleDecoder, collate
from .shards import SampleError, ShardReader

log = get_logger("data.loader")
SKIPPED = "_skipped"  # private batch entry: unreadable samples met while building it (removed before yielding)


class SampleSource:
    """Reads the sample at a global position; substitutes the next readable one for a bad one."""

    def __init__(self, manifest: Manifest, decoder: SampleDecoder, order: GlobalOrder, training: bool):
        self.manifest, self.decoder, self.order, self.training = manifest, decoder, order, training
        self.refs = manifest.samples()
        self.bad: Dict[int, str] = {}
        self._reader: Optional[ShardReader] = None
        self._pid = None

    def __getstate__(self):  # worker processes open their own files
        state = dict(self.__dict__)
        state["_reader"], state["_pid"] = None, None
        return state

    @property
    def reader(self) -> ShardReader:
        if self._reader is None or self._pid != os.getpid():
            self._reader, self._pid = ShardReader(), os.getpid()
        return self._reader

    def read(self, index: int, position: int, training: bool) -> dict:
        ref = self.refs[index]
        fields = self.reader.read(ref.shard, ref.key, ref.offset, ref.length, ref.crc)
        return self.decoder.decode(fields, ref.key, position, training)

    def get(self, position: int) -> Tuple[dict, List[Tuple[str, str, str]]]:
        """The sample for ``position`` and the newly found bad samples ``(shard, key, reason)``."""
        skipped = []
        probe = position
        while True:  # every epoch visits every index, so this ends within two epochs
            index = self.order.index_at(probe)
            probe += 1
            if index in self.bad:
                if len(self.bad) == len(self.refs):
                    break
                continue
            try:
                return self.read(index, position, self.training), skipped
            except SampleError as exc:
                ref = self.refs[index]
                self.bad[index] = str(exc)
                skipped.append((ref.shard.name, ref.key, str(exc)))
                log.warning("skipping sample %s in shard %s: %s", ref.key, ref.shard.name, exc)
        index, reason = next(iter(self.bad.items()))
        raise CineSceneError(f"no readable sample left in {self.manifest.root}: all {len(self.refs)} failed "
                             f"(e.g. {self.refs[index].shard.name}: {reason})")


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
            for i in range(self.micro):
                sample, bad = self.source.get(base + i * self.world)
                samples.append(sample)
                skipped.extend(bad)
            batch = collate(samples)
            batch[SKIPPED] = skipped
            yield batch
            k += step


class TrainLoader:
    """Infinite iterator of training micro-batches with a global-sample cursor (see module doc)."""

    def __init__(self, source: SampleSource, *, rank: int, world_size: int, micro_batch_size: int,
                 num_workers: int = 0, start_sample: int = 0):
        self.source = source
        self.rank, self.world_size, self.micro_batch_size = rank, world_size, micro_batch_size
        self.num_workers = num_workers
        self._consumed = int(start_sample)
        self.stats: Dict[str, object] = {"skipped": 0, "skipped_by_shard": Counter()}

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
        return {"consumed_samples": self._consumed, "seed": order.seed, "order": order.mode,
                "num_samples": order.total}

    def load_state_dict(self, state: dict) -> None:
        order = self.source.order
        saved = (state.get("seed", order.seed), state.get("order", order.mode), state.get("num_samples", order.total))
        if saved != (order.seed, order.mode, order.total):
            log.warning("loader state was saved with (seed, order, samples)=%s, now %s: the global order changes "
                        "from here on", saved, (order.seed, order.mode, order.total))
        self._consumed = int(state["consumed_samples"])

    def __iter__(self) -> Iterator[dict]:
        dataset = _RankBatches(self.source, self.rank, self.world_size, self.micro_batch_size, self._consumed)
        if self.num_workers > 0:
            batches = iter(torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=self.num_workers,
                                                       prefetch_factor=2))
        else:
            batches = iter(dataset)
        while True:
            try:
                batch = next(batches)
            except CineSceneError as exc:  # from a worker: keep only the message line
                raise CineSceneError(str(exc).strip().splitlines()[-1]) from None
            for shard, _key, _reason in batch.pop(SKIPPED):
                self.stats["skipped"] += 1
                self.stats["skipped_by_shard"][shard] += 1
            self._consumed += self.samples_per_step
            yield batch


class EvalLoader:
    """One pass in manifest order, no scene shuffle; rank r takes samples r, r + W, ...; bad samples dropped."""

    def __init__(self, source: SampleSource, *, rank: int, world_size: int, micro_batch_size: int):
        self.source, self.rank, self.world_size, self.micro = source, rank, world_size, micro_batch_size

    def __len__(self) -> int:
        mine = len(range(self.rank, self.source.order.total, self.world_size))
        return -(-mine // self.micro)

    def __iter__(self) -> Iterator[dict]:
        samples = []
        for index in range(self.rank, self.source.order.total, self.world_size):
            try:
                samples.append(self.source.read(index, index, training=False))
            except SampleError as exc:
                ref = self.source.refs[index]
                log.warning("skipping sample %s in shard %s: %s", ref.key, ref.shard.name, exc)
                continue
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
    problems, missing = [], 0
    for shard in manifest.data["shards"]:
        path = manifest.root / shard["name"]
        size = path.stat().st_size if path.is_file() else None
        if size is None:
            problems.append(f"{shard['name']} (missing)")
            missing += 1
        elif size < shard["bytes"]:
            problems.append(f"{shard['name']} (truncated: {size} of {shard['bytes']} bytes)")
    if missing == len(manifest.data["shards"]):
        raise CineSceneError(f"none of the {missing} shards in {manifest.root} exists (e.g. {problems[0]})")
    if problems:
        log.warning("%d of %d shards in %s are damaged; their unreadable samples will be skipped: %s",
                    len(problems), len(manifest.data["shards"]), manifest.root, ", ".join(problems))


def _source(data_cfg, dims, shards, seed: int, training: bool, order: str) -> SampleSource:
    manifest = load_manifest(shards)
    _check_shards(manifest)
    decoder = SampleDecoder(manifest, data_cfg.scene_images, data_cfg.pixel_pool, LoaderDims.of(dims), seed,
                            data_cfg.shuffle_scene_images)
    if order not in ORDERS:
        raise CineSceneError(f"unknown data.shuffle {order!r}; expected one of {list(ORDERS)}")
    sizes = [s["num_samples"] for s in manifest.data["shards"]]
    return SampleSource(manifest, decoder, GlobalOrder(sizes, seed, order, data_cfg.shuffle_buffer), training)


def build_train_loader(data_cfg, model_cfg_or_dims, *, rank: int, world_size: int, seed: int,
                       micro_batch_size: int, start_sample: int = 0, shards: Optional[str] = None) -> TrainLoader:
    """The training loader of ``data_cfg.train_shards`` (or ``shards``); see the module doc for the contract.

    ``model_cfg_or_dims``: the ModelConfig (text_dim, text_len, in_dim are used) or a LoaderDims/dict.
    """
    if not 0 <= rank < world_size:
        raise CineSceneError(f"rank {rank} is outside world size {world_size}")
    source = _source(data_cfg, model_cfg_or_dims, Path(shards or require_train_shards(data_cfg)), seed, True,
                     data_cfg.shuffle)
    return TrainLoader(source, rank=rank, world_size=world_size, micro_batch_size=micro_batch_size,
                       num_workers=data_cfg.num_workers, start_sample=start_sample)


def build_eval_loader(data_cfg, model_cfg_or_dims, *, rank: int, world_size: int, micro_batch_size: int,
                      shards: Optional[str] = None) -> EvalLoader:
    """A finite, unshuffled pass over ``data_cfg.val_shards`` (or ``shards``)."""
    path = shards or data_cfg.val_shards
    if not path:
        raise CineSceneError("no evaluation shards: set data.val_shards")
    source = _source(data_cfg, model_cfg_or_dims, Path(path), 0, False, "none")
    return EvalLoader(source, rank=rank, world_size=world_size, micro_batch_size=micro_batch_size)
