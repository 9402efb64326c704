"""CLIP-V and CLIP-T with a tiny random CLIPModel saved locally; one clear line without weights."""

from __future__ import annotations

import numpy as np
import pytest

from cinescene.config.eval import ClipConfig, EvalConfig
from cinescene.eval.metrics import MetricContext, MetricInputs, clip, compute_metrics


def _frames(seed, count=4):
    return np.random.default_rng(seed).integers(0, 256, (count, 48, 40, 3), dtype=np.uint8)


@pytest.mark.slow  # several CLIP forward passes (seconds on a CPU)
def test_clip_v_and_clip_t(tiny_clip):
    scorer = clip.load_clip(ClipConfig(weights=str(tiny_clip), batch_size=3))
    a, b = _frames(0), _frames(1)
    same = clip.clip_v(scorer, a, a)
    assert same.shape == (4,) and np.allclose(same, 1.0, atol=1e-5)
    different = clip.clip_v(scorer, a, b)
    assert (different < 0.9999).all() and (np.abs(different) <= 1 + 1e-6).all()
    dog, house = clip.clip_t(scorer, "a dog runs", a), clip.clip_t(scorer, "a house in the snow", a)
    assert dog.shape == (4,) and not np.allclose(dog, house)
    assert np.allclose(dog, clip.clip_t(scorer, "a dog runs", a))  # deterministic
    # batching does not change the embeddings
    single = clip.ClipScorer(tiny_clip, batch_size=1)
    assert np.allclose(clip.clip_v(single, a, b), different, atol=1e-5)


@pytest.mark.parametrize("weights", [None, "does/not/exist"])
def test_missing_weights_are_one_line_and_the_metrics_absent(weights):
    with pytest.raises(clip.ClipUnavailable) as info:
        clip.load_clip(ClipConfig(weights=weights))
    message = str(info.value)
    assert "\n" not in message and "eval.clip.weights" in message and "absent" in message
    cfg = EvalConfig(metrics=["psnr", "clip_v", "clip_t"])
    cfg.clip.weights = weights
    context = MetricContext(cfg)
    assert set(context.absent) == {"clip_v", "clip_t"}
    video = _frames(2)
    result = compute_metrics(
        MetricInputs(generated=video, ground_truth=video, prompt="a dog"), cfg.metrics, context
    )
    assert result.values["clip_v"] is None and result.values["clip_t"] is None
    assert result.values["psnr"] == float("inf")
