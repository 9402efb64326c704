"""VGGT = aggregator (+ camera head): the scene encoder's backbone and the evaluation's pose estimator.

``VGGT(cfg, camera_head=...)`` holds ``aggregator.*`` and optionally
``camera_head.*`` under exactly the facebook/VGGT-1B names, so the published
state dict loads with :func:`load_vggt_weights` (its depth/point/track heads
are not built here and are skipped).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from cinescene.config.model import VGGTConfig
from cinescene.log import get_logger

from ..weights import LoadReport, assign_state_dict, open_checkpoint
from .aggregator import Aggregator
from .camera_head import CameraHead, pose_encoding_to_cameras

_log = get_logger("models.vggt")


def _resized_height(height: int, width: int, img_size: int, patch_size: int) -> int:
    """Height after scaling the width to ``img_size``, rounded to a patch multiple (before cropping)."""
    return max(patch_size, round(height * img_size / width / patch_size) * patch_size)


def preprocess_images(images: torch.Tensor, img_size: int, patch_size: int) -> torch.Tensor:
    """(B, S, 3, H, W) in [0, 1] -> VGGT's input size, as its "crop" preprocessing does.

    The width becomes ``img_size``; the height keeps the aspect ratio rounded
    to a multiple of the patch size, and is centre-cropped to ``img_size`` when
    taller. Resampling is bicubic with antialiasing, clamped to [0, 1].
    """
    b, s, c, height, width = images.shape
    new_h = _resized_height(height, width, img_size, patch_size)
    flat = images.reshape(b * s, c, height, width).float()
    if (new_h, img_size) != (height, width):
        flat = F.interpolate(
            flat, size=(new_h, img_size), mode="bicubic", antialias=True, align_corners=False
        ).clamp(0.0, 1.0)
    if new_h > img_size:
        top = (new_h - img_size) // 2
        flat = flat[:, :, top : top + img_size]
    return flat.reshape(b, s, c, *flat.shape[-2:])


def vggt_grid(height: int, width: int, img_size: int, patch_size: int) -> tuple[int, int]:
    """Patch grid (rows, cols) VGGT sees for an image of (height, width) pixels."""
    return min(
        _resized_height(height, width, img_size, patch_size), img_size
    ) // patch_size, img_size // patch_size


class VGGT(nn.Module):
    def __init__(self, cfg: VGGTConfig, camera_head: bool = False, attention_backend: str = "auto"):
        super().__init__()
        self.cfg = cfg
        self.aggregator = Aggregator(
            img_size=cfg.img_size,
            patch_size=cfg.patch_size,
            embed_dim=cfg.embed_dim,
            depth=cfg.depth,
            num_heads=cfg.num_heads,
            mlp_ratio=cfg.mlp_ratio,
            num_register_tokens=cfg.num_register_tokens,
            patch_embed_depth=cfg.patch_embed_depth,
            rope_freq=cfg.rope_freq,
            attention_backend=attention_backend,
        )
        if camera_head:
            self.camera_head = CameraHead(
                dim_in=2 * cfg.embed_dim,
                trunk_depth=cfg.camera_head_depth,
                num_heads=cfg.num_heads,
                mlp_ratio=cfg.mlp_ratio,
                attention_backend=attention_backend,
            )

    def features(
        self, images: torch.Tensor, layers: Iterable[int], image_counts: Sequence[int] | None = None
    ) -> dict[int, torch.Tensor]:
        """Preprocess raw [0, 1] images; {layer: (B, S, P, 2C)} for the requested layers (keys mod depth).

        ``image_counts``: real images per sample, the rest padding (see :meth:`Aggregator.forward`).
        """
        layers = [i % self.cfg.depth for i in layers]
        inputs = preprocess_images(images, self.cfg.img_size, self.cfg.patch_size)
        return dict(zip(layers, self.aggregator(inputs, layers, image_counts)))

    def estimate_cameras(
        self, images: torch.Tensor, num_iterations: int = 4
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Poses of (B, S, 3, H, W) images: extrinsics (B, S, 3, 4) camera-from-world in the first
        image's frame, intrinsics (B, S, 3, 3) in pixels of VGGT's preprocessed size."""
        if not hasattr(self, "camera_head"):
            raise RuntimeError("this VGGT was built without its camera head")
        inputs = preprocess_images(images, self.cfg.img_size, self.cfg.patch_size)
        last = self.aggregator(inputs, [self.cfg.depth - 1])[0]
        encoding = self.camera_head(last, num_iterations)[-1]
        return pose_encoding_to_cameras(encoding.float(), tuple(inputs.shape[-2:]))


def select_vggt_keys(keys: Iterable[str], module: VGGT) -> tuple[list[str], list[str]]:
    """The checkpoint keys ``module`` holds, and the top-level parts (heads) it does not build."""
    wanted = ("aggregator.",) + (("camera_head.",) if hasattr(module, "camera_head") else ())
    keys = list(keys)
    kept = [k for k in keys if k.startswith(wanted)]
    skipped = sorted({k.split(".", 1)[0] for k in keys if not k.startswith(wanted)})
    return kept, skipped


def load_vggt_weights(module: VGGT, path: str, strict: bool = True, check_only: bool = False) -> LoadReport:
    """Load a facebook/VGGT-1B-layout state dict (.pt/.pth/.safetensors, its directory or the repo id
    ``facebook/VGGT-1B`` in the local Hugging Face cache) into ``module``, lazily.

    Missing or mis-shaped aggregator/camera-head keys raise a
    :class:`~cinescene.errors.CineSceneError` report (strict); heads this
    project does not build (depth/point/track) are skipped with a log line
    and never read. Tensors are read as in :func:`cinescene.models.weights.load_pretrained`:
    one module at a time, on rank 0 only under ZeRO-3. ``check_only``: decide
    the fit from names and shapes and load nothing (``module`` may be on meta).
    """
    with open_checkpoint(path, "model.scene.vggt.weights") as (tensors, resolved):
        kept, skipped = select_vggt_keys(tensors.keys(), module)
        if skipped and not check_only:
            _log.info("VGGT weights %s: not loading %s (not built here)", resolved, ", ".join(skipped))
        report = assign_state_dict(
            module, tensors.subset(kept), strict=strict, source=str(resolved), check_only=check_only
        )
    if not check_only:
        _log.info("VGGT weights %s: %s", resolved, report.summary())
    return report
