"""Helpers for the model tests: tiny configs, randomised weights, sample batches."""

from __future__ import annotations

import contextlib
import copy
import weakref
from pathlib import Path

import torch

from cinescene.config import load_config
from cinescene.models.weights import TensorSource

REPO = Path(__file__).resolve().parents[2]


def tiny_config(**changes):
    """The tiny model's config (configs/model/tiny.yaml via the smoke experiment), with dotted changes."""
    cfg, _ = load_config(REPO / "configs/experiments/smoke.yaml")
    model = copy.deepcopy(cfg.model)
    for dotted, value in changes.items():
        target = model
        *parents, leaf = dotted.split("__")
        for name in parents:
            target = getattr(target, name)
        setattr(target, leaf, value)
    return model


@torch.no_grad()
def randomize(module: torch.nn.Module, seed: int = 0, std: float = 0.1, skip=()) -> None:
    """Give every parameter random values, so zero/identity-initialised parts do something."""
    gen = torch.Generator().manual_seed(seed)
    for name, param in module.named_parameters():
        if any(s in name for s in skip):
            continue
        param.copy_(torch.randn(param.shape, generator=gen) * std)


def random_cameras(batch: int, count: int, gen: torch.Generator) -> torch.Tensor:
    """(batch, count, 4, 4) camera-to-world: a random turn about the vertical axis and a random position."""
    cameras = torch.eye(4).repeat(batch, count, 1, 1)
    angles = torch.rand(batch, count, generator=gen)
    cameras[:, :, 0, 0] = torch.cos(angles)
    cameras[:, :, 0, 2] = torch.sin(angles)
    cameras[:, :, 2, 0] = -torch.sin(angles)
    cameras[:, :, 2, 2] = torch.cos(angles)
    cameras[:, :, :3, 3] = torch.randn(batch, count, 3, generator=gen)
    return cameras


def tiny_batch(batch: int = 2, seed: int = 0, scene_images: int = 3):
    """Inputs shaped like the contract's batch for the tiny model (pixel proxy 3x5x16x16)."""
    gen = torch.Generator().manual_seed(seed)
    frames = 5
    cameras = random_cameras(batch, frames, gen)
    inputs = dict(
        x=torch.randn(batch, 3, frames, 16, 16, generator=gen),
        timestep=torch.rand(batch, generator=gen) * 1000,
        text=torch.randn(batch, 32, 64, generator=gen),
        cameras=cameras,
        scene_images=torch.rand(batch, scene_images, 3, 64, 64, generator=gen),
        scene_latents=torch.randn(batch, scene_images, 3, 16, 16, generator=gen),
    )
    # Drawn from their own generator: the inputs above stay what they were before scene cameras existed.
    inputs["scene_cameras"] = random_cameras(
        batch, scene_images, torch.Generator().manual_seed(seed + 10_000)
    )
    return inputs


def write_header_only_safetensors(path, shapes, dtype: str = "BF16") -> None:
    """A .safetensors whose header declares ``shapes`` (name -> shape) over a sparse, all-zero data area.

    Full-size checkpoints (billions of parameters) for name/shape checks: the
    file's length is what the header says, but no data block is ever written.
    """
    import json
    import math
    import struct

    itemsize = {"BF16": 2, "F16": 2, "F32": 4}[dtype]
    header, offset = {}, 0
    for name, shape in shapes.items():
        size = itemsize * math.prod(shape)
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as out:
        out.write(struct.pack("<Q", len(blob)))
        out.write(blob)
        out.truncate(8 + len(blob) + offset)


class ReadLog:
    """The tensors a :class:`TensorSource` read, in order, and the most earlier reads alive at any read."""

    def __init__(self):
        self.keys: list[str] = []
        self.most_alive = 0
        self._refs: list[weakref.ref] = []

    def note(self, key: str, tensor: torch.Tensor) -> None:
        self.most_alive = max(self.most_alive, sum(ref() is not None for ref in self._refs))
        self.keys.append(key)
        self._refs.append(weakref.ref(tensor))


@contextlib.contextmanager
def recorded_reads():
    """Record every tensor read from any TensorSource (checkpoint data) inside the block."""
    log, original = ReadLog(), TensorSource.read

    def read(self, key):
        tensor = original(self, key)
        log.note(key, tensor)
        return tensor

    TensorSource.read = read
    try:
        yield log
    finally:
        TensorSource.read = original
