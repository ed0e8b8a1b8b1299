"""peft LoRA on the VLM's language model: apply, freeze/unfreeze, report, hash, merge, save/load.

Targets are matched by a regex anchored on ``language_model`` so the vision tower (whose attention uses
``qkv``/``proj`` anyway) is never adapted. peft injects the LoRA layers into the HF model in place, so code
holding the ``Qwen2_5_VLForConditionalGeneration`` keeps working and runs the adapters.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import torch
from torch import nn

from models.config import LoRAConfig

ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
NO_LORA_HASH = "none"


def target_regex(target_modules: list[str]) -> str:
    """Build the peft ``target_modules`` regex matching the language model's attention projections only."""
    names = "|".join(re.escape(name) for name in target_modules)
    return rf".*language_model\.layers\.\d+\.self_attn\.({names})"


def apply_lora(hf_model: nn.Module, config: LoRAConfig):
    """Wrap ``hf_model`` with fresh LoRA adapters (B = 0, so the model's outputs are unchanged)."""
    from peft import LoraConfig, get_peft_model

    lora_config = LoraConfig(
        r=config.r,
        lora_alpha=config.alpha,
        lora_dropout=config.dropout,
        target_modules=target_regex(config.target_modules),
        bias="none",
    )
    return get_peft_model(hf_model, lora_config)


def is_lora_parameter(name: str) -> bool:
    """Tell whether ``name`` is one of peft's LoRA tensors (``lora_A``/``lora_B``/``lora_embedding_*``)."""
    return ".lora_" in name or name.startswith("lora_")


def lora_parameters(model: nn.Module) -> list[nn.Parameter]:
    """All LoRA parameters of ``model``."""
    return [p for n, p in model.named_parameters() if is_lora_parameter(n)]


def freeze_base(model: nn.Module) -> None:
    """``requires_grad=False`` on every non-LoRA parameter of ``model``."""
    for name, param in model.named_parameters():
        if not is_lora_parameter(name):
            param.requires_grad_(False)


def set_lora_trainable(model: nn.Module, trainable: bool) -> None:
    """Switch the LoRA parameters of ``model`` on or off for training."""
    for param in lora_parameters(model):
        param.requires_grad_(trainable)


def freeze(module: nn.Module) -> None:
    """``requires_grad=False`` on every parameter of ``module``."""
    module.requires_grad_(False)


def trainable_parameter_report(groups: dict[str, nn.Module | None]) -> dict[str, dict[str, int | float]]:
    """Per named group (and ``total``): parameter count, trainable count and trainable percentage."""
    report: dict[str, dict[str, int | float]] = {}
    total = trainable = 0
    seen: set[int] = set()
    for name, module in groups.items():
        if module is None:
            continue
        params = [p for p in module.parameters() if id(p) not in seen]
        seen.update(id(p) for p in params)
        count = sum(p.numel() for p in params)
        train = sum(p.numel() for p in params if p.requires_grad)
        report[name] = {"params": count, "trainable": train, "percent": 100.0 * train / max(count, 1)}
        total += count
        trainable += train
    report["total"] = {"params": total, "trainable": trainable, "percent": 100.0 * trainable / max(total, 1)}
    return report


def lora_state_dict(peft_model) -> dict[str, torch.Tensor]:
    """Adapter tensors under the names peft saves them with (adapter name stripped)."""
    from peft import get_peft_model_state_dict

    return get_peft_model_state_dict(peft_model)


def hash_lora_tensors(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 (16 hex) over sorted names, dtypes, shapes and bytes; ``none`` when empty or a no-op.

    An adapter whose ``lora_B`` tensors are all zero computes exactly the base model, so it hashes as
    ``none``: features from a freshly initialised adapter are interchangeable with base-VLM features.
    """
    if not tensors:
        return NO_LORA_HASH
    b_tensors = [t for n, t in tensors.items() if "lora_B" in n]
    if b_tensors and all(not bool(t.detach().any()) for t in b_tensors):
        return NO_LORA_HASH
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().cpu().contiguous()
        digest.update(name.encode())
        digest.update(str(tensor.dtype).encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()[:16]


def save_lora_adapter(peft_model, directory: str | os.PathLike) -> Path:
    """Write only the adapter (``adapter_config.json`` + ``adapter_model.safetensors``), never the base."""
    out = Path(directory)
    peft_model.save_pretrained(out, safe_serialization=True)
    return out


def load_lora_adapter(hf_model: nn.Module, directory: str | os.PathLike, trainable: bool = False):
    """Attach a saved adapter to ``hf_model`` (a plain HF model) and return the ``PeftModel``."""
    from peft import PeftModel

    directory = Path(directory)
    for name in (ADAPTER_CONFIG, ADAPTER_WEIGHTS):
        if not (directory / name).is_file():
            raise FileNotFoundError(f"LoRA adapter file missing: {directory / name}")
    return PeftModel.from_pretrained(hf_model, str(directory), is_trainable=trainable)


def read_adapter_tensors(directory: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read the saved adapter tensors (safetensors), without any model."""
    from safetensors.torch import load_file

    return load_file(str(Path(directory) / ADAPTER_WEIGHTS))


def merge_lora(peft_model):
    """Fold the adapters into the base weights for inference; returns the plain HF model."""
    return peft_model.merge_and_unload()
