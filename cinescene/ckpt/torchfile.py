"""Reading ``torch.save`` files as data, never as code.

Two readers share one allowlist, :data:`DEEPSPEED_GLOBALS`: exactly the
DeepSpeed classes its ZeRO shards pickle besides tensors and containers.

* :func:`torch_load`: ``torch.load(weights_only=True)`` with those classes as
  safe globals, for DeepSpeed's own load path (our checkpoint engine,
  :mod:`.ds_engine`, calls it). The file is first read by the reader below,
  so a refusal names the exact global and file.
* :class:`TorchFile`: our lazy reader of torch's zip format. The pickle is
  read by an unpickler that can build only containers, tensors and inert
  placeholders for the allowlisted classes; any other global raises
  :class:`~.errors.UnsafeCheckpointError` before anything is constructed.
  Tensors come back as :class:`LazyTensor`, a byte range of the file read
  with ``os.preadv`` when asked for, one piece at a time: streaming export
  and resharding hold the piece, not the file (and no memory map, whose
  touched pages would count as resident memory).

Bounded by the file: ``torch.save`` stores every record uncompressed, so a
compressed record (a pickle that would inflate a thousandfold) is refused
before it is read; every record must lie inside the file; and every tensor's
offset, shape and stride must stay inside its storage, which must lie inside
its record. So whatever a reader asks for is at most the bytes on disk.
"""

from __future__ import annotations

import importlib
import io
import math
import os
import pickle
import struct
import zipfile
from pathlib import Path
from typing import Any

import torch

from .errors import DamagedCheckpointError, UnsafeCheckpointError

#: (module, name) of every non-torch class a DeepSpeed ZeRO shard pickles (DeepSpeed 0.19: the loss
#: scaler and stage enum of every optimizer state, ZeRO-1/2's parameter slice addresses).
DEEPSPEED_GLOBALS: tuple[tuple[str, str], ...] = (
    ("deepspeed.runtime.fp16.loss_scaler", "LossScaler"),
    ("deepspeed.runtime.zero.config", "ZeroStageEnum"),
    ("deepspeed.utils.tensor_fragment", "fragment_address"),
)

_STORAGE_DTYPES = {
    "FloatStorage": torch.float32,
    "DoubleStorage": torch.float64,
    "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16,
    "LongStorage": torch.int64,
    "IntStorage": torch.int32,
    "ShortStorage": torch.int16,
    "CharStorage": torch.int8,
    "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
}
_READ_CHUNK = 1 << 30  # one preadv call moves at most this many bytes (Linux caps a read near 2 GiB)


class Placeholder:
    """An allowlisted DeepSpeed object, kept inert: its pickled arguments and state, nothing run."""

    qualname = "?"

    def __new__(cls, *args):
        obj = super().__new__(cls)
        obj.args = args
        obj.state = None
        return obj

    def __setstate__(self, state) -> None:
        self.state = state

    def __repr__(self) -> str:
        return f"<{self.qualname}{self.args!r}>"


_PLACEHOLDERS = {key: type(key[1], (Placeholder,), {"qualname": ".".join(key)}) for key in DEEPSPEED_GLOBALS}


class LazyTensor:
    """A tensor of a :class:`TorchFile`: shape and dtype known, bytes read on demand."""

    def __init__(
        self,
        source: TorchFile,
        key: str,
        dtype: torch.dtype,
        offset: int,
        shape: tuple[int, ...],
        stride: tuple[int, ...],
    ):
        self.source = source
        self.key = key
        self.dtype = dtype
        self.offset = offset
        self.shape = torch.Size(shape)
        self.stride = tuple(stride)

    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def is_contiguous(self) -> bool:
        expected, step = [], 1
        for size in reversed(self.shape):
            expected.append(step)
            step *= size
        return all(size == 1 or a == b for size, a, b in zip(self.shape, self.stride, reversed(expected)))

    def read_flat(self, start: int = 0, length: int | None = None) -> torch.Tensor:
        """Elements ``start .. start+length`` of the flattened tensor (contiguous tensors), read now."""
        total = self.numel()
        length = total - start if length is None else length
        if start < 0 or length < 0 or start + length > total:
            raise ValueError(f"range {start}+{length} outside a tensor of {total} elements")
        if not self.is_contiguous:
            return self.read().reshape(-1)[start : start + length].clone()
        return self.source.read_elements(self.key, self.dtype, self.offset + start, length)

    def read(self) -> torch.Tensor:
        """The whole tensor, read now."""
        if self.is_contiguous:
            return self.read_flat().view(self.shape)
        span = 1 + sum((s - 1) * st for s, st in zip(self.shape, self.stride)) if self.numel() else 0
        base = self.source.read_elements(self.key, self.dtype, self.offset, span)
        return base.as_strided(self.shape, self.stride).clone()

    def __repr__(self) -> str:
        return f"LazyTensor({tuple(self.shape)}, {self.dtype})"


