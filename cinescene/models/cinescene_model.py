"""CineSceneModel: the Wan2.1 DiT over [video ++ scene context] with camera conditioning.

Sequence. Video latents are patch-embedded into ``num_video`` tokens
(F, Hp, Wp grid). Scene context tokens follow them: first the projected VGGT
features of the S scene images (S*Hp*Wp tokens, ``scene.vggt_tokens``), then,
with ``scene.pixel_context``, the scene latents through the DiT's own
``patch_embedding`` (S*h'*w' tokens). Only video tokens reach the output, so
the loss never sees context tokens.

Positions (3D RoPE). Video token (f, h, w); every token of scene image s,
VGGT or pixel, gets frame index F + s and its own grid's (h, w).

Timesteps. Video tokens use ``timestep``; context tokens use it too with
``scene.timestep = "shared"`` or t = 0 with ``"clean"`` (their own adaLN
parameters from the time embedding of 0; the head only sees video tokens).

Camera. ``cameras`` (B, F, 4, 4) -> 12-d [R|t] relative to the first latent
frame (see :mod:`.camera`); each block adds ``cam_encoder`` of a frame's
camera to that frame's tokens after adaLN, before self-attention, and
applies ``projector`` to the self-attention output (ReCamMaster). Context
tokens get no camera term. Zero / identity initialisation makes the fresh
modules a no-op.

Scene anchoring (``scene.pose_embedding``, off by default). ``scene_cameras``
(B, S, 4, 4) are expressed relative to the target's first camera
(:func:`.camera.scene_pose_features`) and embedded once per image into that
image's context tokens, before the blocks (see :mod:`.scene_encoder`): the
context stays independent of the video and the denoising step, so sequence
parallelism, packing and the inference context cache treat it like any
other context token.

Scene counts. ``scene_counts`` (B,) gives each sample's number of real scene
images; the images (and latents, features) past it along S are padding. The
sequence keeps its padded length for the token-wise layers, while attention
packs the real tokens (:mod:`.packing`), so no real token sees padding and
no attention is computed over it; VGGT runs on each sample's real images
only (its global attention would otherwise mix padding into the features).

Attention. ``model.attention.mask`` ("full" | "context_readonly") and
``backend`` go to :func:`cinescene.models.attention.attention`; under
sequence parallelism (:meth:`set_sequence_parallel`) self-attention runs
through DeepSpeed's Ulysses all-to-all (:mod:`.sequence_parallel`).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence

import torch
import torch.nn as nn

from cinescene.config.model import ModelConfig
from cinescene.log import get_logger

from .attention import SelfAttentionCall, attention
from .camera import relative_camera_features, scene_pose_features
from .layers import SegmentedModulation
from .packing import packing_from_valid, real_images
from .rope import rope_cos_sin, sequence_positions
from .scene_encoder import SceneEncoder
from .sequence_parallel import SequenceShard, check_group, ensure_deepspeed_comm, ulysses_self_attention
from .vggt import load_vggt_weights
from .wan import BlockContext, WanDiT
from .weights import load_pretrained
from .zero import full_numel

_log = get_logger("models")
ContextGrid = tuple[int, int, int]  # (frame index, rows, cols) of one context image's tokens


def _matches(name: str, patterns: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


class CineSceneModel(WanDiT):
    def __init__(self, cfg: ModelConfig):
        super().__init__(
            dim=cfg.dim,
            ffn_dim=cfg.ffn_dim,
            num_heads=cfg.num_heads,
            num_layers=cfg.num_layers,
            in_dim=cfg.in_dim,
            out_dim=cfg.out_dim,
            patch_size=cfg.patch_size,
            freq_dim=cfg.freq_dim,
            text_len=cfg.text_len,
            text_dim=cfg.text_dim,
            qk_norm=cfg.qk_norm,
            cross_attn_norm=cfg.cross_attn_norm,
            eps=cfg.eps,
            camera=cfg.camera.enabled,
            camera_projector=cfg.camera.enabled and cfg.camera.projector,
        )
        self.cfg = cfg
        self.activation_checkpointing = cfg.activation_checkpointing
        if cfg.scene.enabled:
            self.scene_encoder = SceneEncoder(cfg.scene, cfg.dim, cfg.attention.backend)
        self.sequence_group = None

    # ------------------------------------------------------------------ setup
    def set_sequence_parallel(self, group) -> None:
        """Shard the token sequence over ``group`` (a torch.distributed process group), or None for off."""
        if group is not None:
            check_group(group, self.num_heads)
            ensure_deepspeed_comm()
        self.sequence_group = group

    def apply_trainable(self, cfg: ModelConfig | None = None) -> dict[str, int]:
        """Set requires_grad from the ``trainable`` then ``frozen`` glob patterns over parameter names.

        Returns parameter counts {"trainable": n, "frozen": m}. A trainable
        pattern that matches nothing is a warning (a typo would freeze
        silently); an idle frozen pattern is only a debug line (the default
        VGGT pattern has nothing to match when the scene is off).
        """
        cfg = cfg or self.cfg
        names = [name for name, _ in self.named_parameters()]
        for key, patterns, say in (
            ("trainable", cfg.trainable, _log.warning),
            ("frozen", cfg.frozen, _log.debug),
        ):
            for pattern in patterns:
                if not any(_matches(n, [pattern]) for n in names):
                    say("model.%s pattern %r matches no parameter", key, pattern)
        counts = {"trainable": 0, "frozen": 0}
        for name, param in self.named_parameters():
            trains = _matches(name, cfg.trainable) and not _matches(name, cfg.frozen)
            param.requires_grad_(trains)
            counts["trainable" if trains else "frozen"] += full_numel(param)
        return counts

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    # ---------------------------------------------------------------- forward
    def forward(
        self,
        x: torch.Tensor,
        timestep: torch.Tensor,
        text: torch.Tensor,
        *,
        cameras: torch.Tensor | None = None,
        scene_images: torch.Tensor | None = None,
        scene_latents: torch.Tensor | None = None,
        scene_tokens: torch.Tensor | None = None,
        drop_scene: torch.Tensor | None = None,
        scene_counts: torch.Tensor | None = None,
        scene_cameras: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Predict the flow target for the video latents ``x`` (B, C, T, H, W); returns that shape in fp32.

        ``timestep`` (B,) in [0, 1000]; ``text`` (B, L, text_dim) with L <= text_len
        (zero-padded to text_len here, as Wan does);
        ``cameras`` (B, T/pt, 4, 4) camera-to-world per latent frame;
        ``scene_images`` (B, S, 3, Hs, Ws) in [0, 1] or precomputed
        ``scene_tokens`` = ``scene_encoder.extract_features(scene_images)``;
        ``scene_latents`` (B, S, C, h, w) for pixel context; ``drop_scene``
        (B,) bool replaces a sample's context tokens by the learned null token;
        ``scene_counts`` (B,) int: real scene images per sample (0..S), the rest
        padding (see the module doc); ``scene_cameras`` (B, S, 4, 4)
        camera-to-world of the scene images, read (with ``cameras``) only
        with ``scene.pose_embedding``. With no scene inputs there are no
        context tokens (the base DiT).
        """
        video, grid = self.patchify(x)
        counts = scene_count_list(
            scene_counts, x.shape[0], _num_scene_images(scene_images, scene_latents, scene_tokens)
        )
        context, context_grids = self._scene_context(
            grid, scene_images, scene_latents, scene_tokens, drop_scene, counts, cameras, scene_cameras
        )
        tokens = video if context is None else torch.cat([video, context.to(video.dtype)], dim=1)
        num_video = video.shape[1]
        packing = (
            None
            if context is None or counts is None
            else packing_from_valid(
                token_validity(num_video, grid[0], context_grids, counts), device=x.device
            )
        )

        t = timestep.reshape(-1).float()
        if context is not None and self.cfg.scene.timestep == "clean":
            t = torch.stack([t, torch.zeros_like(t)], dim=1)  # groups: video, context
        else:
            t = t[:, None]
        e, e0 = self.embed_time(t)

        camera = None
        if self.cfg.camera.enabled and cameras is not None:
            if cameras.shape[:2] != (x.shape[0], grid[0]):
                raise ValueError(
                    f"cameras {tuple(cameras.shape)} must be (B, {grid[0]}, 4, 4): one per latent frame"
                )
            camera = relative_camera_features(cameras, self.cfg.camera.reference).to(x.device)

        positions = sequence_positions(grid, context_grids, device=x.device)
        cos, sin = rope_cos_sin(positions, self.head_dim)
        frame_of_token = torch.arange(num_video, device=x.device) // (grid[1] * grid[2])
        text_emb = self.embed_text(text)
        mask, backend = self.cfg.attention.mask, self.cfg.attention.backend

        def cross_attend(q, k, v):
            return attention(q, k, v, backend=backend, kind="cross")  # not inferred: text may match L

        if self.sequence_group is None:
            self_attend = SelfAttentionCall(num_video, mask, backend, packing)
            ctx = BlockContext(
                e0=e0,
                text=text_emb,
                rope=(cos, sin),
                self_attention=self_attend,
                cross_attention=cross_attend,
                num_local_video=num_video,
                camera=camera,
                camera_frame=frame_of_token,
            )
            hidden = self.run_blocks(tokens, ctx)
            out = self.head(hidden[:, :num_video], e[:, :1], SegmentedModulation(None))
        else:
            shard = SequenceShard(tokens.shape[1], self.sequence_group)
            local_video = shard.local_count(num_video)
            ctx = BlockContext(
                e0=e0,
                text=text_emb,
                rope=(shard.split(cos, 0), shard.split(sin, 0)),
                self_attention=ulysses_self_attention(shard, num_video, mask, backend, packing),
                cross_attention=cross_attend,
                num_local_video=local_video,
                camera=camera,
                camera_frame=frame_of_token[shard.start : shard.start + local_video],
            )
            hidden = self.run_blocks(shard.split(tokens), ctx)
            out = shard.gather(self.head(hidden, e, ctx.modulation))[:, :num_video]
        return self.unpatchify(out, grid).float()

    def _scene_context(
        self,
        grid: Sequence[int],
        images,
        latents,
        features,
        drop,
        counts: list[int] | None,
        cameras: torch.Tensor | None,
        scene_cameras: torch.Tensor | None,
    ) -> tuple[torch.Tensor | None, list[ContextGrid]]:
        """Context tokens (B, N_ctx, dim) and their per-image grids, or (None, []) without scene inputs."""
        if not hasattr(self, "scene_encoder") or all(v is None for v in (images, latents, features)):
            return None, []
        scene = self.cfg.scene
        poses = (
            self._scene_poses(cameras, scene_cameras, _num_scene_images(images, latents, features))
            if (scene.pose_embedding)
            else None
        )
        frames, rows, cols = grid
        grids: list[ContextGrid] = []
        num_images = None
        if scene.vggt_tokens:
            if features is None:
                if images is None:
                    raise ValueError("scene.vggt_tokens is on: pass scene_images or scene_tokens")
                features = self.scene_encoder.extract_features(images, counts)
            num_images = features.shape[1]
            grids += [(frames + s, rows, cols) for s in range(num_images)]
        pixel_tokens = None
        if scene.pixel_context:
            if latents is None:
                raise ValueError("scene.pixel_context is on: pass scene_latents")
            b, s = latents.shape[:2]
            if num_images is not None and s != num_images:
                raise ValueError(f"{s} scene latents for {num_images} scene images")
            embedded, (_, h, w) = self.patchify(
                latents.reshape(b * s, latents.shape[2], 1, *latents.shape[3:])
            )
            pixel_tokens = embedded.reshape(b, s * h * w, -1)
            grids += [(frames + i, h, w) for i in range(s)]
        return self.scene_encoder(
            features if scene.vggt_tokens else None, (rows, cols), pixel_tokens, drop, poses, counts
        ), grids

    def _scene_poses(
        self, cameras: torch.Tensor | None, scene_cameras: torch.Tensor | None, num_images: int
    ) -> torch.Tensor:
        """(B, S, 12) scene-image poses relative to the target's first camera (``scene.pose_embedding``)."""
        if cameras is None or scene_cameras is None:
            raise ValueError(
                "model.scene.pose_embedding is on: pass cameras (the target trajectory) and scene_cameras"
            )
        if scene_cameras.dim() != 4 or scene_cameras.shape[1] != num_images:
            raise ValueError(
                f"scene_cameras {tuple(scene_cameras.shape)} must be (B, {num_images}, 4, 4): one "
                "camera per scene image"
            )
        return scene_pose_features(cameras, scene_cameras).to(self.scene_encoder.null_token.device)


