"""A rank's checkpoint state copied into host memory, for ``checkpoint.async``.

What a save writes (DeepSpeed's ZeRO partition: fp32 weights and Adam
moments; the module states; this rank's RNG and callback states such as the
EMA shard) is a tree of dicts, lists and tensors that the next optimizer
update changes in place. :meth:`HostCopy.copy` turns such a tree into one the
loop can no longer touch: every tensor storage is copied once into a host
buffer and every tensor becomes the same view (dtype, offset, shape, strides,
``requires_grad``, ``Parameter`` or not) of that copy; other leaves are
deep-copied. Storage sharing is kept, so ``torch.save`` writes the same bytes
from the copy as from the original: a background save's files equal a
synchronous save's.

The copy runs on the save's writer thread while the loop computes the next
step's forward and backward (which change none of it); the loop waits for it
only before the optimizer update. On a GPU the buffers are pinned and the
device-to-host copies run on a side stream that starts after the work that
produced the state (:meth:`HostCopy.mark_produced`, on the loop's thread).

The buffers are kept in a pool and reused by the next save (at most one save
is in flight, so the previous copy is free by then): the host memory a run
pays is one copy of its partition, reserved at start-up
(:meth:`HostCopy.reserve`) so that no save allocates it.
"""

from __future__ import annotations

import copy
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

import torch


def _storages(tree: Any, seen: dict[int, int]) -> None:
    """Collect the distinct tensor storages of ``tree`` (StorageImpl address -> bytes)."""
    if isinstance(tree, torch.Tensor):
        storage = tree.untyped_storage()
        seen[storage._cdata] = storage.nbytes()
    elif isinstance(tree, dict):
        for value in tree.values():
            _storages(value, seen)
    elif type(tree) in (list, tuple):
        for value in tree:
            _storages(value, seen)


def storage_sizes(trees: Iterable[Any]) -> list[int]:
    """The byte sizes of the distinct tensor storages in ``trees``: what :meth:`HostCopy.copy` allocates."""
    seen: dict[int, int] = {}
    for tree in trees:
        _storages(tree, seen)
    return list(seen.values())


class HostCopy:
    """Host buffers for one checkpoint state at a time, reused from save to save."""

    def __init__(self, pin: bool | None = None):
        self.pin = torch.cuda.is_available() if pin is None else pin
        self._free: dict[int, list[torch.UntypedStorage]] = defaultdict(list)
        self._lent: list[torch.UntypedStorage] = []
        self._storages: dict[int, torch.UntypedStorage] = {}  # source StorageImpl -> its copy
        self._objects: dict[int, Any] = {}  # id of a source object -> its copy (also deepcopy's memo)
        self._keep: list[Any] = []
        self._produced = None  # (device, CUDA event) recorded by the loop's thread
        self._stream = None  # the side stream of the device-to-host copies

    # ------------------------------------------------------------------ memory
    @property
    def nbytes(self) -> int:
        """Host memory held by the pool (free and lent buffers)."""
        return sum(s.nbytes() for pool in self._free.values() for s in pool) + sum(
            s.nbytes() for s in self._lent
        )

    def reserve(self, sizes: Iterable[int]) -> None:
        """Allocate (and touch) buffers of these byte sizes now, so the first save does not."""
        for size in sizes:
            if size:
                self._free[size].append(self._allocate(size, touch=True))

    def _allocate(self, size: int, touch: bool = False) -> torch.UntypedStorage:
        storage = torch.empty(size, dtype=torch.uint8, pin_memory=self.pin).untyped_storage()
        if touch and not self.pin:  # pinned pages are resident already
            storage.fill_(0)
        return storage

    def _buffer(self, size: int) -> torch.UntypedStorage:
        if size == 0:
            return torch.UntypedStorage(0)
        pool = self._free.get(size)
        storage = pool.pop() if pool else self._allocate(size)
        self._lent.append(storage)
        return storage

    # -------------------------------------------------------------------- copy
    def mark_produced(self) -> None:
        """On the loop's thread, when the state is final: device copies start after what the GPU queued."""
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            device = torch.device("cuda", torch.cuda.current_device())
            event = torch.cuda.Event()
            event.record()
            self._produced = (device, event)

    def copy(self, tree: Any) -> Any:
        """``tree`` with every tensor copied into a pool buffer (see the module doc).

        Several trees may be copied before :meth:`settle`; what they share (storages, objects) is copied
        once and stays shared, as ``torch.save`` would see it. Call :meth:`release` once the copy has
        been written.
        """
        done = self._objects.get(id(tree))
        if done is not None:
            return done
        if isinstance(tree, torch.Tensor):
            copied = self._tensor(tree)
        elif isinstance(tree, dict):
            copied = copy.copy(tree)  # keeps the dict's type (OrderedDict, DeepSpeed's own)
            copied.clear()
            copied.update((key, self.copy(value)) for key, value in tree.items())
        elif type(tree) is list:
            copied = [self.copy(value) for value in tree]
        elif type(tree) is tuple:
            copied = tuple(self.copy(value) for value in tree)
        else:
            # Scalars, strings, torch.Size and other tuple types, DeepSpeed's small objects (its loss
            # scaler); the shared memo keeps objects shared between them shared.
            return copy.deepcopy(tree, self._objects)
        self._objects[id(tree)] = copied
        self._keep.append(tree)  # ids stay unique while the copy is taken
        return copied

    def _tensor(self, tensor: torch.Tensor) -> torch.Tensor:
        source = tensor.untyped_storage()
        storage = self._storages.get(source._cdata)
        if storage is None:
            storage = self._buffer(source.nbytes())
            if source.nbytes():
                self._copy_storage(storage, source)
            self._storages[source._cdata] = storage
        view = torch.empty(0, dtype=tensor.dtype).set_(
            storage, tensor.storage_offset(), tensor.size(), tensor.stride()
        )
        if isinstance(tensor, torch.nn.Parameter):
            view = torch.nn.Parameter(view, requires_grad=tensor.requires_grad)
        elif tensor.requires_grad:
            view.requires_grad_(True)
        # Python attributes DeepSpeed sets on its tensors (``ds_id``): torch.save writes them too.
        view.__dict__.update((key, self.copy(value)) for key, value in tensor.__dict__.items())
        return view

    def _copy_storage(self, target: torch.UntypedStorage, source: torch.UntypedStorage) -> None:
        # As uint8 tensors: a tensor copy releases the GIL and runs vectorised.
        dst = torch.empty(0, dtype=torch.uint8).set_(target)
        src = torch.empty(0, dtype=torch.uint8, device=source.device).set_(source)
        if source.device.type != "cuda":
            dst.copy_(src)
            return
        device, produced = self._produced or (source.device, None)
        with torch.cuda.device(device):
            if self._stream is None:
                self._stream = torch.cuda.Stream()
            with torch.cuda.stream(self._stream):
                if produced is not None:
                    self._stream.wait_event(produced)
                dst.copy_(src, non_blocking=self.pin)

    def settle(self) -> None:
        """The copy is complete (device-to-host copies waited for): the loop may change the originals."""
        self._storages.clear()
        self._objects.clear()
        self._keep.clear()
        if self._stream is not None:
            self._stream.synchronize()
        self._produced = None

    def release(self) -> None:
        """The copy has been written: its buffers go back to the pool for the next save."""
        for storage in self._lent:
            self._free[storage.nbytes()].append(storage)
        self._lent = []
