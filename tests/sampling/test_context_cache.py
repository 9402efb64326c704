"""The inference context cache: same video with and without it; video-only steps after the first."""

from __future__ import annotations

import pytest
import torch

from cinescene.errors import CineSceneError
from cinescene.models import build_model
from cinescene.models.context_cache import ContextKVCache, check_cacheable
from cinescene.sampling import sample, sampling_sigmas
from tests.models.helpers import randomize, tiny_batch, tiny_config


def _model(**changes):
    cfg = tiny_config(attention__mask="context_readonly", scene__timestep="clean", **changes)
    model = build_model(cfg, load_weights=False).eval()
    randomize(model, seed=1)  # zero-initialised heads/encoders would make every output trivially equal
    return model


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return _model()


@pytest.fixture(scope="module")
def batch():
    return tiny_batch(batch=2, seed=3)


def _sample(model, batch, cache, **kwargs):
    return sample(
        model,
        batch["x"],
        batch["text"],
        steps=4,
        cameras=batch["cameras"],
        scene_images=batch["scene_images"],
        context_cache=cache,
        **kwargs,
    )


@pytest.mark.slow
def test_sampling_with_the_cache_gives_the_same_video(model, batch):
    plain = _sample(model, batch, False)
    cached = _sample(model, batch, True)
    assert plain.shape == batch["x"].shape
    assert plain.abs().max() > 0.1  # the model did something
    # fp32 on CPU: the only difference is GEMM blocking over fewer rows.
    assert (cached - plain).abs().max() < 1e-5 * max(1.0, float(plain.abs().max()))


@pytest.mark.slow
def test_same_video_when_the_unconditional_branch_drops_the_scene(model, batch):
    plain = _sample(model, batch, False, drop_scene_unconditional=True)
    cached = _sample(model, batch, True, drop_scene_unconditional=True)
    assert (cached - plain).abs().max() < 1e-5 * max(1.0, float(plain.abs().max()))


def test_after_the_first_step_only_video_tokens_run(model, batch):
    """Record the sequence length each block's self-attention sees: full once per branch, then video only."""
    seen = []
    handle = model.blocks[0].self_attn.register_forward_pre_hook(
        lambda m, args: seen.append(args[0].shape[1])
    )
    try:
        _sample(model, batch, True)
    finally:
        handle.remove()
    num_video = 5 * 8 * 8
    full = seen[0]
    assert full > num_video
    assert seen == [full, full] + [num_video] * 6  # 4 steps x 2 guidance branches


def test_cache_holds_one_context_kv_per_layer(model, batch):
    cache = ContextKVCache()
    timestep = torch.full((2,), 500.0)
    first = cache.forward(
        model,
        batch["x"],
        timestep,
        batch["text"],
        cameras=batch["cameras"],
        scene_images=batch["scene_images"],
    )
    assert cache.filled and len(cache.keys) == len(model.blocks) == len(cache.values)
    context_tokens = cache.keys[0].shape[1]
    assert cache.keys[0].shape == (2, context_tokens, 4, 16) and cache.nbytes() > 0
    again = cache.forward(model, batch["x"], timestep, batch["text"], cameras=batch["cameras"])
    assert (again - first).abs().max() < 1e-5
    with pytest.raises(ValueError, match="video tokens"):
        cache.forward(model, batch["x"][:, :, :3], timestep, batch["text"], cameras=batch["cameras"])


@pytest.mark.parametrize(
    "changes,match",
    [
        (dict(attention__mask="full"), "context_readonly"),
        (dict(scene__timestep="shared"), "timestep=clean"),
    ],
)
def test_refuses_when_the_context_depends_on_the_step(changes, match):
    cfg = tiny_config(**{"attention__mask": "context_readonly", "scene__timestep": "clean", **changes})
    model = build_model(cfg, load_weights=False)
    with pytest.raises(CineSceneError, match=match):
        check_cacheable(model)
    batch = tiny_batch(batch=1)
    with pytest.raises(CineSceneError, match="cannot be used"):
        sample(
            model, batch["x"], batch["text"], steps=1, scene_images=batch["scene_images"], context_cache=True
        )


def test_sigmas_run_from_one_to_zero():
    sigmas = sampling_sigmas(50, 15.0)
    assert sigmas.shape == (51,) and sigmas[0] == 1.0 and sigmas[-1] == 0.0
    assert bool((sigmas[1:] < sigmas[:-1]).all())