def _num_scene_images(images, latents, features) -> int | None:
    for t in (features, images, latents):
        if t is not None:
            return int(t.shape[1])
    return None


def scene_count_list(
    scene_counts: torch.Tensor | None, batch: int, num_images: int | None
) -> list[int] | None:
    """``scene_counts`` checked against the batch, as a host list; None when every sample has all S images."""
    if scene_counts is None or num_images is None:
        return None
    counts = torch.as_tensor(scene_counts).detach().cpu().reshape(-1)
    if counts.shape[0] != batch or counts.is_floating_point():
        raise ValueError(
            f"scene_counts must be {batch} integers (one per sample), got {tuple(scene_counts.shape)} "
            f"{scene_counts.dtype}"
        )
    values = counts.tolist()
    if any(c < 0 or c > num_images for c in values):
        raise ValueError(
            f"scene_counts {values} must lie in [0, {num_images}] (the scene inputs hold "
            f"{num_images} images per sample)"
        )
    return None if all(c == num_images for c in values) else values


def token_validity(
    num_video: int, frames: int, context_grids: Sequence[ContextGrid], counts: Sequence[int]
) -> torch.Tensor:
    """(B, L) bool over [video ++ context]: video tokens
    and the tokens of each sample's first counts[b] images.

    A context grid's image index is its frame index minus the video's frames
    (see the module doc), for VGGT and pixel tokens alike.
    """
    images = real_images(counts, max((f - frames + 1 for f, _, _ in context_grids), default=0))
    parts = [torch.ones(len(counts), num_video, dtype=torch.bool)]
    for frame_index, rows, cols in context_grids:
        parts.append(images[:, frame_index - frames, None].expand(-1, rows * cols))
    return torch.cat(parts, dim=1)


