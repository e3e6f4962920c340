"""Shared fixtures for tests of lmmops.models: small PIL images, ICL items (tests/testutil.py).

Run: `python -m pytest tests/models -q`. Tiny models are built once per test module (module-scoped,
parametrised fixtures in the test modules) to keep the run short on 2 CPU cores.
"""

from __future__ import annotations

import pytest

from testutil import icl_items, solid


@pytest.fixture
def items_for():
    """items_for(family) -> (demos, query) suited to the family (testutil.icl_items: no images for text-only llama)."""
    return icl_items


@pytest.fixture
def make_image():
    """make_image(color, size=32) -> a solid RGB PIL image (testutil.solid)."""
    return solid
