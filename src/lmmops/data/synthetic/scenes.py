"""Synthetic VQA scenes: up to four coloured shapes (one per quadrant) and optionally one digit.

A 32x32 image is a 2x2 grid of 16x16 cells, which is exactly the patch grid of a vision tower with
16-pixel patches: each object falls inside one patch, so a tiny model can read colour, shape and
position from one image token. Sizes scale with the image size.

    scene = Scene(objects=(SceneObject("circle", "red", "top left"),), background=240)
    image = render_scene(scene, size=32)

Compared with COCO this is of course a toy: flat colours, no occlusion, four positions.
"""

from __future__ import annotations

from dataclasses import dataclass

from PIL import Image, ImageDraw

from lmmops.data.synthetic.draw import GLYPH_H, GLYPH_W, draw_shape, draw_text

COLOURS: tuple[str, ...] = ("red", "green", "blue", "yellow")
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "cross")
POSITIONS: tuple[str, ...] = ("top left", "top right", "bottom left", "bottom right")

COLOUR_RGB: dict[str, tuple[int, int, int]] = {
    "red": (215, 38, 38),
    "green": (34, 160, 60),
    "blue": (40, 80, 215),
    "yellow": (235, 200, 30),
}
TEXT_RGB = (20, 20, 20)
# (column, row) of each position's cell in the 2x2 grid.
POSITION_CELL: dict[str, tuple[int, int]] = {
    "top left": (0, 0),
    "top right": (1, 0),
    "bottom left": (0, 1),
    "bottom right": (1, 1),
}


@dataclass(frozen=True)
class SceneObject:
    shape: str
    colour: str
    position: str
    dx: int = 0  # offset of the object from its cell's centre, in pixels at the rendered size
    dy: int = 0

    def to_json(self) -> dict:
        return {"shape": self.shape, "colour": self.colour, "position": self.position,
                "dx": self.dx, "dy": self.dy}


@dataclass(frozen=True)
class SceneText:
    value: str  # digits only (the bitmap font)
    position: str
    dx: int = 0
    dy: int = 0

    def to_json(self) -> dict:
        return {"value": self.value, "position": self.position, "dx": self.dx, "dy": self.dy}


@dataclass(frozen=True)
class Scene:
    objects: tuple[SceneObject, ...]
    text: SceneText | None = None
    background: int = 245  # grey level of the background

    def to_json(self) -> dict:
        return {
            "objects": [o.to_json() for o in self.objects],
            "text": self.text.to_json() if self.text else None,
            "background": self.background,
        }

    @staticmethod
    def from_json(d: dict) -> Scene:
        text = d.get("text")
        return Scene(
            objects=tuple(SceneObject(**o) for o in d["objects"]),
            text=SceneText(**text) if text else None,
            background=int(d.get("background", 245)),
        )

    def occupied(self) -> set[str]:
        pos = {o.position for o in self.objects}
        if self.text:
            pos.add(self.text.position)
        return pos


def cell_geometry(size: int) -> tuple[int, int, int]:
    """(cell size, object size, max jitter) for an image of `size` pixels."""
    cell = size // 2
    return cell, max(4, round(cell * 0.625)), max(1, cell // 8)


def _place(size: int, position: str, extent_w: int, extent_h: int, dx: int, dy: int) -> tuple[int, int]:
    """Top-left corner of a box centred in `position`'s cell plus (dx, dy), kept inside the cell."""
    cell = size // 2
    col, row = POSITION_CELL[position]
    x0 = col * cell + (cell - extent_w) // 2 + dx
    y0 = row * cell + (cell - extent_h) // 2 + dy
    x0 = min(max(x0, col * cell), (col + 1) * cell - extent_w)
    y0 = min(max(y0, row * cell), (row + 1) * cell - extent_h)
    return x0, y0


def text_scale(size: int) -> int:
    return max(1, (size // 2) // 8)


def render_scene(scene: Scene, size: int) -> Image.Image:
    img = Image.new("RGB", (size, size), (scene.background,) * 3)
    draw = ImageDraw.Draw(img)
    _, obj, _ = cell_geometry(size)
    for o in scene.objects:
        x0, y0 = _place(size, o.position, obj, obj, o.dx, o.dy)
        draw_shape(draw, o.shape, x0, y0, obj, COLOUR_RGB[o.colour])
    if scene.text is not None:
        s = text_scale(size)
        w = (len(scene.text.value) * (GLYPH_W + 1) - 1) * s
        x0, y0 = _place(size, scene.text.position, w, GLYPH_H * s, scene.text.dx, scene.text.dy)
        draw_text(draw, scene.text.value, x0, y0, s, TEXT_RGB)
    return img
