"""Processor construction that works with or without torchvision.

Qwen2-VL and Qwen2.5-VL processors take a video processor, and in transformers 5 every video processor
needs torchvision; `ProcessorMixin` refuses `video_processor=None`. lmmops only feeds images, so where
torchvision is missing it uses `ImageOnlyQwen2VLProcessor` / `ImageOnlyQwen2_5_VLProcessor`: the real
processor classes without the video attribute. Their `__name__` is the real class name, so what
`save_pretrained` writes (`processor_class`) is the standard one and loads anywhere. Where torchvision is
present the real processor gets a real video processor.

Run: imported by `lmmops.models.tiny` and `lmmops.models.loading`.

Departure from the reference: none in behaviour for images; the image-only classes do not take videos.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from transformers import (
    AutoImageProcessor,
    AutoTokenizer,
    ProcessorMixin,
    Qwen2_5_VLProcessor,
    Qwen2VLProcessor,
)
from transformers.utils import is_torchvision_available


class ImageOnlyQwen2VLProcessor(Qwen2VLProcessor):
    """`Qwen2VLProcessor` without a video processor (no torchvision needed)."""

    def __init__(self, image_processor: Any = None, tokenizer: Any = None, chat_template: Any = None, **kwargs: Any):
        super().__init__(image_processor, tokenizer, None, chat_template=chat_template, **kwargs)


class ImageOnlyQwen2_5_VLProcessor(Qwen2_5_VLProcessor):
    """`Qwen2_5_VLProcessor` without a video processor (no torchvision needed)."""

    def __init__(self, image_processor: Any = None, tokenizer: Any = None, chat_template: Any = None, **kwargs: Any):
        super().__init__(image_processor, tokenizer, None, chat_template=chat_template, **kwargs)


# Saved processor configs name the standard classes.
ImageOnlyQwen2VLProcessor.__name__ = "Qwen2VLProcessor"
ImageOnlyQwen2_5_VLProcessor.__name__ = "Qwen2_5_VLProcessor"

_QWEN_PROCESSORS: dict[str, tuple[type[ProcessorMixin], type[ProcessorMixin]]] = {
    "qwen2_vl": (Qwen2VLProcessor, ImageOnlyQwen2VLProcessor),
    "qwen2_5_vl": (Qwen2_5_VLProcessor, ImageOnlyQwen2_5_VLProcessor),
}


def qwen_processor(family: str, image_processor: Any, tokenizer: Any) -> ProcessorMixin:
    """The Qwen processor of `family` ("qwen2_vl" or "qwen2_5_vl") over the given parts."""
    full, image_only = _QWEN_PROCESSORS[family]
    if not is_torchvision_available():
        return image_only(image_processor=image_processor, tokenizer=tokenizer)
    from transformers import Qwen2VLVideoProcessor  # needs torchvision

    video_processor = Qwen2VLVideoProcessor(
        patch_size=image_processor.patch_size,
        temporal_patch_size=image_processor.temporal_patch_size,
        merge_size=image_processor.merge_size,
    )
    return full(image_processor=image_processor, tokenizer=tokenizer, video_processor=video_processor)


def qwen_processor_from_dir(family: str, path: str | Path) -> ProcessorMixin:
    """Load a saved Qwen processor image-only (used where AutoProcessor needs torchvision and it is missing)."""
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    image_processor = AutoImageProcessor.from_pretrained(path, local_files_only=True)
    return _QWEN_PROCESSORS[family][1](image_processor=image_processor, tokenizer=tokenizer)
