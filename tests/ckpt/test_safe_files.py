"""Checkpoint files read as data: torch.save files without running their pickles, rank states without pickle,
the manifest, the trainer record, and the `latest` pointer, which is a name and never a path to follow."""

from __future__ import annotations

import json
import os
import pathlib
from collections import OrderedDict

import pytest
import torch

from cinescene.ckpt import manifest
from cinescene.ckpt.errors import DamagedCheckpointError, UnsafeCheckpointError
from cinescene.ckpt.layout import read_pointer
from cinescene.ckpt.rank_state import RankStateFile, read_rank_state, write_rank_state
from cinescene.ckpt.record import read_record
from cinescene.ckpt.torchfile import TorchFile, torch_load

from .fakes import record


class Planted:
    """Unpickling this creates ``path``: the stand-in for code hidden in a checkpoint file."""

    def __init__(self, path):
        self.path = pathlib.Path(path)

    def __reduce__(self):
        return pathlib.Path.touch, (self.path,)


def test_torch_files_read_lazily_by_range_equal_what_torch_saved(tmp_path):
    big = torch.arange(1000, dtype=torch.float32)
    obj = {
        "a": big,
        "nested": [OrderedDict(x=torch.ones(2, 3, dtype=torch.bfloat16))],
        "shape": torch.Size([4, 5]),
        "n": 3,
        "view": big[10:20],
        "step": torch.tensor(7.0),
        "t": torch.eye(3).t(),
    }
    path = tmp_path / "f.pt"
    torch.save(obj, path)
    with TorchFile(path) as handle:
        got = handle.obj
        assert torch.equal(got["a"].read(), big) and torch.equal(got["a"].read_flat(990, 10), big[990:])
        assert torch.equal(got["view"].read(), big[10:20])  # a view into the same storage
        assert got["nested"][0]["x"].read().dtype == torch.bfloat16
        assert got["shape"] == torch.Size([4, 5]) and got["n"] == 3 and float(got["step"].read()) == 7.0
        assert torch.equal(got["t"].read(), torch.eye(3).t())  # a non-contiguous tensor
    assert torch.equal(torch_load(path)["a"], big)


@pytest.mark.parametrize("reader", [TorchFile, torch_load])
def test_a_planted_pickle_is_refused_naming_the_file_and_never_runs(tmp_path, reader):
    marker = tmp_path / "PWNED"
    path = tmp_path / "zero_pp_rank_0_mp_rank_00_optim_states.pt"
    torch.save({"optimizer_state_dict": {"x": torch.zeros(2), "payload": Planted(marker)}}, path)
    with pytest.raises(UnsafeCheckpointError) as info:
        reader(path)
    assert str(path) in str(info.value) and "not tensor data" in str(info.value)
    assert not marker.exists()