def _is_index(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _rebuild_tensor(
    storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, metadata=None
) -> LazyTensor:
    source, key, dtype, storage_numel = storage
    size, stride = tuple(size), tuple(stride)
    if not (
        _is_index(storage_offset) and len(size) == len(stride) and all(_is_index(v) for v in size + stride)
    ):
        raise DamagedCheckpointError(
            source.path, f"tensor on storage {key} has an invalid offset, shape or stride ({size}, {stride})"
        )
    numel = math.prod(size)
    span = 1 + sum((n - 1) * st for n, st in zip(size, stride)) if numel else 0
    if storage_offset + span > storage_numel or numel > storage_numel:
        raise DamagedCheckpointError(
            source.path,
            f"tensor of shape {list(size)} at offset {storage_offset} reaches past its storage {key} of "
            f"{storage_numel} elements",
        )
    return LazyTensor(source, key, dtype, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, state=None):
    return data


def _rebuild_from_type(func, new_type, args, state):
    return func(*args)


class _TensorType:
    """What ``torch.Tensor`` / ``Parameter`` stand for in a pickle: a type tag, never instantiated."""


_TORCH_GLOBALS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): __import__("collections").OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type,
    ("torch", "Tensor"): _TensorType,
    ("torch.nn.parameter", "Parameter"): _TensorType,
    ("torch", "Size"): torch.Size,
    ("torch", "device"): torch.device,
}


class _DataUnpickler(pickle.Unpickler):
    def __init__(self, data: bytes, source: TorchFile):
        super().__init__(io.BytesIO(data))
        self.source = source

    def find_class(self, module: str, name: str):
        key = (module, name)
        if key in _TORCH_GLOBALS:
            return _TORCH_GLOBALS[key]
        if key in _PLACEHOLDERS:
            return _PLACEHOLDERS[key]
        if module == "torch" and name in _STORAGE_DTYPES:
            return _STORAGE_DTYPES[name]
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        raise UnsafeCheckpointError(self.source.path, f"{module}.{name}")

    def persistent_load(self, pid):
        if not (
            isinstance(pid, tuple)
            and len(pid) == 5
            and pid[0] == "storage"
            and isinstance(pid[1], torch.dtype)
        ):
            raise DamagedCheckpointError(self.source.path, f"unexpected storage record {pid!r:.80}")
        _, dtype, key, _location, numel = pid
        if not _is_index(numel):
            raise DamagedCheckpointError(self.source.path, f"storage {key!r:.40} has no element count")
        self.source.check_storage(str(key), dtype, numel)
        return (self.source, str(key), dtype, numel)


