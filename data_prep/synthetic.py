"""The built-in synthetic set: gradient backgrounds with one or two simple shapes.

Backgrounds, shape kinds, colours and positions are each drawn from a few modes with small
jitter, so a small GAN can learn the set within minutes on a CPU at 32x32 while mode coverage is
still visible. Shapes are drawn at 4x and box-filtered down (antialiasing), so every resolution
is a clean downsample of the same picture.
"""

from __future__ import annotations

import hashlib
import math
import random
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

# Bump when the rendering changes: prepared copies of the old set are then not reused.
SYNTHETIC_VERSION = 1
SUPERSAMPLE = 4

_BACKGROUNDS = (  # (start colour, end colour) of the gradient, in BACKGROUNDS' order
    ((16, 28, 60), (70, 120, 180)),
    ((235, 225, 205), (165, 145, 115)),
    ((20, 66, 48), (125, 185, 120)),
    ((92, 28, 64), (225, 125, 90)),
)
BACKGROUNDS = ("night_blue", "sand", "green", "sunset")  # class indices of --labels backgrounds
_SHAPE_COLOURS = (
    (225, 50, 45),  # red
    (250, 200, 35),  # yellow
    (35, 110, 230),  # blue
    (245, 245, 240),  # white
    (25, 25, 30),  # black
    (60, 200, 115),  # green
)
SHAPES = ("disc", "square", "triangle")  # class indices of --labels shapes
_ANCHORS = ((0.3, 0.3), (0.7, 0.3), (0.3, 0.7), (0.7, 0.7), (0.5, 0.5))
_GRADIENT_ANGLES = (0.0, 45.0, 90.0, 135.0)


def _rng(index: int, seed: int) -> random.Random:
    # Hash (seed, index) so nearby seeds and indices give unrelated streams.
    digest = hashlib.sha256(f"gan_hr-synthetic/{seed}/{index}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "little"))


def _jitter(rng: random.Random, colour: tuple[int, int, int], amount: float) -> np.ndarray:
    jittered = [min(max(c + rng.uniform(-amount, amount), 0.0), 255.0) for c in colour]
    return np.array(jittered, np.float32)


@dataclass(frozen=True)
class Shape:
    """One shape as drawn: centre and circumradius as fractions of the image side."""

    kind: str  # one of SHAPES
    colour: np.ndarray
    x: float
    y: float
    radius: float
    rotation: float


@dataclass(frozen=True)
class Scene:
    """Everything drawn for one image, independent of the resolution it is rendered at."""

    start: np.ndarray  # gradient colours
    end: np.ndarray
    angle: float  # gradient direction, radians
    shapes: list[Shape]  # in drawing order: a later shape covers an earlier one
    background: int  # index in BACKGROUNDS of the gradient's colours before jitter


def synthetic_scene(index: int, seed: int) -> Scene:
    """What image `index` of the set for `seed` shows (the draws `render_synthetic` paints)."""
    rng = _rng(index, seed)
    start, end = background = rng.choice(_BACKGROUNDS)
    c0, c1 = _jitter(rng, start, 12), _jitter(rng, end, 12)
    angle = math.radians(rng.choice(_GRADIENT_ANGLES) + rng.uniform(-10, 10))
    shapes = []
    for ax, ay in rng.sample(_ANCHORS, 2 if rng.random() < 0.4 else 1):
        kind = rng.choice(SHAPES)
        colour = _jitter(rng, rng.choice(_SHAPE_COLOURS), 15)
        x, y = ax + rng.uniform(-0.05, 0.05), ay + rng.uniform(-0.05, 0.05)
        shapes.append(Shape(kind, colour, x, y, rng.uniform(0.13, 0.22), rng.uniform(0, 2 * math.pi)))
    return Scene(c0, c1, angle, shapes, _BACKGROUNDS.index(background))


def synthetic_class(index: int, seed: int) -> int:
    """The class of image `index` with ``--labels shapes``: the index in `SHAPES` of the first
    shape drawn. It is always partly visible: a second shape has its centre at another anchor,
    0.14 of the side away or more after jitter, and with a circumradius of at most 0.22 it cannot
    cover a shape of circumradius 0.13 or more there (a vertex or the rim stays out)."""
    return SHAPES.index(synthetic_scene(index, seed).shapes[0].kind)


def synthetic_background(index: int, seed: int) -> int:
    """The class of image `index` with ``--labels backgrounds``: the index in `BACKGROUNDS` of
    its gradient. Unlike the shapes, a short run on a CPU learns these classes."""
    return synthetic_scene(index, seed).background


def _background(scene: Scene, res: int) -> np.ndarray:
    c0, c1, angle = scene.start, scene.end, scene.angle
    coords = (np.arange(res, dtype=np.float32) + 0.5) / res - 0.5
    # Projection on the gradient direction, mapped to [0, 1] across the image.
    t = coords[None, :] * math.cos(angle) + coords[:, None] * math.sin(angle)
    t -= t.min()
    t /= max(float(t.max()), 1e-6)
    # Channels first: numpy broadcasts over a trailing axis of 3 very slowly.
    return c0[:, None, None] + t[None] * (c1 - c0)[:, None, None]


def _outline(kind: str, cx: float, cy: float, r: float, rot: float) -> list[tuple[float, float]]:
    corners = 4 if kind == "square" else 3
    return [(cx + r * math.cos(rot + 2 * math.pi * k / corners),
             cy + r * math.sin(rot + 2 * math.pi * k / corners)) for k in range(corners)]


def _coverage(kind: str, cx: float, cy: float, r: float, rot: float,
              res: int) -> tuple[np.ndarray, int, int]:
    """Antialiased coverage in [0, 1] of the shape's bounding box, and the box's top-left pixel."""
    x0, y0 = max(int(cx - r) - 1, 0), max(int(cy - r) - 1, 0)
    x1, y1 = min(int(cx + r) + 2, res), min(int(cy + r) + 2, res)
    s = SUPERSAMPLE
    canvas = Image.new("L", ((x1 - x0) * s, (y1 - y0) * s), 0)
    draw = ImageDraw.Draw(canvas)
    ox, oy = (cx - x0) * s, (cy - y0) * s
    if kind == "disc":
        draw.ellipse((ox - r * s, oy - r * s, ox + r * s, oy + r * s), fill=255)
    else:
        draw.polygon(_outline(kind, ox, oy, r * s, rot), fill=255)
    mask = np.asarray(canvas.reduce(s), dtype=np.float32) / 255.0
    return mask, x0, y0


def render_synthetic(index: int, resolution: int, seed: int) -> Image.Image:
    """Image `index` of the synthetic set for `seed`, as `resolution`² 8-bit RGB.

    Deterministic for (index, seed); every resolution shows the same picture.
    """
    if resolution < 1:
        raise ValueError(f"resolution must be positive, got {resolution}")
    scene = synthetic_scene(index, seed)
    image = _background(scene, resolution)
    for shape in scene.shapes:
        # Same float operations as when positions were drawn in pixels: the bytes never changed.
        cx, cy = shape.x * resolution, shape.y * resolution
        r = shape.radius * resolution
        mask, x0, y0 = _coverage(shape.kind, cx, cy, r, shape.rotation, resolution)
        h, w = mask.shape
        region = image[:, y0:y0 + h, x0:x0 + w]
        region += mask[None] * (shape.colour[:, None, None] - region)
    channels = np.rint(image).astype(np.uint8)
    return Image.merge("RGB", [Image.fromarray(c, "L") for c in channels])