def build_model(
    cfg: ModelConfig, *, device=None, dtype: torch.dtype | None = None, load_weights: bool = True
) -> CineSceneModel:
    """Build the model from its config.

    ``device="meta"`` builds without allocating (parameter counts, FLOPs).
    Big sizes: call inside ``deepspeed.zero.Init(config_dict_or_path=...)``;
    every module initialises its own parameters in its constructor, so the
    partitioned model holds exactly what an unpartitioned one would, and no
    rank ever materialises the whole model. With ``load_weights`` (and a
    real device), ``cfg.pretrained`` and ``cfg.scene.vggt.weights`` are loaded
    (ZeRO-3 aware). Trainable flags follow ``cfg.trainable`` / ``cfg.frozen``.
    """
    if device is not None:
        with torch.device(device):
            model = CineSceneModel(cfg)
    else:
        model = CineSceneModel(cfg)
    if dtype is not None:
        model.to(dtype)
    on_meta = next(model.parameters()).is_meta
    if load_weights and not on_meta:
        if cfg.pretrained:
            load_pretrained(model, cfg.pretrained, fmt=cfg.pretrained_format, strict=cfg.strict_load)
        if cfg.builds_vggt() and cfg.scene.vggt.weights:
            load_vggt_weights(model.scene_encoder.vggt, cfg.scene.vggt.weights, strict=True)
    model.apply_trainable(cfg)
    return model


__all__ = ["CineSceneModel", "build_model", "scene_count_list", "token_validity"]
