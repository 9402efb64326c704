"""Analytic ray intersection for the synthetic renderer, vectorised over rays x shapes.

Every group of shapes answers ``hit(rays) -> Hit`` for N rays at once: the
nearest positive distance per ray (``inf`` where nothing is hit), the surface
normal there, and the material id of the shape hit. Directions must be unit
vectors. Rays never start inside a solid (the camera keeps clear of objects
and of the subject), so only entry points are needed; the room interior is
the one shape seen from inside.

Arithmetic runs on separate x/y/z component arrays of shape (N, n) rather
than on (N, n, 3) arrays: numpy reduces a trailing axis of length 3 slowly,
and this layout makes the renderer several times faster.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

EPS = 1e-6


class Rays:
    """Ray origins and unit directions as (N, 1) component columns (they broadcast against shapes)."""

    def __init__(self, origins: np.ndarray, dirs: np.ndarray):
        self.origins, self.dirs = origins, dirs
        # float32 halves the memory traffic of the (N, n)
        # arrays; centimetre-scale error at 100 m is invisible.
        self.ox, self.oy, self.oz = (origins[:, i].astype(np.float32)[:, None] for i in range(3))
        self.dx, self.dy, self.dz = (dirs[:, i].astype(np.float32)[:, None] for i in range(3))

    def __len__(self) -> int:
        return len(self.origins)

    def subset(self, rows: np.ndarray) -> Rays:
        return Rays(self.origins[rows], self.dirs[rows])

    def points(self, t: np.ndarray) -> np.ndarray:
        return self.origins + self.dirs * np.where(np.isfinite(t), t, 0.0)[:, None]


@dataclass
class Hit:
    t: np.ndarray  # (N,) distance along the ray, inf where nothing was hit
    normal: np.ndarray  # (N, 3) unit normal, facing the ray after intersect()
    material: np.ndarray  # (N,) material id, -1 where nothing was hit

    @classmethod
    def empty(cls, n: int) -> Hit:
        return cls(np.full(n, np.inf), np.zeros((n, 3)), np.full(n, -1, dtype=np.int64))

    def merge(self, other: Hit) -> Hit:
        """Keep, per ray, the nearer of two hits."""
        closer = other.t < self.t
        return Hit(
            np.where(closer, other.t, self.t),
            np.where(closer[:, None], other.normal, self.normal),
            np.where(closer, other.material, self.material),
        )


def _finish(t: np.ndarray, materials: np.ndarray, normal_fn) -> Hit:
    """(N, n) candidate distances -> nearest hit, with the normal of that shape only."""
    idx = np.argmin(t, axis=1)
    best = t[np.arange(len(t)), idx]
    normal = normal_fn(best, idx)
    normal /= np.maximum(np.linalg.norm(normal, axis=-1, keepdims=True), 1e-12)
    return Hit(best, normal, np.where(np.isfinite(best), materials[idx], -1))


class ShapeGroup:
    """A group of shapes of one type; ``_per_shape`` names the arrays indexed by shape."""

    _per_shape: tuple = ()

    def select(self, i: int) -> ShapeGroup:
        one = object.__new__(type(self))
        for name in self._per_shape:
            setattr(one, name, getattr(self, name)[i : i + 1])
        return one

    def spheres(self):
        """Bounding spheres: centres (n, 3) and radii (n,), for culling."""
        raise NotImplementedError


class Ellipsoids(ShapeGroup):
    """Axis-aligned ellipsoids (spheres when the three radii agree)."""

    _per_shape = ("c", "r", "m")

    def __init__(self, centers: Sequence, radii: Sequence, materials: Sequence[int]):
        self.c = np.asarray(centers, dtype=np.float32).reshape(-1, 3)
        self.r = np.asarray(radii, dtype=np.float32).reshape(-1, 3)
        self.m = np.asarray(materials, dtype=np.int64)

    def spheres(self):
        return self.c, self.r.max(-1)

    def hit(self, rays: Rays) -> Hit:
        # Scale space so each ellipsoid is the unit sphere; distances along the ray are unchanged.
        inv = 1.0 / self.r
        ox, oy, oz = (
            (rays.ox - self.c[:, 0]) * inv[:, 0],
            (rays.oy - self.c[:, 1]) * inv[:, 1],
            (rays.oz - self.c[:, 2]) * inv[:, 2],
        )
        dx, dy, dz = rays.dx * inv[:, 0], rays.dy * inv[:, 1], rays.dz * inv[:, 2]
        a = dx * dx + dy * dy + dz * dz
        b = ox * dx + oy * dy + oz * dz
        h = b * b - a * (ox * ox + oy * oy + oz * oz - 1.0)
        with np.errstate(invalid="ignore"):
            t = (-b - np.sqrt(h)) / a
        t = np.where((h >= 0) & (t > EPS), t, np.inf)

        def normal(best, idx):
            return (rays.points(best) - self.c[idx]) * inv[idx] ** 2

        return _finish(t, self.m, normal)


class Boxes(ShapeGroup):
    """Boxes with a yaw (rotation about +z) each: furniture, houses, walls, fences."""

    _per_shape = ("c", "h", "cos", "sin", "m")

    def __init__(
        self, centers: Sequence, half_sizes: Sequence, yaws: Sequence[float], materials: Sequence[int]
    ):
        self.c = np.asarray(centers, dtype=np.float32).reshape(-1, 3)
        self.h = np.asarray(half_sizes, dtype=np.float32).reshape(-1, 3)
        self.cos = np.cos(np.asarray(yaws, dtype=np.float64)).astype(np.float32)
        self.sin = np.sin(np.asarray(yaws, dtype=np.float64)).astype(np.float32)
        self.m = np.asarray(materials, dtype=np.int64)

    def spheres(self):
        return self.c, np.linalg.norm(self.h, axis=-1)

    def hit(self, rays: Rays) -> Hit:
        px, py, pz = rays.ox - self.c[:, 0], rays.oy - self.c[:, 1], rays.oz - self.c[:, 2]
        local_o = (self.cos * px + self.sin * py, -self.sin * px + self.cos * py, pz)
        local_d = (
            self.cos * rays.dx + self.sin * rays.dy,
            -self.sin * rays.dx + self.cos * rays.dy,
            np.broadcast_to(rays.dz, px.shape),
        )
        t_near, t_far = np.full(px.shape, -np.inf), np.full(px.shape, np.inf)
        for axis in range(3):
            d = np.where(np.abs(local_d[axis]) < 1e-12, 1e-12, local_d[axis])
            t1 = (-self.h[:, axis] - local_o[axis]) / d
            t2 = (self.h[:, axis] - local_o[axis]) / d
            t_near = np.maximum(t_near, np.minimum(t1, t2))
            t_far = np.minimum(t_far, np.maximum(t1, t2))
        t = np.where((t_near <= t_far) & (t_near > EPS), t_near, np.inf)

        def normal(best, idx):
            rel = rays.points(best) - self.c[idx]
            cos, sin = self.cos[idx], self.sin[idx]
            local = np.stack(
                [cos * rel[:, 0] + sin * rel[:, 1], -sin * rel[:, 0] + cos * rel[:, 1], rel[:, 2]], -1
            )
            rows = np.arange(len(best))
            axis = np.argmax(np.abs(local) / self.h[idx], axis=-1)
            n_local = np.zeros_like(local)
            n_local[rows, axis] = np.sign(local[rows, axis])
            return np.stack(
                [
                    cos * n_local[:, 0] - sin * n_local[:, 1],
                    sin * n_local[:, 0] + cos * n_local[:, 1],
                    n_local[:, 2],
                ],
                -1,
            )

        return _finish(t, self.m, normal)


class Capsules(ShapeGroup):
    """Segments with a radius: limbs, bodies, trunks, poles."""

    _per_shape = ("a", "b", "r", "m")

    def __init__(self, starts: Sequence, ends: Sequence, radii: Sequence[float], materials: Sequence[int]):
        self.a = np.asarray(starts, dtype=np.float32).reshape(-1, 3)
        self.b = np.asarray(ends, dtype=np.float32).reshape(-1, 3)
        self.r = np.asarray(radii, dtype=np.float32).reshape(-1)
        self.m = np.asarray(materials, dtype=np.int64)

    def spheres(self):
        return (self.a + self.b) / 2, np.linalg.norm(self.b - self.a, axis=-1) / 2 + self.r

    def hit(self, rays: Rays) -> Hit:
        ba = self.b - self.a
        oax, oay, oaz = rays.ox - self.a[:, 0], rays.oy - self.a[:, 1], rays.oz - self.a[:, 2]
        baba = np.sum(ba * ba, -1)
        bard = ba[:, 0] * rays.dx + ba[:, 1] * rays.dy + ba[:, 2] * rays.dz
        baoa = ba[:, 0] * oax + ba[:, 1] * oay + ba[:, 2] * oaz
        rdoa = rays.dx * oax + rays.dy * oay + rays.dz * oaz
        oaoa = oax * oax + oay * oay + oaz * oaz
        r2 = self.r**2
        qa = baba - bard * bard
        qb = baba * rdoa - baoa * bard
        h = qb * qb - qa * (baba * oaoa - baoa * baoa - r2 * baba)
        with np.errstate(invalid="ignore", divide="ignore"):
            t_body = (-qb - np.sqrt(h)) / qa
        y = baoa + t_body * bard
        body = (h >= 0) & (y > 0) & (y < baba) & (t_body > EPS)
        # Otherwise the nearest point is on one of the hemispherical caps.
        first = y <= 0
        ocx = np.where(first, oax, rays.ox - self.b[:, 0])
        ocy = np.where(first, oay, rays.oy - self.b[:, 1])
        ocz = np.where(first, oaz, rays.oz - self.b[:, 2])
        bc = rays.dx * ocx + rays.dy * ocy + rays.dz * ocz
        hc = bc * bc - (ocx * ocx + ocy * ocy + ocz * ocz - r2)
        with np.errstate(invalid="ignore"):
            t_cap = -bc - np.sqrt(hc)
        cap = (h >= 0) & (hc > 0) & (t_cap > EPS)
        t = np.where(body, t_body, np.where(cap, t_cap, np.inf))

        def normal(best, idx):
            seg = ba[idx]
            pa = rays.points(best) - self.a[idx]
            s = np.clip(np.sum(pa * seg, -1) / np.maximum(baba[idx], 1e-12), 0.0, 1.0)
            return pa - seg * s[:, None]

        return _finish(t, self.m, normal)


class Cylinders(ShapeGroup):
    """Vertical capped cylinders: pillars, table legs, tree trunks, barrels."""

    _per_shape = ("c", "r", "z0", "z1", "m")

    def __init__(
        self, centers_xy: Sequence, radii: Sequence[float], z_ranges: Sequence, materials: Sequence[int]
    ):
        self.c = np.asarray(centers_xy, dtype=np.float32).reshape(-1, 2)
        self.r = np.asarray(radii, dtype=np.float32).reshape(-1)
        z = np.asarray(z_ranges, dtype=np.float32).reshape(-1, 2)
        self.z0, self.z1 = z[:, 0], z[:, 1]
        self.m = np.asarray(materials, dtype=np.int64)

    def spheres(self):
        centers = np.concatenate([self.c, ((self.z0 + self.z1) / 2)[:, None]], -1)
        return centers, np.sqrt(self.r**2 + ((self.z1 - self.z0) / 2) ** 2)

    def hit(self, rays: Rays) -> Hit:
        ox, oy = rays.ox - self.c[:, 0], rays.oy - self.c[:, 1]
        a = rays.dx * rays.dx + rays.dy * rays.dy
        b = ox * rays.dx + oy * rays.dy
        r2 = self.r**2
        h = b * b - a * (ox * ox + oy * oy - r2)
        with np.errstate(invalid="ignore", divide="ignore"):
            t_side = (-b - np.sqrt(h)) / a
        z = rays.oz + t_side * rays.dz
        side = (h >= 0) & (t_side > EPS) & (z >= self.z0) & (z <= self.z1)
        # Caps: the top plane for rays going down, the bottom plane for rays going up.
        plane = np.where(rays.dz < 0, self.z1, self.z0)
        with np.errstate(invalid="ignore", divide="ignore"):
            t_cap = (plane - rays.oz) / rays.dz
        t_ok = np.where(np.isfinite(t_cap), t_cap, 0.0)
        cx, cy = ox + rays.dx * t_ok, oy + rays.dy * t_ok
        cap = (t_cap > EPS) & (cx * cx + cy * cy <= r2)
        t = np.minimum(np.where(side, t_side, np.inf), np.where(cap, t_cap, np.inf))

        def normal(best, idx):
            p = rays.points(best)
            radial = np.concatenate([p[:, :2] - self.c[idx], np.zeros((len(p), 1))], -1)
            on_cap = (p[:, 2] >= self.z1[idx] - 1e-7) | (p[:, 2] <= self.z0[idx] + 1e-7)
            on_cap &= np.sum(radial**2, -1) < (self.r[idx] * (1 - 1e-6)) ** 2
            vertical = np.stack([np.zeros(len(p)), np.zeros(len(p)), np.ones(len(p))], -1)
            return np.where(on_cap[:, None], vertical, radial)

        return _finish(t, self.m, normal)


class GroundPlane:
    """The plane z = 0 seen from above (landscapes, courtyards)."""

    def __init__(self, material: int):
        self.material = material

    def hit(self, rays: Rays) -> Hit:
        dz, oz = rays.dz[:, 0], rays.oz[:, 0]
        with np.errstate(divide="ignore", invalid="ignore"):
            t = -oz / dz
        t = np.where((dz < 0) & (oz > 0) & (t > EPS), t, np.inf)
        n = np.zeros((len(rays), 3))
        n[:, 2] = 1.0
        return Hit(t, n, np.where(np.isfinite(t), self.material, -1))


class RoomInterior:
    """An axis-aligned box seen from inside: floor, ceiling and four walls, one material each.

    Face order of ``materials``: -x wall, +x wall, -y wall, +y wall, floor, ceiling.
    """

    def __init__(self, lo: Sequence[float], hi: Sequence[float], materials: Sequence[int]):
        self.lo = np.asarray(lo, dtype=np.float64)
        self.hi = np.asarray(hi, dtype=np.float64)
        self.m = np.asarray(materials, dtype=np.int64)

    def hit(self, rays: Rays) -> Hit:
        o, d = rays.origins, rays.dirs
        safe = np.where(np.abs(d) < 1e-12, 1e-12, d)
        t_exit_axis = np.where(d > 0, (self.hi - o) / safe, (self.lo - o) / safe)
        axis = np.argmin(t_exit_axis, axis=-1)
        rows = np.arange(len(o))
        t = t_exit_axis[rows, axis]
        positive = d[rows, axis] > 0
        n = np.zeros((len(o), 3))
        n[rows, axis] = np.where(positive, -1.0, 1.0)
        face = axis * 2 + positive.astype(np.int64)
        return Hit(np.where(t > EPS, t, np.inf), n, np.where(t > EPS, self.m[face], -1))


def intersect(groups: list, rays: Rays) -> Hit:
    """Nearest hit over several shape groups; normals face the incoming ray.

    Bounded shapes are tested one at a time, and only against the rays that
    enter their bounding sphere before the nearest hit so far: most shapes
    cover a small part of the image, which makes this about twice as fast as
    testing every ray against every shape. (Bounding radii are padded a little
    so float32 rounding never culls a ray that grazes a shape.)
    """
    hit = Hit.empty(len(rays))
    d = rays.dirs
    ox, oy, oz, dx, dy, dz = (c[:, 0] for c in (rays.ox, rays.oy, rays.oz, rays.dx, rays.dy, rays.dz))
    for group in groups:
        if not isinstance(group, ShapeGroup):
            hit = hit.merge(group.hit(rays))
            continue
        centers, radii = group.spheres()
        radii = radii * 1.001 + 1e-3
        # Ray vs every bounding sphere at once, as (shapes, rays) arrays so each shape's row is contiguous.
        cx, cy, cz = (ox - centers[:, :1]), (oy - centers[:, 1:2]), (oz - centers[:, 2:3])
        b = cx * dx + cy * dy + cz * dz
        disc = b * b - (cx * cx + cy * cy + cz * cz - (radii * radii)[:, None])
        root = np.sqrt(np.maximum(disc, 0.0))
        enters = (disc >= 0) & (root > b)
        t_enter = -b - root
        for i in range(len(radii)):
            rows = np.flatnonzero(enters[i])
            rows = rows[t_enter[i, rows] < hit.t[rows]]
            if len(rows):
                sub = group.select(i).hit(rays.subset(rows))
                closer = sub.t < hit.t[rows]
                rows = rows[closer]
                hit.t[rows], hit.normal[rows] = sub.t[closer], sub.normal[closer]
                hit.material[rows] = sub.material[closer]
    flip = np.sum(hit.normal * d, axis=-1) > 0
    hit.normal[flip] *= -1.0
    return hit
