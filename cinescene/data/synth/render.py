"""Shading and rendering: video with and without the subject, subject mask, panorama, scene images.

The background is ray cast once per pixel; the subject is intersected
separately and drawn only where it is nearer than the background. So the two
videos are identical outside the subject mask by construction (no shadows or
reflections of the subject), which is what the consistency tests check.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..geometry import equirect_directions, panorama_views, pixel_rays
from .materials import shade_albedo
from .primitives import Hit, Rays, intersect
from .scenes import Scene
from .subjects import Subject

SCENE_IMAGE_HFOV = np.radians(90.0)


@dataclass
class RenderedClip:
    video: np.ndarray  # (F, H, W, 3) uint8, with subject
    video_bg: np.ndarray  # (F, H, W, 3) uint8, same cameras, no subject
    mask: np.ndarray  # (F, H, W) uint8, 1 where the subject is visible
    panorama: np.ndarray  # (Hp, 2Hp, 3) uint8, static scene from the panorama centre
    scene_images: np.ndarray  # (S, Hs, Ws, 3) uint8, cut from the panorama
    scene_c2w: np.ndarray  # (S, 4, 4)
    scene_K: np.ndarray  # (S, 3, 3)


def to_uint8(colour: np.ndarray) -> np.ndarray:
    return np.floor(np.clip(colour, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def sky_colour(scene: Scene, dirs: np.ndarray) -> np.ndarray:
    if scene.sky is None:
        return np.zeros_like(dirs)
    up = np.clip(dirs[:, 2], 0.0, 1.0) ** 0.6
    colour = scene.sky.horizon * (1 - up[:, None]) + scene.sky.zenith * up[:, None]
    glow = np.clip(dirs @ scene.sky.sun, 0.0, 1.0) ** 64
    return colour + glow[:, None] * np.array([1.0, 0.95, 0.8]) * 0.8


def shade(scene: Scene, hit: Hit, origins: np.ndarray, dirs: np.ndarray, pixel_angle: float) -> np.ndarray:
    """Linear-ish colour (N, 3) in [0, 1]: Lambert + ambient, procedural albedo, distance fog, sky."""
    colour = sky_colour(scene, dirs)
    found = hit.material >= 0
    if not found.any():
        return colour
    t = hit.t[found]
    normal = hit.normal[found]
    points = origins[found] + dirs[found] * t[:, None]
    cos_in = np.abs(np.sum(normal * dirs[found], -1))
    footprint = t * pixel_angle / np.maximum(cos_in, 0.25)
    albedo = shade_albedo(scene.materials, hit.material[found], points, normal, footprint)
    light = scene.ambient + (1 - scene.ambient) * np.clip(normal @ scene.light, 0.0, 1.0)
    lit = albedo * (light + 0.08 * normal[:, 2])[:, None]
    if scene.fog_distance is not None and scene.sky is not None:
        fog = (1.0 - np.exp(-t / scene.fog_distance))[:, None]
        lit = lit * (1 - fog) + scene.sky.horizon * fog
    colour[found] = lit
    return colour


def render_video(scene: Scene, subject: Subject, c2w: np.ndarray, K: np.ndarray, height: int, width: int):
    """Frames with and without the subject plus its mask, for cameras ``c2w`` (F, 4, 4)."""
    frames = len(c2w)
    rays = [pixel_rays(c, K, height, width) for c in c2w]
    origins = np.concatenate([o for o, _ in rays])
    dirs = np.concatenate([d for _, d in rays])
    pixel_angle = 2.0 * np.arctan(width / (2.0 * K[0, 0])) / width
    background = intersect(scene.groups, Rays(origins, dirs))
    bg_colour = shade(scene, background, origins, dirs, pixel_angle)
    n = height * width
    subject_hit = Hit.empty(len(origins))
    for f in range(frames):
        rows = slice(f * n, (f + 1) * n)
        hit = intersect(subject.groups(f), Rays(origins[rows], dirs[rows]))
        subject_hit.t[rows], subject_hit.normal[rows], subject_hit.material[rows] = (
            hit.t,
            hit.normal,
            hit.material,
        )
    visible = subject_hit.t < background.t
    colour = bg_colour.copy()
    if visible.any():
        front = Hit(subject_hit.t[visible], subject_hit.normal[visible], subject_hit.material[visible])
        colour[visible] = shade(scene, front, origins[visible], dirs[visible], pixel_angle)
    shape = (frames, height, width)
    return (
        to_uint8(colour).reshape(*shape, 3),
        to_uint8(bg_colour).reshape(*shape, 3),
        visible.reshape(shape).astype(np.uint8),
    )


def render_panorama(scene: Scene, height: int) -> np.ndarray:
    """Equirectangular (H, 2H) view of the static scene from ``scene.pano_center``."""
    width = 2 * height
    dirs = equirect_directions(height, width)
    origins = np.broadcast_to(scene.pano_center, dirs.shape)
    hit = intersect(scene.groups, Rays(origins, dirs))
    return to_uint8(shade(scene, hit, origins, dirs, 2 * np.pi / width)).reshape(height, width, 3)


def render_clip(
    rng: np.random.Generator,
    scene: Scene,
    subject: Subject,
    c2w: np.ndarray,
    K: np.ndarray,
    height: int,
    width: int,
    scene_images: int,
) -> RenderedClip:
    video, video_bg, mask = render_video(scene, subject, c2w, K, height, width)
    panorama = render_panorama(scene, 2 * max(height, width))
    images, scene_c2w, scene_K = panorama_views(
        rng, panorama, scene.pano_center, scene_images, height, width, SCENE_IMAGE_HFOV
    )
    return RenderedClip(video, video_bg, mask, panorama, images, scene_c2w, scene_K)
