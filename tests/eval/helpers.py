"""Test helpers: a tiny randomly initialised CLIP saved like a real one (model, tokenizer, image processor);
an evaluation directory written without a model."""

from __future__ import annotations

import string
from pathlib import Path


def save_tiny_clip(path: Path, seed: int = 0) -> Path:
    """A CLIPModel of a few thousand parameters from a small CLIPConfig, with a character-level BPE
    tokenizer and the PIL image processor, in save_pretrained layout (what eval.clip.weights names)."""
    import torch
    import transformers
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

    vocab = {c: i for i, c in enumerate(string.ascii_lowercase + string.digits)}
    vocab.update({f"{c}</w>": len(vocab) + i for i, c in enumerate(string.ascii_lowercase + string.digits)})
    vocab["<|startoftext|>"], vocab["<|endoftext|>"] = len(vocab), len(vocab) + 1
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[])
    config = CLIPConfig(
        text_config=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            vocab_size=len(vocab),
            max_position_embeddings=77,
            bos_token_id=vocab["<|startoftext|>"],
            eos_token_id=vocab["<|endoftext|>"],
            pad_token_id=vocab["<|endoftext|>"],
        ),
        vision_config=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=32,
            patch_size=8,
        ),
        projection_dim=16,
    )
    torch.manual_seed(seed)
    CLIPModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    processor = getattr(transformers, "CLIPImageProcessorPil", None) or transformers.CLIPImageProcessor
    processor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(path)
    return path


def write_evaluation(out: Path, clips, label: str = "test", generated=None, sfm=None) -> dict:
    """An evaluation directory as `cinescene eval` writes it (records, videos, scene images, metrics.json,
    table.md, report.html) for synthetic ``clips`` (pixel proxy, every 4th frame), without a model: the
    generated video is ``generated(clip)`` (default: the ground truth with noise) and each sample's SfM
    outcome ``sfm(clip, index)`` (default: the requested cameras recovered, or a failure for odd indices),
    so no COLMAP runs. Returns metrics.json's data."""
    import numpy as np

    from cinescene.config.eval import EvalConfig
    from cinescene.eval.evaluate import SampleResult, metric_inputs, prepare_dir, write_sample
    from cinescene.eval.metrics import MetricContext, camera, compute_metrics
    from cinescene.eval.report import write_report
    from cinescene.sampling.inputs import ShardSample
    from cinescene.sampling.spec import DataSpec

    names = ["psnr", "bg_psnr"]
    context = MetricContext(EvalConfig(metrics=names))
    first = clips[0]
    spec = DataSpec(
        encoder={"name": "none"},
        frames=len(first.video),
        size=first.video.shape[1:3],
        scene_images=len(first.scene_images),
        scene_size=first.scene_images.shape[1:3],
        pixel_pool=4,
        source="test",
    )
    rng = np.random.default_rng(0)

    def noisy(clip):
        frames = clip.video[::4].astype(np.int16) + rng.integers(-20, 21, clip.video[::4].shape)
        return np.clip(frames, 0, 255).astype(np.uint8)

    def recovered(clip, index):
        poses = np.array(clip.c2w[::4], dtype=np.float64)
        if index % 2:
            return {
                "frames": len(poses),
                "registered": 0,
                "failure": "no reconstruction",
                "trials": [],
                "recovered": None,
            }
        poses[:, :3, 3] *= 2.5  # SfM's scale is arbitrary: the metrics normalise it away
        return {
            "frames": len(poses),
            "registered": len(poses),
            "failure": None,
            "trials": [],
            "recovered": camera.poses_to_json(poses),
        }

    prepare_dir(out)
    for index, clip in enumerate(clips):
        sample = ShardSample(
            key=clip.clip_id,
            index=index,
            prompt=clip.prompt,
            text=None,
            scene=clip.scene_images,
            scene_latents=None,
            cameras=clip.c2w[::4],
            scene_cameras=clip.scene_c2w,
            intrinsics=clip.K,
            video=clip.video,
            video_bg=clip.video_bg,
        )
        frames = (generated or noisy)(clip)
        inputs = metric_inputs(sample, frames, spec)
        metrics = compute_metrics(inputs, names, context)
        metrics.details["sfm"] = (sfm or recovered)(clip, index)
        write_sample(out, sample, SampleResult(clip.clip_id, frames, inputs, metrics), context, 4.0, {})
    header = {
        "checkpoint": "none",
        "step": 0,
        "weights": "trained",
        "data": "synthetic",
        "settings": {"steps": 1, "cfg": 1.0, "shift": 1.0, "seed": 0},
    }
    keys = [clip.clip_id for clip in clips]
    return write_report(out, keys, names, header, {}, label)
