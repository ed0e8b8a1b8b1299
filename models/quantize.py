"""Weight quantisation of the VLM (vision tower + language model Linear layers) for faster inference.

Methods (``QUANTIZATIONS``):

* ``int8_weight_only``: int8 weights, activations in the model dtype (torchao); the safe GPU default.
* ``int8_dynamic``: int8 weights and dynamically quantised int8 activations. torchao when it imports,
  otherwise ``torch.ao.quantization.quantize_dynamic`` (CPU, float32 models only; deprecated upstream
  but still shipped with torch, so the option works without an extra package).
* ``int4_weight_only``: 4-bit grouped weights (torchao; CUDA with bfloat16 weights).

Quantise after merging LoRA (``AsyncVLAPolicy.merge_lora_for_inference``): adapters wrap the Linear
layers and would be left in float. The LM head is never quantised (feature extraction does not run it).
"""

from __future__ import annotations

import importlib.util
import warnings

import torch
from torch import nn

QUANTIZATIONS = ("none", "int8_weight_only", "int8_dynamic", "int4_weight_only")
BACKENDS = ("auto", "torchao", "torch.ao")


class QuantizationError(RuntimeError):
    """The requested quantisation cannot run here (missing library, wrong device or dtype)."""


def torchao_available() -> bool:
    """Tell whether torchao imports (it is optional; see the module docstring)."""
    if importlib.util.find_spec("torchao") is None:
        return False
    try:
        import torchao.quantization  # noqa: F401
    except Exception:  # a torchao built for another torch can fail at import; treat it as absent
        return False
    return True


def _quantization_target(model: nn.Module) -> nn.Module:
    """The part that runs for features: ``model.model`` (vision + LM) of a ``...ForConditionalGeneration``."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return getattr(base, "model", base)


def resolve_backend(method: str, backend: str = "auto", device_type: str = "cuda") -> str:
    """Backend that will run ``method``.

    ``auto``: ``torch.ao`` for ``int8_dynamic`` on CPU (its fbgemm kernels were ~100x faster than torchao's
    CPU path on a small Qwen2.5-VL here), otherwise torchao when available, else ``torch.ao``.
    """
    if method not in QUANTIZATIONS:
        raise ValueError(f"quantization must be one of {QUANTIZATIONS}, got {method!r}")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if method == "none":
        return "none"
    if backend == "auto":
        cpu_dynamic = method == "int8_dynamic" and device_type == "cpu"
        backend = "torchao" if torchao_available() and not cpu_dynamic else "torch.ao"
    if backend == "torchao" and not torchao_available():
        raise QuantizationError(
            f"quantization {method!r} with backend 'torchao' needs torchao (pip install torchao)"
        )
    if backend == "torch.ao" and method != "int8_dynamic":
        raise QuantizationError(
            f"quantization {method!r} needs torchao (pip install torchao); without it only "
            "'int8_dynamic' is available (torch.ao, CPU, float32)"
        )
    return backend


def quantize_vlm(model: nn.Module, method: str, backend: str = "auto") -> str:
    """Quantise the vision tower and language model Linear layers in place; return the backend used."""
    target = _quantization_target(model)
    chosen = resolve_backend(method, backend, next(target.parameters()).device.type)
    if chosen == "none":
        return chosen
    if chosen == "torchao":
        from torchao.quantization import (
            Int4WeightOnlyConfig,
            Int8DynamicActivationInt8WeightConfig,
            Int8WeightOnlyConfig,
            quantize_,
        )

        configs = {
            "int8_weight_only": Int8WeightOnlyConfig,
            "int8_dynamic": Int8DynamicActivationInt8WeightConfig,
            "int4_weight_only": Int4WeightOnlyConfig,
        }
        quantize_(target, configs[method]())
        return chosen
    parameter = next(target.parameters())
    if parameter.device.type != "cpu" or parameter.dtype != torch.float32:
        raise QuantizationError(
            "torch.ao int8_dynamic runs on CPU float32 models only; install torchao for "
            f"{parameter.device.type}/{parameter.dtype}"
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao eager quantisation warns that it is deprecated
        torch.ao.quantization.quantize_dynamic(target, {nn.Linear}, dtype=torch.qint8, inplace=True)
    return chosen