@pytest.mark.slow
def test_a_cache_that_cannot_fit_fails_before_it_is_stored(model, batch, monkeypatch):
    """The memory check counts every layer and every guidance
    branch still to fill, and says so in one line."""
    from cinescene.models import context_cache

    asked = []
    monkeypatch.setattr(context_cache, "available_bytes", lambda device: asked.append(device) or 1000)
    with pytest.raises(
        CineSceneError,
        match=r"needs .* GB \(2 cache\(s\) x 2 x 2 layers x 2 x \d+ context tokens "
        r"x 64 x float32\) but cpu has 0.0 GB free; sample without it",
    ):
        _sample(model, batch, True)
    assert len(asked) == 1  # failed at the first layer of the first branch
    # Without guidance there is one cache; the need halves, the message says 1 cache.
    tokens = batch["scene_images"].shape[1] * 8 * 8
    one_cache = 2 * len(model.blocks) * 2 * tokens * model.cfg.dim * 4
    monkeypatch.setattr(context_cache, "available_bytes", lambda device: one_cache)
    _sample(model, batch, True, guidance_scale=1.0)  # exactly fits
    monkeypatch.setattr(context_cache, "available_bytes", lambda device: one_cache - 1)
    with pytest.raises(CineSceneError, match=r"\(1 cache\(s\)"):
        _sample(model, batch, True, guidance_scale=1.0)
    with pytest.raises(ValueError, match="planned_copies"):
        ContextKVCache(planned_copies=0)


@pytest.mark.slow
def test_offloaded_cache_gives_the_same_video_and_lives_on_the_host(model, batch, monkeypatch):
    from cinescene.models import context_cache

    plain = _sample(model, batch, False)
    offloaded = _sample(model, batch, True, context_cache_offload=True)
    assert (offloaded - plain).abs().max() < 1e-5 * max(1.0, float(plain.abs().max()))
    cache = ContextKVCache(offload=True)
    timestep = torch.full((2,), 500.0)
    cache.forward(
        model,
        batch["x"],
        timestep,
        batch["text"],
        cameras=batch["cameras"],
        scene_images=batch["scene_images"],
    )
    assert all(t.device.type == "cpu" for t in cache.keys + cache.values)
    fetched = []
    original = context_cache._LayerStream.fetch
    monkeypatch.setattr(
        context_cache._LayerStream,
        "fetch",
        lambda self, layer: fetched.append(layer) or original(self, layer),
    )
    cache.forward(model, batch["x"], timestep, batch["text"], cameras=batch["cameras"])
    assert fetched == list(range(len(model.blocks)))  # streamed in layer order, once per step


@pytest.mark.slow
def test_offload_checks_host_memory_for_the_cache_and_the_device_for_two_layers(model, batch, monkeypatch):
    from cinescene import host_memory
    from cinescene.models import context_cache

    tokens = batch["scene_images"].shape[1] * 8 * 8
    layer = 2 * 2 * tokens * model.cfg.dim * 4  # keys + values of one layer, float32
    monkeypatch.setattr(context_cache, "available_bytes", lambda device: 2 * layer)
    monkeypatch.setattr(host_memory, "available_bytes", lambda: 2 * len(model.blocks) * layer)
    _sample(model, batch, True, context_cache_offload=True)  # fits: two caches on the host, two layers here
    with pytest.raises(
        CineSceneError,
        match=r"cpu has .* GB free; .* keep it in host memory "
        r"\(context_cache_offload=True\)",
    ):
        _sample(model, batch, True)  # the same device without offload: too small
    monkeypatch.setattr(host_memory, "available_bytes", lambda: 2 * len(model.blocks) * layer - 1)
    with pytest.raises(CineSceneError, match=r"offloaded context K/V cache needs .* of host memory"):
        _sample(model, batch, True, context_cache_offload=True)
    monkeypatch.setattr(host_memory, "available_bytes", lambda: 10**15)
    monkeypatch.setattr(context_cache, "available_bytes", lambda device: 2 * layer - 1)
    with pytest.raises(CineSceneError, match=r"two layers in flight"):
        _sample(model, batch, True, context_cache_offload=True)


def test_host_memory_is_read():
    from cinescene import host_memory

    assert host_memory.available_bytes() > 0


def test_no_memory_check_off_cuda():
    from cinescene.models.context_cache import available_bytes

    assert available_bytes(torch.device("cpu")) is None


@pytest.mark.gpu
def test_same_video_with_the_fused_kernel_on_a_gpu():
    """The cached path through the Triton kernel: readonly prefill, then full-mask video-only steps."""
    model = _model(attention__backend="fused").cuda()
    batch = {k: v.cuda() for k, v in tiny_batch(batch=2, seed=3).items()}
    plain = _sample(model, batch, False)
    cached = _sample(model, batch, True)
    assert (cached - plain).abs().max() < 1e-4 * max(1.0, float(plain.abs().max()))
    offloaded = _sample(
        model, batch, True, context_cache_offload=True
    )  # pinned host memory, side-stream copies
    assert (offloaded - plain).abs().max() < 1e-4 * max(1.0, float(plain.abs().max()))
