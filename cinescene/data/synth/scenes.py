"""Static scenes: a room, a courtyard or a landscape, varied per seed.

Each builder lays out textured primitives around a clear central area where
the subject moves and the camera flies (``free_center``/``free_radius``):
furniture stands against the walls, trees and houses stand outside the
clearing, so the camera never starts inside a solid. The panorama is taken
from ``pano_center`` at eye height in the middle of that area.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .materials import MaterialTable
from .palette import Palette, a_or_an, colour_name, hsv, shade_of
from .primitives import Boxes, Capsules, Cylinders, Ellipsoids, GroundPlane, RoomInterior

EYE_HEIGHT = 1.6


@dataclass
class Sky:
    horizon: np.ndarray
    zenith: np.ndarray
    sun: np.ndarray  # unit direction towards the sun


@dataclass
class Scene:
    kind: str  # room | courtyard | landscape
    description: str  # for the prompt: "a living room with blue striped walls"
    materials: MaterialTable
    groups: list = field(default_factory=list)
    light: np.ndarray = field(default_factory=lambda: np.array([0.3, 0.2, 0.93]))
    ambient: float = 0.45
    sky: Sky | None = None  # None: fully enclosed
    fog_distance: float | None = None
    free_center: np.ndarray = field(default_factory=lambda: np.zeros(2))
    free_radius: float = 3.0
    camera_z: tuple[float, float] = (0.5, 3.0)

    @property
    def pano_center(self) -> np.ndarray:
        return np.array([self.free_center[0], self.free_center[1], EYE_HEIGHT])


class ShapeCollector:
    """Collects shapes by type, then builds one vectorised group per type."""

    def __init__(self):
        self.boxes, self.spheres, self.capsules, self.cylinders = [], [], [], []

    def box(self, center, half, yaw, material):
        self.boxes.append((center, half, yaw, material))

    def ellipsoid(self, center, radii, material):
        self.spheres.append((center, radii, material))

    def capsule(self, a, b, r, material):
        self.capsules.append((a, b, r, material))

    def cylinder(self, xy, r, z0, z1, material):
        self.cylinders.append((xy, r, (z0, z1), material))

    def groups(self) -> list:
        out = []
        if self.boxes:
            c, h, y, m = zip(*self.boxes)
            out.append(Boxes(c, h, y, m))
        if self.spheres:
            c, r, m = zip(*self.spheres)
            out.append(Ellipsoids(c, r, m))
        if self.capsules:
            a, b, r, m = zip(*self.capsules)
            out.append(Capsules(a, b, r, m))
        if self.cylinders:
            xy, r, z, m = zip(*self.cylinders)
            out.append(Cylinders(xy, r, z, m))
        return out


def _tree(shapes: ShapeCollector, rng, mats: MaterialTable, xy):
    height = rng.uniform(2.5, 5.0)
    trunk = mats.add("stripes_v", hsv(0.07, 0.6, 0.35), hsv(0.07, 0.6, 0.25), scale=0.3)
    leaves = mats.add(
        "noise", hsv(rng.uniform(0.22, 0.36), 0.7, 0.45), hsv(rng.uniform(0.2, 0.3), 0.6, 0.25), scale=0.8
    )
    shapes.cylinder(xy, rng.uniform(0.12, 0.25), 0.0, height * 0.6, trunk)
    r = rng.uniform(0.9, 1.6)
    shapes.ellipsoid((xy[0], xy[1], height * 0.6 + r * 0.7), (r, r, r * rng.uniform(1.0, 1.4)), leaves)


def _ring_positions(rng, n: int, r_min: float, r_max: float, center=(0.0, 0.0)):
    angles = np.sort(rng.uniform(0, 2 * np.pi, n))
    radii = rng.uniform(r_min, r_max, n)
    return [(center[0] + r * np.cos(a), center[1] + r * np.sin(a), a) for r, a in zip(radii, angles)]


def build_room(rng: np.random.Generator) -> Scene:
    pal, mats, shapes = Palette(rng), MaterialTable(), ShapeCollector()
    width, depth, height = rng.uniform(9, 14), rng.uniform(9, 14), rng.uniform(3.0, 4.2)
    kind = rng.choice(["living room", "gallery", "studio", "hall"])
    wall_colour, floor_colour = pal.colour("wall"), pal.colour("floor")
    wall_style = rng.choice(["stripes_u", "bricks", "noise", "checker"])
    floor_style = rng.choice(["checker", "stripes_u", "noise"])
    wall = mats.add(wall_style, wall_colour, shade_of(wall_colour, 0.7), scale=rng.uniform(0.4, 0.9))
    accent_colour = pal.colour("accent")
    accent_wall = mats.add("stripes_v", accent_colour, shade_of(accent_colour, 0.75), scale=0.6)
    floor = mats.add(floor_style, floor_colour, shade_of(floor_colour, 0.6), scale=rng.uniform(0.5, 1.0))
    ceiling = mats.add("flat", pal.colour("light"))
    walls = [wall] * 4
    walls[int(rng.integers(4))] = accent_wall
    room = RoomInterior(
        (-width / 2, -depth / 2, 0.0), (width / 2, depth / 2, height), walls + [floor, ceiling]
    )
    # Furniture against the walls: cabinets, sofas, tables, pillars, lamps.
    for angle in np.sort(rng.uniform(0, 2 * np.pi, int(rng.integers(5, 9)))):
        # Put each item against the wall the angle points at.
        dx, dy = np.cos(angle), np.sin(angle)
        scale = min((width / 2 - 0.8) / max(abs(dx), 1e-3), (depth / 2 - 0.8) / max(abs(dy), 1e-3))
        px, py = dx * scale, dy * scale
        yaw = 0.0 if abs(px) >= width / 2 - 0.9 else np.pi / 2
        colour = pal.colour(rng.choice(["accent", "dark", "any"]))
        item = rng.choice(["cabinet", "sofa", "table", "pillar", "lamp", "plant"])
        if item in ("cabinet", "sofa", "table"):
            half = {"cabinet": (0.3, 0.6, 0.9), "sofa": (0.45, 1.0, 0.4), "table": (0.5, 0.5, 0.38)}[item]
            mat = mats.add(
                rng.choice(["flat", "stripes_u", "noise"]), colour, shade_of(colour, 0.7), scale=0.3
            )
            shapes.box((px, py, half[2]), half, yaw, mat)
        elif item == "pillar":
            mat = mats.add("stripes_v", colour, shade_of(colour, 0.8), scale=0.5)
            shapes.cylinder((px, py), 0.25, 0.0, height, mat)
        elif item == "lamp":
            pole = mats.add("flat", (0.2, 0.2, 0.22))
            shade = mats.add("flat", hsv(0.12, 0.3, 1.0))
            shapes.capsule((px, py, 0.0), (px, py, 1.5), 0.03, pole)
            shapes.ellipsoid((px, py, 1.65), (0.22, 0.22, 0.18), shade)
        else:
            pot = mats.add("flat", colour)
            leaves = mats.add("noise", hsv(0.3, 0.7, 0.45), hsv(0.28, 0.6, 0.25), scale=0.4)
            shapes.cylinder((px, py), 0.22, 0.0, 0.45, pot)
            shapes.ellipsoid((px, py, 0.95), (0.4, 0.4, 0.55), leaves)
    # Paintings: thin boxes on the walls, the strongest landmarks for telling views apart.
    for _ in range(int(rng.integers(2, 5))):
        on_x = rng.random() < 0.5
        colour = pal.colour("any")
        mat = mats.add(rng.choice(["checker", "stripes_u", "noise"]), colour, pal.colour("any"), scale=0.25)
        w, h = rng.uniform(0.4, 0.9), rng.uniform(0.3, 0.6)
        z = rng.uniform(1.3, min(2.2, height - 0.5))
        if on_x:
            side = rng.choice([-1, 1]) * (width / 2 - 0.03)
            shapes.box((side, rng.uniform(-depth / 3, depth / 3), z), (0.03, w, h), 0.0, mat)
        else:
            side = rng.choice([-1, 1]) * (depth / 2 - 0.03)
            shapes.box((rng.uniform(-width / 3, width / 3), side, z), (w, 0.03, h), 0.0, mat)
    rug_colour = pal.colour("accent")
    rug = mats.add("checker", rug_colour, shade_of(rug_colour, 0.6), scale=0.4)
    shapes.box((0.0, 0.0, 0.01), (rng.uniform(0.8, 1.6), rng.uniform(0.8, 1.6), 0.01), 0.0, rug)
    floor_words = f"{colour_name(floor_colour)} {_style_words(floor_style, floor=True)} floor"
    walls_words = f"{colour_name(wall_colour)} {_style_words(wall_style)} walls"
    description = f"a {kind} with {walls_words} and {a_or_an(floor_words)}"
    return Scene(
        "room",
        description,
        mats,
        [room] + shapes.groups(),
        light=_unit((rng.uniform(-0.4, 0.4), rng.uniform(-0.4, 0.4), 1.0)),
        ambient=0.5,
        free_radius=min(width, depth) / 2 - 1.3,
        camera_z=(0.6, height - 0.5),
    )


def _style_words(style: str, floor: bool = False) -> str:
    if floor:
        return {"checker": "tiled", "stripes_u": "wooden", "noise": "carpeted"}[style]
    return {"stripes_u": "striped", "bricks": "brick", "noise": "plastered", "checker": "tiled"}[style]


def _unit(v) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64)
    return v / np.linalg.norm(v)


def _outdoor_sky(rng) -> Sky:
    sun = _unit((np.cos(a := rng.uniform(0, 2 * np.pi)), np.sin(a), rng.uniform(0.4, 1.2)))
    horizon = hsv(rng.uniform(0.52, 0.62), rng.uniform(0.1, 0.3), rng.uniform(0.85, 0.97))
    zenith = hsv(rng.uniform(0.55, 0.65), rng.uniform(0.45, 0.75), rng.uniform(0.6, 0.85))
    return Sky(horizon, zenith, sun)


def build_courtyard(rng: np.random.Generator) -> Scene:
    pal, mats, shapes = Palette(rng), MaterialTable(), ShapeCollector()
    half = rng.uniform(7, 10)
    paving_colour, wall_colour = pal.colour("floor"), pal.colour("wall")
    paving = mats.add("checker", paving_colour, shade_of(paving_colour, 0.7), scale=rng.uniform(0.6, 1.2))
    wall = mats.add("bricks", wall_colour, shade_of(wall_colour, 0.55), scale=0.5)
    wall_height = rng.uniform(3.0, 5.5)
    for axis in range(2):
        for sign in (-1, 1):
            center = [0.0, 0.0, wall_height / 2]
            center[axis] = sign * half
            extent = [half, half, wall_height / 2]
            extent[axis] = 0.25
            shapes.box(center, extent, 0.0, wall)
    # Doors and windows: dark boxes slightly in front of the walls.
    door = mats.add("stripes_v", pal.colour("dark"), shade_of(pal.colour("dark"), 0.6), scale=0.3)
    for _ in range(int(rng.integers(3, 7))):
        axis, sign = int(rng.integers(2)), rng.choice([-1, 1])
        along = rng.uniform(-half + 1.5, half - 1.5)
        center = [along, along, rng.uniform(1.0, wall_height - 1.0)]
        center[axis] = sign * (half - 0.27)
        extent = [0.5, 0.5, 0.6]
        extent[axis] = 0.03
        shapes.box(center, extent, 0.0, door)
    for x, y, _ in _ring_positions(rng, int(rng.integers(3, 6)), 5.5, half - 1.2):
        _tree(shapes, rng, mats, (x, y))
    for x, y, angle in _ring_positions(rng, int(rng.integers(2, 4)), 4.5, half - 1.0):
        bench = mats.add("stripes_u", pal.colour("accent"), pal.colour("dark"), scale=0.15)
        shapes.box((x, y, 0.25), (0.9, 0.25, 0.25), angle + np.pi / 2, bench)
    fountain_colour = pal.colour("light")
    stone = mats.add("noise", fountain_colour, shade_of(fountain_colour, 0.7), scale=0.5)
    fx, fy, _ = _ring_positions(rng, 1, 5.0, 5.5)[0]
    shapes.cylinder((fx, fy), 0.9, 0.0, 0.5, stone)
    shapes.ellipsoid((fx, fy, 0.9), (0.35, 0.35, 0.45), stone)
    description = (
        f"a courtyard with {colour_name(wall_colour)} brick walls, trees and "
        f"{a_or_an(colour_name(paving_colour))} paved floor"
    )
    sky = _outdoor_sky(rng)
    return Scene(
        "courtyard",
        description,
        mats,
        [GroundPlane(paving)] + shapes.groups(),
        light=sky.sun,
        ambient=0.45,
        sky=sky,
        fog_distance=120.0,
        free_radius=3.8,
        camera_z=(0.5, 4.0),
    )


def build_landscape(rng: np.random.Generator) -> Scene:
    pal, mats, shapes = Palette(rng), MaterialTable(), ShapeCollector()
    terrain = rng.choice(["meadow", "desert", "snowfield"])
    ground_colour = {
        "meadow": hsv(rng.uniform(0.2, 0.32), 0.6, 0.5),
        "desert": hsv(0.1, 0.45, 0.8),
        "snowfield": hsv(0.58, 0.05, 0.92),
    }[terrain]
    ground = mats.add("noise", ground_colour, shade_of(ground_colour, 0.75), scale=1.5)
    hill_colour = shade_of(ground_colour, 0.8)
    hill = mats.add("noise", hill_colour, shade_of(hill_colour, 0.7), scale=6.0)
    for x, y, _ in _ring_positions(rng, int(rng.integers(4, 8)), 45.0, 80.0):
        r = rng.uniform(12, 30)
        shapes.ellipsoid((x, y, -r * 0.3), (r, r * rng.uniform(0.8, 1.3), r * rng.uniform(0.5, 0.9)), hill)
    n_trees = {"meadow": (6, 12), "desert": (0, 2), "snowfield": (3, 7)}[terrain]
    for x, y, _ in _ring_positions(rng, int(rng.integers(*n_trees)) + 1, 6.5, 22.0):
        _tree(shapes, rng, mats, (x, y))
    rock_colour = hsv(rng.uniform(0.05, 0.12), 0.2, rng.uniform(0.4, 0.6))
    rock = mats.add("noise", rock_colour, shade_of(rock_colour, 0.6), scale=0.4)
    for x, y, _ in _ring_positions(rng, int(rng.integers(3, 7)), 5.5, 15.0):
        r = rng.uniform(0.3, 1.0)
        shapes.ellipsoid((x, y, r * 0.3), (r * 1.3, r, r * 0.8), rock)
    # A house: walls, a darker flat roof, a door; a fence line beside it.
    house_colour = pal.colour("wall")
    house = mats.add("stripes_u", house_colour, shade_of(house_colour, 0.8), scale=0.4)
    roof = mats.add("stripes_u", pal.colour("dark"), shade_of(pal.colour("dark"), 0.7), scale=0.3)
    hx, hy, angle = _ring_positions(rng, 1, 11.0, 16.0)[0]
    shapes.box((hx, hy, 1.4), (2.5, 2.0, 1.4), angle, house)
    shapes.box((hx, hy, 3.0), (2.8, 2.3, 0.2), angle, roof)
    fence = mats.add("flat", hsv(0.08, 0.5, 0.55))
    for k in range(-4, 5):
        fx = hx + np.cos(angle + np.pi / 2) * 3.5 + np.cos(angle) * k * 0.8
        fy = hy + np.sin(angle + np.pi / 2) * 3.5 + np.sin(angle) * k * 0.8
        shapes.capsule((fx, fy, 0.0), (fx, fy, 1.0), 0.05, fence)
    sky = _outdoor_sky(rng)
    description = f"a {terrain} with {'hills, trees' if n_trees[1] > 2 else 'dunes, rocks'} and a small house"
    return Scene(
        "landscape",
        description,
        mats,
        [GroundPlane(ground)] + shapes.groups(),
        light=sky.sun,
        ambient=0.45,
        sky=sky,
        fog_distance=90.0,
        free_radius=4.5,
        camera_z=(0.5, 4.0),
    )


BUILDERS = {"room": build_room, "courtyard": build_courtyard, "landscape": build_landscape}


def build_scene(rng: np.random.Generator) -> Scene:
    kind = str(rng.choice(sorted(BUILDERS)))
    return BUILDERS[kind](rng)
