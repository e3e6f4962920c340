"""Errors raised by lmmops.models (all ValueError subclasses, so callers can catch them broadly).

Run: imported by the other modules of lmmops.models. No departures: these are plain exception types.
"""

from __future__ import annotations


class ModelLoadError(ValueError):
    """A model spec could not be loaded: missing or corrupt path, or a class no adapter covers."""


class UnsupportedModelError(ModelLoadError):
    """The model's class is not covered by any adapter (the message lists the supported families)."""


class PromptAlignmentError(ValueError):
    """The token spans of a prompt could not be located exactly in the processed input ids."""