def test_truncated_and_foreign_torch_files_are_damage_naming_the_file(tmp_path):
    path = tmp_path / "f.pt"
    torch.save({"a": torch.zeros(100)}, path)
    data = path.read_bytes()
    for cut in (len(data) - 20, len(data) // 2, 10):
        path.write_bytes(data[:cut])
        for reader in (TorchFile, torch_load):
            with pytest.raises(DamagedCheckpointError, match=str(path)):
                reader(path)
    path.write_bytes(b"not a zip")
    with pytest.raises(DamagedCheckpointError, match="truncated or not a torch.save file"):
        TorchFile(path)
    torch.save({"a": torch.zeros(100)}, path)
    data = path.read_bytes()
    at = data.rindex(b"data.pkl")  # its name in the zip's central directory: no longer UTF-8
    path.write_bytes(data[:at] + b"\xff" + data[at + 1 :])
    for reader in (TorchFile, torch_load):
        with pytest.raises(DamagedCheckpointError, match=str(path)):
            reader(path)


def test_rank_states_round_trip_without_pickle_and_read_by_range(tmp_path):
    state = {
        "rank": 1,
        "rng": {"python": [3, [1, 2], None], "torch": torch.arange(5, dtype=torch.uint8)},
        "callbacks": {
            "ema": {"decay": 0.99, "slices": {"w": {"offset": 4, "length": 6, "value": torch.arange(6.0)}}}
        },
    }
    path = tmp_path / "rank_00001.safetensors"
    written = write_rank_state(path, state)
    assert written == manifest.hash_file(path)
    back = read_rank_state(path)
    assert back["rank"] == 1 and back["rng"]["python"] == [3, [1, 2], None]
    assert torch.equal(back["rng"]["torch"], state["rng"]["torch"])
    lazy = RankStateFile(path).tree["callbacks"]["ema"]["slices"]["w"]["value"]
    assert lazy.numel() == 6 and torch.equal(lazy.read_flat(2, 3), torch.tensor([2.0, 3.0, 4.0]))
    with pytest.raises(TypeError, match="cannot store a set"):
        write_rank_state(tmp_path / "bad.safetensors", {"x": {1, 2}})


def test_a_pickle_planted_as_a_rank_state_is_never_unpickled(tmp_path):
    marker = tmp_path / "PWNED"
    path = tmp_path / "rank_00000.safetensors"
    torch.save({"rng": Planted(marker)}, path)
    with pytest.raises(DamagedCheckpointError, match=str(path)):
        RankStateFile(path)
    assert not marker.exists()


def test_manifest_sizes_and_hashes_name_every_bad_file(tmp_path):
    records = {
        name: manifest.write_bytes(tmp_path / name, body)
        for name, body in (("a.bin", b"a" * 100), ("b.bin", b"b" * 50), ("c.bin", b"c" * 10))
    }
    manifest.write_part(tmp_path, 0, {k: v for k, v in records.items() if k != "c.bin"})
    files = manifest.merge_parts(tmp_path, {"c.bin": records["c.bin"]})
    assert manifest.read_manifest(tmp_path) == files and not list(tmp_path.glob(".manifest-part-*"))
    manifest.check_sizes(tmp_path, files)
    (tmp_path / "a.bin").write_bytes(b"a" * 99)
    (tmp_path / "b.bin").write_bytes(b"x" * 50)  # same size, other bytes: only the hash sees it
    (tmp_path / "c.bin").unlink()
    with pytest.raises(DamagedCheckpointError, match=r"a\.bin: truncated: 99 bytes, the manifest says 100"):
        manifest.check_sizes(tmp_path, files)
    assert manifest.verify(tmp_path, files) == [
        "a.bin: truncated (99 of 100 bytes)",
        "b.bin: altered (xxh3_128 differs)",
        "c.bin: missing",
    ]
    (tmp_path / "manifest.json").write_text('{"format": 1, "files": {"../x": {"size": 1, "sha256": ""}}}')
    with pytest.raises(DamagedCheckpointError, match="outside the step directory"):
        manifest.read_manifest(tmp_path)


def test_manifest_is_xxh3_and_format_1_sha256_manifests_still_verify(tmp_path):
    import hashlib

    import xxhash

    body = os.urandom(3 << 20)  # over one read chunk of hash_file
    written = manifest.write_bytes(tmp_path / "a.bin", body)
    assert written == manifest.FileRecord(
        len(body), xxhash.xxh3_128(body).hexdigest(), manifest.Digest.XXH3_128
    )
    manifest.merge_parts(tmp_path, {"a.bin": written})
    listed = json.loads((tmp_path / "manifest.json").read_text())
    assert listed == {
        "format": 2,
        "digest": "xxh3_128",
        "files": {"a.bin": {"size": len(body), "xxh3_128": written.digest}},
    }

    # A manifest written before format 2 lists SHA-256 digests; it is read and verified with SHA-256.
    old = {"format": 1, "files": {"a.bin": {"size": len(body), "sha256": hashlib.sha256(body).hexdigest()}}}
    (tmp_path / "manifest.json").write_text(json.dumps(old))
    files = manifest.read_manifest(tmp_path)
    assert files["a.bin"].algorithm is manifest.Digest.SHA256
    assert manifest.verify(tmp_path, files) == []
    (tmp_path / "a.bin").write_bytes(body[:-1] + bytes([body[-1] ^ 1]))
    assert manifest.verify(tmp_path, files) == ["a.bin: altered (sha256 differs)"]

    for bad, problem in [
        ({**old, "format": 3}, "manifest format 3 is not one this version reads"),
        ({**listed, "digest": "md5"}, "corrupt manifest"),
        (
            {"format": 2, "digest": "xxh3_128", "files": {"a.bin": {"size": 1, "sha256": "00"}}},
            "corrupt manifest",
        ),
    ]:
        (tmp_path / "manifest.json").write_text(json.dumps(bad))
        with pytest.raises(DamagedCheckpointError, match=problem):
            manifest.read_manifest(tmp_path)


@pytest.mark.parametrize(
    "body, problem",
    [
        (b"{not json", "corrupt JSON"),
        (b"\xff\xfe", "unreadable"),
        (b"[1, 2]", "not a JSON object"),
        (json.dumps({"format": 1, "step": 3}).encode(), "format 1"),
    ],
)
def test_a_bad_trainer_record_is_damage_naming_the_file(tmp_path, body, problem):
    (tmp_path / "trainer_state.json").write_bytes(body)
    with pytest.raises(DamagedCheckpointError, match=problem) as info:
        read_record(tmp_path)
    assert str(tmp_path / "trainer_state.json") in str(info.value)


def test_a_record_with_a_wrong_field_type_is_damage(tmp_path):
    body = json.loads(record(3).to_json())
    body["step"] = "three"
    (tmp_path / "trainer_state.json").write_text(json.dumps(body))
    with pytest.raises(DamagedCheckpointError, match="step is 'three', expected an integer"):
        read_record(tmp_path)
    del body["step"]
    (tmp_path / "trainer_state.json").write_text(json.dumps(body))
    with pytest.raises(DamagedCheckpointError, match="no 'step'"):
        read_record(tmp_path)


def _complete(step_dir: pathlib.Path) -> pathlib.Path:
    step_dir.mkdir(parents=True)
    (step_dir / "trainer_state.json").write_text(record(1).to_json())
    return step_dir


@pytest.mark.parametrize(
    "case",
    [
        "absolute",
        "dotdot",
        "latest_symlink",
        "step_symlink",
        "not_utf8",
        "directory",
        "not_a_step",
        "incomplete",
    ],
)
def test_latest_pointing_outside_its_directory_is_refused_and_never_followed(tmp_path, case):
    root, outside = tmp_path / "checkpoints", tmp_path / "elsewhere"
    root.mkdir()
    _complete(outside / "step_00000009")
    pointer = root / "latest"
    if case == "absolute":
        pointer.write_text(f"{outside / 'step_00000009'}\n")
    elif case == "dotdot":
        pointer.write_text("../elsewhere/step_00000009\n")
    elif case == "latest_symlink":
        (outside / "latest").write_text("step_00000009\n")
        pointer.symlink_to(outside / "latest")
    elif case == "step_symlink":
        (root / "step_00000009").symlink_to(outside / "step_00000009")
        pointer.write_text("step_00000009\n")
    elif case == "not_utf8":
        pointer.write_bytes(b"step_\xff\xfe\n")
    elif case == "directory":
        pointer.mkdir()
    elif case == "not_a_step":
        pointer.write_text("..\n")
    else:
        (root / "step_00000009").mkdir()
        pointer.write_text("step_00000009\n")
    with pytest.raises(DamagedCheckpointError) as info:
        read_pointer(root)
    assert str(pointer) in str(info.value)
    assert os.path.isdir(outside / "step_00000009")  # nothing outside was touched
