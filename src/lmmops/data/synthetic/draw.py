"""Pixel-exact drawing helpers shared by the synthetic generators: a 3x5 bitmap font and filled shapes.

The font is a table in this file rather than a TrueType font so that rendered text is identical on every
machine and Pillow version (Pillow's default font changed in 10.1 and depends on FreeType). Nothing is
anti-aliased: small images stay crisp for a model with 16-pixel patches.
"""

from __future__ import annotations

from PIL import ImageDraw

RGB = tuple[int, int, int]

# 3 columns x 5 rows per glyph; "1" = ink. The degree sign sits at the top like a superscript.
_GLYPHS: dict[str, tuple[str, ...]] = {
    "0": ("111", "101", "101", "101", "111"),
    "1": ("010", "110", "010", "010", "111"),
    "2": ("111", "001", "111", "100", "111"),
    "3": ("111", "001", "111", "001", "111"),
    "4": ("101", "101", "111", "001", "001"),
    "5": ("111", "100", "111", "001", "111"),
    "6": ("111", "100", "111", "101", "111"),
    "7": ("111", "001", "001", "010", "010"),
    "8": ("111", "101", "111", "101", "111"),
    "9": ("111", "101", "111", "001", "111"),
    "+": ("000", "010", "111", "010", "000"),
    "-": ("000", "000", "111", "000", "000"),
    "=": ("000", "111", "000", "111", "000"),
    "?": ("111", "001", "011", "000", "010"),
    "x": ("000", "101", "010", "101", "000"),
    "°": ("010", "101", "010", "000", "000"),
    "A": ("010", "101", "111", "101", "101"),
    "B": ("110", "101", "110", "101", "110"),
    "C": ("011", "100", "100", "100", "011"),
    "D": ("110", "101", "101", "101", "110"),
    " ": ("000", "000", "000", "000", "000"),
}
FONT_CHARS = frozenset(_GLYPHS)
GLYPH_W, GLYPH_H = 3, 5


def text_size(text: str, scale: int = 1) -> tuple[int, int]:
    """Width and height in pixels of `text` drawn with draw_text (1 blank column between glyphs)."""
    if not text:
        return 0, 0
    return (len(text) * (GLYPH_W + 1) - 1) * scale, GLYPH_H * scale


def draw_text(draw: ImageDraw.ImageDraw, text: str, x: int, y: int, scale: int = 1,
              fill: RGB = (20, 20, 20)) -> None:
    """Draw `text` with its top-left corner at (x, y); unknown characters are a ValueError."""
    for i, ch in enumerate(text):
        glyph = _GLYPHS.get(ch)
        if glyph is None:
            raise ValueError(f"character {ch!r} is not in the bitmap font ({''.join(sorted(FONT_CHARS))})")
        gx = x + i * (GLYPH_W + 1) * scale
        for r, row in enumerate(glyph):
            for c, bit in enumerate(row):
                if bit == "1":
                    x0, y0 = gx + c * scale, y + r * scale
                    draw.rectangle((x0, y0, x0 + scale - 1, y0 + scale - 1), fill=fill)


def draw_shape(draw: ImageDraw.ImageDraw, shape: str, x0: int, y0: int, size: int, fill: RGB) -> None:
    """A filled shape whose bounding box is the `size` x `size` square at (x0, y0)."""
    x1, y1 = x0 + size - 1, y0 + size - 1
    if shape == "circle":
        draw.ellipse((x0, y0, x1, y1), fill=fill)
    elif shape == "square":
        draw.rectangle((x0, y0, x1, y1), fill=fill)
    elif shape == "triangle":
        draw.polygon([(x0, y1), (x1, y1), ((x0 + x1) / 2, y0)], fill=fill)
    elif shape == "cross":
        t = max(2, size // 3)  # arm thickness
        a = (size - t) // 2
        draw.rectangle((x0, y0 + a, x1, y0 + a + t - 1), fill=fill)
        draw.rectangle((x0 + a, y0, x0 + a + t - 1, y1), fill=fill)
    else:
        raise ValueError(f"unknown shape {shape!r}")
