"""Load a model and its processor from a spec string, never from the network.

Specs accepted by `load_model(spec)`:
  tiny:<family>                 a tiny random model of the family (`lmmops.models.tiny.build_tiny`);
  <dir>                         a `save_pretrained` checkpoint: config.json decides the class (its
                                `architectures`, else its `model_type`), which must be covered by an
                                adapter; the processor (tokenizer for text-only models) comes from the
                                same directory;
  <dir>/<name>.gguf             a GGUF file, through `AutoModelForCausalLM.from_pretrained(dir,
                                gguf_file=name)` (needs the gguf and accelerate packages); the tokenizer
                                comes from the GGUF metadata.
Registry and artifact URIs (`models:/<name>@<alias>`, `runs:/<run_id>/<path>`, anything with a `scheme:/`
prefix) are refused with a `ModelLoadError`: `lmmops.models` resolves no registry URIs, the caller downloads
them first (`lmmops.tracking.resolve_model_spec`, as the stages do) and passes the local directory.
Every hub access is disabled (`local_files_only=True`). Failures raise `ModelLoadError` (a ValueError)
naming the path or class and listing the supported families.

Run: `python -c "from lmmops.models import load_model; print(load_model('tiny:llava')[0].config)"`.

Departures from the references: the reference codes call `from_pretrained(hub_id)`; hub ids are not
accepted here on purpose (no network): download a checkpoint and pass its directory.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch
import transformers
from transformers import AutoConfig, AutoModelForCausalLM, AutoProcessor, AutoTokenizer, PreTrainedModel

from lmmops.models.adapters import adapter_class_for, supported_text
from lmmops.models.errors import ModelLoadError, UnsupportedModelError
from lmmops.models.processors import qwen_processor_from_dir
from lmmops.models.tiny import FAMILIES, build_tiny

TEXT_ONLY_FAMILIES = ("llama",)
_MODEL_TYPE_TO_CLASS = {
    "idefics": "IdeficsForVisionText2Text",
    "idefics2": "Idefics2ForConditionalGeneration",
    "idefics3": "Idefics3ForConditionalGeneration",
    "llava": "LlavaForConditionalGeneration",
    "qwen2_vl": "Qwen2VLForConditionalGeneration",
    "qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration",
    "llama": "LlamaForCausalLM",
}


_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+:/")


def _is_uri(spec: str) -> bool:
    """`models:/...`, `runs:/...`, `s3://...`: a scheme of 2+ characters (so `C:/dir` stays a path)."""
    return bool(_URI.match(spec))


def load_model(
    spec: str | Path,
    *,
    dtype: torch.dtype | None = None,
    device: str | torch.device = "cpu",
    attn_implementation: str | None = None,
) -> tuple[PreTrainedModel, Any]:
    """`(model, processor)` for a tiny family, a local checkpoint directory or a GGUF file.

    The model is in eval mode on `device`, in `dtype` when given (else as saved). For text-only models the
    processor is the tokenizer.
    """
    spec = str(spec)
    if spec.startswith("tiny:"):
        family = spec.removeprefix("tiny:")
        if family not in FAMILIES:
            raise ModelLoadError(f"unknown tiny family {family!r} in {spec!r}; supported families: {supported_text()}")
        model, processor = build_tiny(family, attn_implementation=attn_implementation)
        return _place(model, dtype, device), processor
    if _is_uri(spec):
        raise ModelLoadError(
            f"{spec!r} is a URI: load_model loads local checkpoints only; the caller resolves registry and "
            "artifact URIs to a local directory first (lmmops.tracking.resolve_model_spec, as the stages do)"
        )
    path = Path(spec).expanduser()
    if path.suffix == ".gguf":
        return _load_gguf(path, dtype=dtype, device=device, attn_implementation=attn_implementation)
    return _load_dir(path, dtype=dtype, device=device, attn_implementation=attn_implementation)


def _place(model: PreTrainedModel, dtype: torch.dtype | None, device: str | torch.device) -> PreTrainedModel:
    if dtype is not None:
        model = model.to(dtype=dtype)
    model = model.to(device)
    model.eval()
    return model


def _device_kwargs(device: str | torch.device) -> dict[str, Any]:
    """Load straight onto an accelerator (via accelerate's device_map) instead of through CPU memory."""
    return {} if str(device) == "cpu" else {"device_map": str(device)}


def _model_class_name(path: Path, config: Any) -> str:
    architectures = getattr(config, "architectures", None) or []
    if architectures:
        return str(architectures[0])
    model_type = getattr(config, "model_type", "")
    if model_type in _MODEL_TYPE_TO_CLASS:
        return _MODEL_TYPE_TO_CLASS[model_type]
    raise UnsupportedModelError(
        f"{path}: config.json names no architecture and model_type {model_type!r} is not covered; "
        f"supported families: {supported_text()}"
    )


def _load_dir(
    path: Path, *, dtype: torch.dtype | None, device: str | torch.device, attn_implementation: str | None
) -> tuple[PreTrainedModel, Any]:
    config_file = path / "config.json"
    if not path.is_dir() or not config_file.is_file():
        what = "directory" if not path.exists() else "config.json in directory"
        raise ModelLoadError(
            f"no model at {path}: missing {what}; expected tiny:<family>, a save_pretrained directory, "
            f"or a .gguf file; supported families: {supported_text()}"
        )
    try:
        json.loads(config_file.read_text())
        config = AutoConfig.from_pretrained(path, local_files_only=True)
    except (ValueError, OSError, KeyError, TypeError) as err:
        raise ModelLoadError(f"corrupt or unreadable config {config_file}: {err}") from err
    class_name = _model_class_name(path, config)
    try:
        adapter = adapter_class_for(class_name)
    except UnsupportedModelError as err:
        raise UnsupportedModelError(f"{path}: {err}") from err
    model_class = getattr(transformers, class_name, None)
    if model_class is None:
        raise UnsupportedModelError(f"{path}: transformers has no class {class_name}")
    processor = _load_processor(path, adapter.family)  # before the weights: fail fast on a partial checkpoint
    kwargs: dict[str, Any] = {"local_files_only": True, **_device_kwargs(device)}
    if dtype is not None:
        kwargs["dtype"] = dtype
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    try:
        model = model_class.from_pretrained(path, config=config, **kwargs)
    except Exception as err:  # missing or corrupt weights surface as many exception types
        raise ModelLoadError(f"cannot load {class_name} weights from {path}: {err}") from err
    return _place(model, None, device), processor


def _load_processor(path: Path, family: str) -> Any:
    try:
        if family in TEXT_ONLY_FAMILIES:
            return AutoTokenizer.from_pretrained(path, local_files_only=True)
        try:
            return AutoProcessor.from_pretrained(path, local_files_only=True)
        except (ImportError, AttributeError, TypeError, ValueError, OSError):
            if family not in ("qwen2_vl", "qwen2_5_vl"):
                raise
            return qwen_processor_from_dir(family, path)  # no torchvision: image-only processor
    except (OSError, ValueError, ImportError, AttributeError, TypeError) as err:
        raise ModelLoadError(f"cannot load the {family} processor from {path}: {err}") from err


def _load_gguf(
    path: Path, *, dtype: torch.dtype | None, device: str | torch.device, attn_implementation: str | None
) -> tuple[PreTrainedModel, Any]:
    if not path.is_file():
        raise ModelLoadError(f"no GGUF file at {path}; supported families: {supported_text()}")
    kwargs: dict[str, Any] = {"gguf_file": path.name, "local_files_only": True, **_device_kwargs(device)}
    if dtype is not None:
        kwargs["dtype"] = dtype
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    try:
        config = AutoConfig.from_pretrained(path.parent, gguf_file=path.name, local_files_only=True)
    except Exception as err:  # a broken GGUF header surfaces as many exception types
        raise ModelLoadError(f"corrupt or unreadable GGUF file {path}: {err}") from err
    architectures = getattr(config, "architectures", None) or [_MODEL_TYPE_TO_CLASS.get(config.model_type, "")]
    try:
        adapter_class_for(architectures[0] or config.model_type)
    except UnsupportedModelError as err:
        raise UnsupportedModelError(f"{path}: {err}") from err
    try:
        model = AutoModelForCausalLM.from_pretrained(path.parent, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name, local_files_only=True)
    except Exception as err:  # a broken GGUF file surfaces as many exception types
        raise ModelLoadError(f"cannot load GGUF model from {path}: {err}") from err
    return _place(model, None, device), tokenizer
