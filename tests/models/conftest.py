"""Shared fixtures for tests of lmmops.models: offline hub, small PIL images, ICL items.

Run: `python -m pytest tests/models -q`. Tiny models are built once per test module (module-scoped,
parametrised fixtures in the test modules) to keep the run short on 2 CPU cores.
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # nothing is downloaded, ever
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import pytest
from PIL import Image

from lmmops.models import ICLItem


def solid(color: str, size: int = 32) -> Image.Image:
    return Image.new("RGB", (size, size), color)


def icl_items(text_only: bool = False) -> tuple[list[ICLItem], ICLItem]:
    """Two demonstrations and a query (with answer), with 32x32 images unless text_only."""

    def image(color: str) -> Image.Image | None:
        return None if text_only else solid(color)

    demos = [
        ICLItem(image("red"), "What color is the shape?", "red"),
        ICLItem(image("blue"), "What color is this one?", "dark blue"),
    ]
    query = ICLItem(image("green"), "And the color here?", "green zebra")
    return demos, query


@pytest.fixture
def items_for():
    """items_for(family) -> (demos, query) suited to the family (no images for text-only llama)."""
    return lambda family: icl_items(text_only=family == "llama")


@pytest.fixture
def make_image():
    """make_image(color, size=32) -> a solid RGB PIL image."""
    return solid
