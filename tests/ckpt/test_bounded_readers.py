"""Hostile checkpoint files stay bounded: what a reader allocates is at most what the file stores.

A compressed pickle record (0.25 MB on disk, 256 MB inflated), a tensor whose declared shape reaches past
its storage, EMA slices that overlap (which left elements unwritten: uninitialised memory an export wrote
out): each refused with one line naming the file, before the memory is taken.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import pytest
import torch

from cinescene.ckpt.errors import DamagedCheckpointError
from cinescene.ckpt.rank_state import write_rank_state
from cinescene.ckpt.torchfile import TorchFile
from cinescene.ckpt.weights import TrainedWeights, consolidated_state_dict
from cinescene.config.checkpoint import CheckpointConfig
from cinescene.host_memory import current_rss_bytes, peak_rss_bytes, reset_peak
from cinescene.train.checkpoint import CheckpointManager, validate

from .fakes import FakeZeroEngine, rank_state, record, relist

OPTIM = "zero/zero_pp_rank_0_mp_rank_00_optim_states.pt"
INFLATED = 256 << 20


def checkpoint(root: Path, **changes) -> Path:
    manager = CheckpointManager(root, CheckpointConfig(), rank=0, world_size=1)
    return manager.save(FakeZeroEngine(step=1), record(1, **changes), rank_state(1), "run: {}\n")


def write_deflated_pickle_bomb(path: Path) -> None:
    """A torch-zip-shaped file whose data.pkl is a 256 MB bytes object, deflated to about 0.25 MB."""
    chunk = bytes(1 << 20)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        with archive.open("archive/data.pkl", "w", force_zip64=True) as record:
            record.write(b"\x80\x04\x8e" + INFLATED.to_bytes(8, "little"))  # PROTO 4, BINBYTES8 <length>
            for _ in range(INFLATED // len(chunk)):
                record.write(chunk)
            record.write(b".")


def test_a_compressed_pickle_record_is_refused_before_it_inflates(tmp_path):
    step = checkpoint(tmp_path / "ck")
    write_deflated_pickle_bomb(step / OPTIM)
    relist(step, OPTIM)
    assert (step / OPTIM).stat().st_size < INFLATED // 500
    measured = reset_peak()
    start = current_rss_bytes()
    for read in (TorchFile, lambda _path: validate(step), lambda _path: consolidated_state_dict(step)):
        with pytest.raises(DamagedCheckpointError) as info:
            read(step / OPTIM)
        assert str(step / OPTIM) in str(info.value) and "compressed" in str(info.value)
        assert "\n" not in str(info.value)
    if measured:
        assert peak_rss_bytes() - start < 64 << 20  # far below the 256 MB the record inflates to


def rewrite_pickle(path: Path, edit) -> None:
    """Rewrite a torch.save file with ``edit(pickle bytes)`` applied to its data.pkl (a valid zip again)."""
    with zipfile.ZipFile(path) as archive:
        entries = [(info, archive.read(info)) for info in archive.infolist()]
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
        for info, data in entries:
            archive.writestr(info.filename, edit(data) if info.filename.endswith("data.pkl") else data)
    path.write_bytes(buffer.getvalue())


def test_a_tensor_that_reaches_past_its_storage_is_refused(tmp_path):
    """The declared shape says 200 elements, the storage holds 7: reading it read zip metadata as floats."""
    path = tmp_path / "f.pt"
    # The pickle holds ... Q <storage offset> <shape> q<memo> <stride>: BININT1 (K) values, TUPLE1 (\x85).
    torch.save({"x": torch.arange(7, dtype=torch.float32)}, path)
    rewrite_pickle(path, lambda data: data.replace(b"QK\x00K\x07\x85", b"QK\x00K\xc8\x85", 1))
    with pytest.raises(DamagedCheckpointError, match="reaches past its storage"):
        TorchFile(path).obj["x"].read()
    torch.save({"x": torch.arange(7, dtype=torch.float32)[2:]}, path)  # storage offset 2, 5 elements
    rewrite_pickle(path, lambda data: data.replace(b"QK\x02K\x05\x85", b"QK\x06K\x05\x85", 1))
    with pytest.raises(DamagedCheckpointError, match="reaches past its storage"):
        TorchFile(path).obj["x"].read()
    torch.save({"x": torch.arange(7, dtype=torch.float32)}, path)  # a stride of 0: 10**6 reads of one float
    rewrite_pickle(path, lambda data: data.replace(b"K\x07\x85q\x08K\x01", b"J@B\x0f\x00\x85q\x08K\x00", 1))
    with pytest.raises(DamagedCheckpointError, match="reaches past its storage"):
        TorchFile(path).obj["x"].read()


def ema_state(rank: int, offset: int, length: int) -> dict:
    value = torch.full((length,), float(rank + 1))
    return {
        "rank": rank,
        "rng": {"torch": torch.zeros(4, dtype=torch.uint8)},
        "callbacks": {
            "ema": {"slices": {"w": {"offset": offset, "length": length, "shape": [2, 3], "value": value}}}
        },
    }


@pytest.mark.parametrize(
    "slices, problem",
    [(((0, 3), (0, 3)), "overlaps"), (((0, 3), (4, 2)), "in no slice"), (((0, 3), (3, 9)), "fewer than")],
    ids=["overlapping", "a gap", "longer than stored"],
)
def test_ema_slices_that_do_not_tile_the_parameter_are_refused_before_assembling(tmp_path, slices, problem):
    """Two ranks' slices of a 6-element parameter; overlapping ones once covered 6 elements in sum and left
    elements 3..5 as whatever memory held."""
    step = checkpoint(tmp_path / "ck", ema=True, world_size=2)
    states = [ema_state(rank, offset, min(length, 3)) for rank, (offset, length) in enumerate(slices)]
    for state, (_offset, length) in zip(states, slices):
        state["callbacks"]["ema"]["slices"]["w"]["length"] = length
    for rank, state in enumerate(states):
        write_rank_state(step / "rank_states" / f"rank_{rank:05d}.safetensors", state)
    with pytest.raises(DamagedCheckpointError, match=problem):
        TrainedWeights(step).tensor("w", ema=True)