class TorchFile:
    """One ``torch.save`` zip file, its pickle read safely (``.obj``), its tensors lazy."""

    def __init__(self, path: Path | str):
        self.path = Path(path)
        self._fd: int | None = None
        try:
            self.size = self.path.stat().st_size
            with zipfile.ZipFile(self.path) as archive:
                self._entries = {info.filename: info for info in archive.infolist()}
                pickles = [name for name in self._entries if name.endswith("/data.pkl") or name == "data.pkl"]
                if len(pickles) != 1:
                    raise DamagedCheckpointError(self.path, "not a torch.save file (no data.pkl record)")
                self._prefix = pickles[0][: -len("data.pkl")]
                self._check_record(self._entries[pickles[0]], "the pickle record data.pkl")
                data = archive.read(pickles[0])
        except FileNotFoundError:
            raise DamagedCheckpointError(self.path, "missing") from None
        except (zipfile.BadZipFile, OSError, EOFError, ValueError, struct.error, NotImplementedError) as exc:
            # ValueError: a name in the zip's directory that is not UTF-8 (UnicodeDecodeError), a bad size
            raise DamagedCheckpointError(
                self.path,
                f"unreadable ({_first_line(exc) or 'not a zip archive'}): truncated or not a torch.save file",
            ) from None
        try:
            self.obj = _DataUnpickler(data, self).load()
        except (UnsafeCheckpointError, DamagedCheckpointError):
            raise
        except Exception as exc:  # a cut or altered pickle: EOFError, UnpicklingError, TypeError, ...
            raise DamagedCheckpointError(
                self.path, f"its pickled structure is corrupt ({_first_line(exc)})"
            ) from None

    # ------------------------------------------------------------------ storage
    def _storage_info(self, key: str) -> zipfile.ZipInfo:
        info = self._entries.get(f"{self._prefix}data/{key}")
        if info is None:
            raise DamagedCheckpointError(self.path, f"tensor data record {key} is missing")
        return info

    def _check_record(self, info: zipfile.ZipInfo, what: str) -> None:
        """A record is stored uncompressed (as torch.save writes every record) and lies inside the file."""
        if info.compress_type != zipfile.ZIP_STORED:
            raise DamagedCheckpointError(self.path, f"{what} is compressed (not torch.save output)")
        if info.compress_size != info.file_size or info.header_offset + 30 + info.file_size > self.size:
            raise DamagedCheckpointError(
                self.path,
                f"{what} claims {info.file_size} bytes past the end of the file (truncated or altered)",
            )

    def check_storage(self, key: str, dtype: torch.dtype, numel: int) -> None:
        info = self._storage_info(key)
        self._check_record(info, f"tensor data record {key}")
        if self._data_offset(info) + info.file_size > self.size:
            raise DamagedCheckpointError(
                self.path, f"tensor data record {key} reaches past the end of the file"
            )
        if info.file_size < numel * _itemsize(dtype):
            raise DamagedCheckpointError(
                self.path,
                f"tensor data record {key} holds {info.file_size} bytes, "
                f"fewer than its {numel} elements need",
            )

    def _data_offset(self, info: zipfile.ZipInfo) -> int:
        header = os.pread(self._handle(), 30, info.header_offset)
        if len(header) != 30 or header[:4] != b"PK\x03\x04":
            raise DamagedCheckpointError(self.path, f"bad zip record header at byte {info.header_offset}")
        name_len, extra_len = struct.unpack("<HH", header[26:30])
        return info.header_offset + 30 + name_len + extra_len

    def _handle(self) -> int:
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDONLY)
        return self._fd

    def read_elements(self, key: str, dtype: torch.dtype, start: int, count: int) -> torch.Tensor:
        """``count`` elements of storage ``key`` from element ``start``, read with preadv (a new tensor)."""
        itemsize = _itemsize(dtype)
        info = self._storage_info(key)
        out = torch.empty(count * itemsize, dtype=torch.uint8)
        if count:
            offset = self._data_offset(info) + start * itemsize
            view = memoryview(out.numpy())
            done = 0
            while done < len(view):
                got = os.preadv(self._handle(), [view[done : done + _READ_CHUNK]], offset + done)
                if got <= 0:
                    raise DamagedCheckpointError(
                        self.path, f"truncated: tensor data ends at byte {offset + done}"
                    )
                done += got
        return out.view(dtype)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> TorchFile:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def check(path: Path | str) -> None:
    """Read the file's structure as :class:`TorchFile` does (no tensor data): raises if damaged or unsafe."""
    TorchFile(path).close()


def deepspeed_safe_globals() -> list:
    """The classes of :data:`DEEPSPEED_GLOBALS`, imported (for ``torch.serialization.safe_globals``)."""
    return [getattr(importlib.import_module(module), name) for module, name in DEEPSPEED_GLOBALS]


def torch_load(path: Path | str, map_location=None) -> Any:
    """``torch.load(weights_only=True)`` with the DeepSpeed allowlist, after :func:`check` named any
    problem."""
    check(path)
    with torch.serialization.safe_globals(deepspeed_safe_globals()):
        try:
            return torch.load(path, map_location=map_location, weights_only=True)
        except pickle.UnpicklingError as exc:
            raise UnsafeCheckpointError(path, _first_line(exc)) from None
        except Exception as exc:
            raise DamagedCheckpointError(path, f"unreadable ({_first_line(exc)})") from None
