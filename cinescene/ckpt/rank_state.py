"""Per-rank state files (RNG and callback states such as the EMA shard): safetensors plus JSON, no pickle.

A state is a tree of dicts with string keys, lists, strings, numbers,
booleans, None and CPU tensors. The tensors go into the safetensors body,
each under its path in the tree; the tree itself, every tensor replaced by
``{"__tensor__": key}``, goes into the safetensors header's metadata. So a
rank file is data in two well-defined formats, and reading it runs nothing.

Reading can be lazy (:class:`RankStateFile`): tensors come back as
:class:`StoredTensor` handles that read the whole tensor or a range of it,
which is what re-slicing the EMA for another world size needs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save

from .errors import DamagedCheckpointError
from .manifest import FileRecord, write_bytes

TENSOR = "__tensor__"
META_KEY = "cinescene.state"


def encode(state: Any) -> bytes:
    """The safetensors bytes of ``state`` (see the module doc)."""
    tensors: dict[str, torch.Tensor] = {}

    def walk(node: Any, path: str) -> Any:
        if isinstance(node, torch.Tensor):
            tensors[path] = node.detach().cpu().contiguous()
            return {TENSOR: path}
        if isinstance(node, dict):
            if any(not isinstance(k, str) for k in node):
                raise TypeError(f"rank state {path or '/'}: keys must be strings")
            return {k: walk(v, f"{path}/{k}") for k, v in node.items()}
        if isinstance(node, (list, tuple)):
            return [walk(v, f"{path}/{i}") for i, v in enumerate(node)]
        if node is None or isinstance(node, (str, int, float, bool)):
            return node
        raise TypeError(f"rank state {path}: cannot store a {type(node).__name__}")

    tree = walk(state, "")
    return save(tensors, metadata={META_KEY: json.dumps(tree)})


def write_rank_state(path: Path, state: Any) -> FileRecord:
    return write_bytes(path, encode(state))


class StoredTensor:
    """A tensor of a rank file, read when asked for (whole, or a range of its flattened elements)."""

    def __init__(self, handle, key: str, path: Path):
        self._handle = handle
        self.key = key
        self.path = path
        self.shape = torch.Size(handle.get_slice(key).get_shape())

    def numel(self) -> int:
        return self.shape.numel()

    def read(self) -> torch.Tensor:
        return self._guard(lambda: self._handle.get_tensor(self.key))

    def read_flat(self, start: int = 0, length: int | None = None) -> torch.Tensor:
        length = self.numel() - start if length is None else length
        if len(self.shape) != 1:
            return self.read().reshape(-1)[start : start + length].clone()
        return self._guard(lambda: self._handle.get_slice(self.key)[start : start + length])

    def _guard(self, read):
        try:
            return read()
        except Exception as exc:
            raise DamagedCheckpointError(self.path, f"tensor {self.key} unreadable ({exc})") from None


class RankStateFile:
    """One rank file, opened: ``tree`` holds :class:`StoredTensor` handles in place of tensors."""

    def __init__(self, path: Path | str):
        self.path = Path(path)
        try:
            self._handle = safe_open(str(self.path), framework="pt", device="cpu")
            metadata = self._handle.metadata() or {}
            tree = json.loads(metadata[META_KEY])
        except FileNotFoundError:
            raise DamagedCheckpointError(self.path, "missing") from None
        except KeyError:
            raise DamagedCheckpointError(
                self.path, "not a rank state file (no state in its header)"
            ) from None
        except Exception as exc:  # truncated or altered header: safetensors' own errors, bad JSON
            raise DamagedCheckpointError(
                self.path, f"unreadable ({str(exc).splitlines()[0] if str(exc) else exc!r})"
            ) from None
        self.tree = self._resolve(tree)

    def _resolve(self, node: Any) -> Any:
        if isinstance(node, dict):
            if set(node) == {TENSOR}:
                try:
                    return StoredTensor(self._handle, str(node[TENSOR]), self.path)
                except Exception:
                    raise DamagedCheckpointError(self.path, f"tensor {node[TENSOR]} is missing") from None
            return {k: self._resolve(v) for k, v in node.items()}
        if isinstance(node, list):
            return [self._resolve(v) for v in node]
        return node

    def materialized(self) -> Any:
        """The tree with every tensor read."""

        def read(node: Any) -> Any:
            if isinstance(node, StoredTensor):
                return node.read()
            if isinstance(node, dict):
                return {k: read(v) for k, v in node.items()}
            if isinstance(node, list):
                return [read(v) for v in node]
            return node

        return read(self.tree)


def check_rank_state(path: Path | str) -> None:
    """Open a rank file and check its shape (RNG and callback states present) without reading tensor data."""
    tree = RankStateFile(path).tree
    if not (
        isinstance(tree, dict)
        and isinstance(tree.get("rng"), dict)
        and isinstance(tree.get("callbacks"), dict)
    ):
        raise DamagedCheckpointError(path, "not a rank state (no RNG or callback states in it)")


def read_rank_state(path: Path | str) -> Any:
    """A rank file's state with its tensors read."""
    return RankStateFile(path).materialized()
