"""Our VGGT against the released facebookresearch/vggt code: same random weights, same images, fp32.

    python -m cinescene.models.vggt.compare_released --reference DIR [--full [--vit-depth N --head-depth N]]
        [--images S --batch B --height H --width W --seed K]
    python -m cinescene.models.vggt.compare_released --reference DIR --tensor-list FILE.json

``DIR`` is a checkout of https://github.com/facebookresearch/vggt (the directory holding ``vggt/``);
its code is imported from there and never copied into this project. The reference model (aggregator
and camera head) gets random values in every tensor (its own initialisation has 1e-6 tokens and 0.01
layer scales, which would hide differences), its state dict is saved to a safetensors file and loaded
into ours through our own loader (:func:`load_vggt_weights`, strict: the names must match). Both run
on the same images; printed: the max abs difference of each of the aggregator's ``depth`` outputs, of
the camera head's encodings, of the cameras decoded from an encoding, and of the last layer when each
sample carries one padding image (``image_counts``), plus a control (one weight of ours changed) that
shows the comparison can fail. The default size is small (width 64, all 24 layers); ``--full`` is
VGGT-1B's (4.5 GB per model; ``--vit-depth``/``--head-depth`` shorten the DINOv2 and camera-head
trunks to save memory). The reference runs first and is freed before ours is built.

``--tensor-list`` writes the names and shapes of the released model's state dict (``VGGT()`` built on
the meta device: the keys of the facebook/VGGT-1B checkpoint), the fixture
``tests/models/vggt_1b_tensors.json``. Needs ``accelerate`` (meta-device construction) and the
reference's own imports (``huggingface_hub``).
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import tempfile
from pathlib import Path

import torch

from cinescene.config.model import VGGTConfig
from cinescene.errors import CineSceneError

from .camera_head import pose_encoding_to_cameras
from .model import VGGT, load_vggt_weights


def import_reference(root: Path):
    if not (root / "vggt" / "models" / "aggregator.py").is_file():
        raise CineSceneError(
            f"--reference {root}: no vggt/models/aggregator.py (a facebookresearch/vggt checkout)"
        )
    sys.path.insert(0, str(root))
    import vggt.models.aggregator as aggregator
    from vggt.heads.camera_head import CameraHead
    from vggt.layers.attention import MemEffAttention
    from vggt.layers.block import Block
    from vggt.layers.vision_transformer import DinoVisionTransformer
    from vggt.utils.pose_enc import pose_encoding_to_extri_intri

    return aggregator, CameraHead, MemEffAttention, Block, DinoVisionTransformer, pose_encoding_to_extri_intri


def write_tensor_list(root: Path, out: Path, commit: str) -> None:
    from accelerate import init_empty_weights

    import_reference(root)
    from vggt.models.vggt import VGGT as ReleasedVGGT

    with init_empty_weights(include_buffers=False):  # parameters on meta; the constructors call .item()
        state = ReleasedVGGT().state_dict()
    dtypes = {str(t.dtype).removeprefix("torch.") for t in state.values()}
    lines = [
        "{",
        '"source": "the state_dict of vggt.models.vggt.VGGT() in facebookresearch/vggt, the architecture of '
        'the released facebook/VGGT-1B checkpoint (model.pt), built on the meta device",',
        '"repository": "facebookresearch/vggt",',
        f'"commit": {json.dumps(commit)},',
        f'"dtype": {json.dumps(",".join(sorted(dtypes)))},',
        '"tensors": {',
        ",\n".join(f"{json.dumps(k)}: {json.dumps(list(v.shape))}" for k, v in state.items()),
        "}",
        "}",
    ]
    out.write_text("\n".join(lines) + "\n")
    print(f"wrote {out}: {len(state)} tensors, {sum(t.numel() for t in state.values()):,} parameters")


@torch.no_grad()
def randomize(module: torch.nn.Module, generator: torch.Generator) -> None:
    """Weights ~ N(0, 1/fan_in); norm scales ~ 1 + N(0, 0.1); tokens, biases, layer scales ~ N(0, 0.5)."""
    for name, tensor in module.state_dict().items():
        if tensor.ndim >= 2 and "token" not in name and "pos_embed" not in name:
            tensor.copy_(torch.randn(tensor.shape, generator=generator) / tensor[0].numel() ** 0.5)
        elif name.endswith(("norm.weight", "norm1.weight", "norm2.weight", "q_norm.weight", "k_norm.weight")):
            tensor.copy_(1 + 0.1 * torch.randn(tensor.shape, generator=generator))
        else:
            tensor.copy_(0.5 * torch.randn(tensor.shape, generator=generator))


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


@torch.no_grad()
def compare(args) -> None:
    aggregator, CameraHead, MemEffAttention, Block, DinoVisionTransformer, to_cameras = import_reference(
        args.reference
    )
    if args.full:
        cfg = VGGTConfig()
        cfg.patch_embed_depth = args.vit_depth or cfg.patch_embed_depth
        cfg.camera_head_depth = args.head_depth or cfg.camera_head_depth
    else:
        cfg = VGGTConfig(img_size=70, embed_dim=64, num_heads=4, patch_embed_depth=2, camera_head_depth=2)
    height, width = args.height or cfg.img_size, args.width or cfg.img_size
    if cfg.embed_dim != 1024 or cfg.patch_embed_depth != 24:
        # The reference hard-codes ViT-L in vit_large: build its DinoVisionTransformer alike at our size.
        aggregator.vit_large = lambda patch_size=16, num_register_tokens=0, **kwargs: DinoVisionTransformer(
            patch_size=patch_size,
            embed_dim=cfg.embed_dim,
            depth=cfg.patch_embed_depth,
            num_heads=cfg.num_heads,
            mlp_ratio=4,
            block_fn=functools.partial(Block, attn_class=MemEffAttention),
            num_register_tokens=num_register_tokens,
            **kwargs,
        )
    generator = torch.Generator().manual_seed(args.seed)
    ref = torch.nn.Module()
    ref.aggregator = aggregator.Aggregator(
        img_size=cfg.img_size,
        patch_size=cfg.patch_size,
        embed_dim=cfg.embed_dim,
        depth=cfg.depth,
        num_heads=cfg.num_heads,
        num_register_tokens=cfg.num_register_tokens,
        rope_freq=int(cfg.rope_freq),
    )
    ref.camera_head = CameraHead(
        dim_in=2 * cfg.embed_dim, trunk_depth=cfg.camera_head_depth, num_heads=cfg.num_heads
    )
    ref.eval()
    randomize(ref, generator)
    images = torch.rand(args.batch, args.images, 3, height, width, generator=generator)
    padded = torch.cat([images, torch.rand(args.batch, 1, 3, height, width, generator=generator)], dim=1)
    with tempfile.TemporaryDirectory() as tmp:
        from safetensors.torch import save_file

        path = Path(tmp) / "model.safetensors"
        save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(path))
        ref_out, patch_start = ref.aggregator(images)
        ref_pose = ref.camera_head(ref_out)
        del ref
        ours = VGGT(cfg, camera_head=True, attention_backend="sdpa").eval()
        report = load_vggt_weights(ours, str(path), strict=True)
    assert patch_start == ours.aggregator.patch_start_idx and not report.fresh
    our_out = ours.aggregator(images)
    diffs = [max_diff(a, b) for a, b in zip(ref_out, our_out, strict=True)]
    pose = [max_diff(a, b) for a, b in zip(ref_pose, ours.camera_head(our_out[-1]), strict=True)]
    packed = ours.aggregator(padded, [cfg.depth - 1], image_counts=[args.images] * args.batch)[0]
    encoding = ref_pose[-1].clone()
    encoding[..., 7:] = encoding[..., 7:].abs() + 0.3  # fields of view in (0.3, pi): finite intrinsics
    ref_cameras = to_cameras(encoding, (height, width))
    our_cameras = pose_encoding_to_cameras(encoding, (height, width))
    ours.aggregator.global_blocks[cfg.depth // 2].attn.proj.weight[0, 0] += 1e-3
    control = max_diff(ours.aggregator(images, [cfg.depth - 1])[0], ref_out[-1])

    print(
        f"sizes: img {cfg.img_size}, patch {cfg.patch_size}, width {cfg.embed_dim}, {cfg.depth} block pairs, "
        f"{cfg.num_heads} heads, {cfg.num_register_tokens} registers, DINOv2 depth {cfg.patch_embed_depth}, "
        f"camera-head depth {cfg.camera_head_depth}; images {tuple(images.shape)}; torch {torch.__version__}"
    )
    print(f"weights: {report.summary()} into ours from the reference's state dict")
    print(
        f"aggregator: {len(diffs)} outputs of {tuple(ref_out[0].shape)}, max |reference| "
        f"{max(t.abs().max().item() for t in ref_out):.3g}"
    )
    print("  max abs difference per layer: " + " ".join(f"{d:.1e}" for d in diffs))
    print(f"  max over all layers: {max(diffs):.3e}")
    print(f"camera head: {len(pose)} iterations, max abs difference {max(pose):.3e}")
    print(
        f"encoding -> cameras: extrinsics {max_diff(ref_cameras[0], our_cameras[0]):.3e}, "
        f"intrinsics {max_diff(ref_cameras[1], our_cameras[1]):.3e}"
    )
    print(
        f"last layer, one padding image per sample (image_counts), real images: "
        f"{max_diff(packed[:, : args.images], ref_out[-1]):.3e}"
    )
    print(f"control: one weight of ours changed by 1e-3 -> last layer differs by {control:.3e}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m cinescene.models.vggt.compare_released",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--reference", type=Path, required=True, help="a facebookresearch/vggt checkout")
    parser.add_argument(
        "--tensor-list", type=Path, help="write the released state dict's names and shapes here"
    )
    parser.add_argument(
        "--commit", default="unknown", help="the reference's commit, recorded in --tensor-list"
    )
    parser.add_argument("--full", action="store_true", help="VGGT-1B's sizes (4.5 GB of memory per model)")
    parser.add_argument("--vit-depth", type=int, help="with --full: DINOv2 blocks (24)")
    parser.add_argument("--head-depth", type=int, help="with --full: camera-head trunk blocks (4)")
    parser.add_argument("--images", type=int, default=3)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--height", type=int)
    parser.add_argument("--width", type=int)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        if args.tensor_list:
            write_tensor_list(args.reference, args.tensor_list, args.commit)
        else:
            compare(args)
    except CineSceneError as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
