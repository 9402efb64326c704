"""Pretrained loading: every file format, both key layouts, and readable reports for wrong checkpoints."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from cinescene.errors import CineSceneError
from cinescene.models import build_model, load_pretrained, read_state_dict, wan_to_diffusers
from cinescene.models.weights import PICKLE_SUFFIXES, group_keys, is_cinescene_extension, open_checkpoint

from .helpers import randomize, recorded_reads, tiny_config


def base_state(seed=0):
    """A Wan-layout state dict of the tiny base DiT (no CineScene modules), random values."""
    model = build_model(tiny_config(scene__enabled=False, camera__enabled=False))
    randomize(model, seed=seed)
    return {k: v.contiguous() for k, v in model.state_dict().items()}


def assert_loaded(model, state):
    own = model.state_dict()
    assert all(torch.equal(own[k], v) for k, v in state.items())


def test_single_safetensors_into_the_full_model(tmp_path):
    state = base_state()
    save_file(state, tmp_path / "diffusion_pytorch_model.safetensors")
    model = build_model(tiny_config())
    report = load_pretrained(model, tmp_path / "diffusion_pytorch_model.safetensors")
    assert_loaded(model, state)
    # A Wan checkpoint has none of CineScene's modules: they keep their initialisation.
    assert report.ok and report.fresh and all(is_cinescene_extension(k) for k in report.fresh)
    assert torch.all(model.blocks[0].cam_encoder.weight == 0)


def test_sharded_index_and_directory(tmp_path):
    state = base_state(seed=1)
    keys = sorted(state)
    shards = {"model-00001-of-00002.safetensors": keys[::2], "model-00002-of-00002.safetensors": keys[1::2]}
    weight_map = {}
    for name, names in shards.items():
        save_file({k: state[k] for k in names}, tmp_path / name)
        weight_map.update(dict.fromkeys(names, name))
    index = tmp_path / "model.safetensors.index.json"
    index.write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    for source in (index, tmp_path):  # the index itself, or the directory holding it
        model = build_model(tiny_config(scene__enabled=False))
        load_pretrained(model, source)
        assert_loaded(model, state)
    (tmp_path / shards.popitem()[0]).unlink()
    with pytest.raises(CineSceneError, match="missing"):
        read_state_dict(index)


def test_pth_wrapped_and_prefixed_in_diffusers_layout(tmp_path):
    state = base_state(seed=2)
    diffusers_state = {f"model.diffusion_model.{k}": v for k, v in wan_to_diffusers(state).items()}
    path = tmp_path / "wan.pth"
    torch.save({"state_dict": diffusers_state, "step": 7}, path)
    model = build_model(tiny_config())
    report = load_pretrained(model, path)
    assert "diffusers layout" in report.source
    assert_loaded(model, state)


@pytest.mark.parametrize("layout", ["wan", "diffusers"])
def test_loading_reads_each_tensor_once_and_one_at_a_time(tmp_path, layout):
    """The lazy path: no full state dict in memory, yet the same weights as reading everything."""
    state = base_state(seed=4)
    on_disk = state if layout == "wan" else wan_to_diffusers(state)
    path = tmp_path / "wan.safetensors"
    save_file(on_disk, path)
    model = build_model(tiny_config())
    with recorded_reads() as log:
        report = load_pretrained(model, path)
    assert_loaded(model, state)
    # Read by the model's (Wan) names, each needed tensor exactly once, nothing else.
    assert sorted(log.keys) == sorted(report.loaded) == sorted(state)
    # Each tensor is dropped once copied: no earlier read is alive when the next one is read.
    assert log.most_alive == 0
    eager, _ = read_state_dict(path)
    assert set(eager) == set(on_disk)


def test_reports_come_from_headers_before_any_data_is_read(tmp_path):
    state = base_state(seed=5)
    state["blocks.0.ffn.0.weight"] = torch.zeros(3, 3)
    path = tmp_path / "bad.safetensors"
    save_file(state, path)
    with open_checkpoint(path) as (tensors, _):
        assert tensors.shapes["blocks.0.ffn.0.weight"] == (3, 3) and len(tensors) == len(state)
    with recorded_reads() as log, pytest.raises(CineSceneError, match="1 mis-shaped"):
        load_pretrained(build_model(tiny_config()), path)
    assert log.keys == []


def test_legacy_and_ckpt_pickles_load(tmp_path):
    state = base_state(seed=6)
    legacy = tmp_path / "legacy.pth"  # pre-zip pickle: cannot be memory-mapped, read whole
    torch.save(state, legacy, _use_new_zipfile_serialization=False)
    ckpt = tmp_path / "wan.ckpt"
    torch.save({"model": state}, ckpt)
    for path in (legacy, ckpt):
        model = build_model(tiny_config(scene__enabled=False))
        assert load_pretrained(model, path).ok
        assert_loaded(model, state)


def test_wrong_checkpoint_reports_grouped_keys(tmp_path):
    state = base_state(seed=3)
    for i in range(2):
        del state[f"blocks.{i}.self_attn.q.weight"]
    del state["head.modulation"]
    state["blocks.1.ffn.0.weight"] = torch.zeros(3, 3)
    state["blocks.0.extra_thing.weight"] = torch.zeros(2)
    state["img_emb.proj.0.weight"] = torch.zeros(2)
    path = tmp_path / "bad.safetensors"
    save_file(state, path)
    model = build_model(tiny_config())
    before = model.blocks[0].ffn[0].weight.clone()
    with pytest.raises(CineSceneError) as info:
        load_pretrained(model, path)
    lines = str(info.value).splitlines()
    print("\n".join(lines))
    assert "does not fit the model" in lines[0] and "3 missing, 2 unexpected, 1 mis-shaped" in lines[0]
    assert "    blocks.{0-1}.self_attn.q.weight" in lines
    assert "    head.modulation" in lines
    assert "    blocks.0.extra_thing.weight" in lines and "    img_emb.proj.0.weight" in lines
    assert "    blocks.1.ffn.0.weight: [3, 3] vs [128, 64]" in lines
    assert torch.equal(model.blocks[0].ffn[0].weight, before)  # strict: nothing written
    report = load_pretrained(model, path, strict=False)  # non-strict: the rest loads
    assert not report.ok and torch.equal(model.blocks[0].ffn[2].weight, state["blocks.0.ffn.2.weight"])


def test_unreadable_files_are_clear(tmp_path):
    with pytest.raises(CineSceneError, match="not found"):
        read_state_dict(tmp_path / "nope.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not really")
    with pytest.raises(CineSceneError, match="cannot read"):
        read_state_dict(tmp_path / "junk.safetensors")
    (tmp_path / "w.onnx").write_bytes(b"")
    with pytest.raises(CineSceneError, match="unknown checkpoint format") as info:
        read_state_dict(tmp_path / "w.onnx")
    for suffix in (".safetensors", ".json") + PICKLE_SUFFIXES:  # the message names every accepted format
        assert suffix in str(info.value)


def test_group_keys():
    keys = [f"blocks.{i}.self_attn.q.weight" for i in (0, 1, 2, 5, 7, 8)] + ["head.head.bias"]
    assert group_keys(keys) == ["blocks.{0-2,5,7-8}.self_attn.q.weight", "head.head.bias"]
