"""Fast VLM inference path: every step is optional, off by default, and measured on its own (bench/).

``FastPathConfig()`` is the plain path. Steps:

* ``dtype`` / ``attn_implementation``: bfloat16 weights; ``sdpa``, ``eager`` or ``flash_attention_2``
  (only when flash-attn imports) attention kernels.
* ``min_pixels`` / ``max_pixels``: bound the image resolution, and so the vision tokens per view.
* ``token_selection`` (``vision``/``pooled``) + ``trim_tail``: keep only the tokens the action expert uses.
  Trimming drops the prompt tokens after the last image before the forward: under causal attention no
  earlier position can see them, so the features are unchanged and the sequence is shorter.
* ``pad_to_multiple``: right-pad the sequence to a multiple of N tokens, so instructions of different
  lengths share a few static shapes (``torch.compile`` and CUDA graphs recompile on every new shape).
  Padding sits after every real token, so causal attention keeps the real tokens' features unchanged.
* ``vision_attention="batched"``: the vision tower's windowed attention as one SDPA call per layer
  instead of one per window (``models.vision_attention``; same features to float rounding).
* ``compile``: ``torch.compile`` the language model and vision tower (``dynamic=False``).
* ``quantization``: int8 / int4 weights (``models.quantize``).
* ``pin_memory`` / ``dedicated_stream`` (CUDA only): inputs are prepared on the CPU, pinned and copied
  asynchronously on a low-priority stream of the VLM's own, so the action expert's kernels (on a
  high-priority stream, ``action_stream()``) are not queued behind a whole VLM forward.

``prepare_model`` applies the model-changing steps in place; ``FastVLM`` runs one extraction with the
per-call steps. CUDA graphs for the action expert live in ``models.fast_graphs``.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from models.config import ATTN_IMPLEMENTATIONS, DTYPES, TOKEN_SELECTIONS, ConfigError, VLMConfig
from models.quantize import QUANTIZATIONS, quantize_vlm
from models.vision_attention import VISION_ATTENTION, use_batched_vision_attention
from models.vlm import (
    VLFeatureExtractor,
    VLFeatureMeta,
    resolve_attn_implementation,
    resolve_model_path,
    torch_dtype,
)

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


@dataclass
class FastPathConfig:
    """Switches of the fast path; ``None`` / ``False`` / ``0`` keep the model config's plain behaviour."""

    dtype: str | None = None
    attn_implementation: str | None = None
    min_pixels: int | None = None
    max_pixels: int | None = None
    token_selection: str | None = None
    trim_tail: bool = False
    pad_to_multiple: int = 0
    vision_attention: str = "per_window"
    compile: bool = False
    compile_mode: str = "default"
    compile_backend: str = "inductor"
    quantization: str = "none"
    pin_memory: bool = False
    dedicated_stream: bool = False
    cuda_graphs: bool = False

    def validate(self) -> FastPathConfig:
        """Raise ``ConfigError`` for a value outside its allowed set; return ``self``."""
        checks = (
            ("dtype", self.dtype, DTYPES),
            ("attn_implementation", self.attn_implementation, ATTN_IMPLEMENTATIONS),
            ("token_selection", self.token_selection, TOKEN_SELECTIONS),
            ("vision_attention", self.vision_attention, VISION_ATTENTION),
        )
        for name, value, allowed in checks:
            if value is not None and value not in allowed:
                raise ConfigError(f"fast_path.{name} must be one of {allowed}, got {value!r}")
        if self.quantization not in QUANTIZATIONS:
            raise ConfigError(
                f"fast_path.quantization must be one of {QUANTIZATIONS}, got {self.quantization!r}"
            )
        if self.compile_mode not in COMPILE_MODES:
            raise ConfigError(
                f"fast_path.compile_mode must be one of {COMPILE_MODES}, got {self.compile_mode!r}"
            )
        if self.pad_to_multiple < 0:
            raise ConfigError(f"fast_path.pad_to_multiple must be >= 0, got {self.pad_to_multiple}")
        return self

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (JSON/YAML)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FastPathConfig:
        """Build from a dict; unknown keys raise ``ConfigError`` naming them."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown fast_path key(s) {unknown}; known: {sorted(known)}")
        return cls(**data).validate()


def vlm_config_for(base: VLMConfig, fast: FastPathConfig) -> VLMConfig:
    """``base`` with the fast path's per-call overrides (dtype, attention, pixels, token selection)."""
    overrides = {
        name: getattr(fast, name)
        for name in ("dtype", "attn_implementation", "min_pixels", "max_pixels", "token_selection")
        if getattr(fast, name) is not None
    }
    config = dataclasses.replace(base, **overrides)
    config.validate()
    return config


def load_extractor(
    config: VLMConfig,
    device: str | torch.device = "cpu",
    random_weights: bool = False,
    seed: int = 0,
) -> VLFeatureExtractor:
    """Load ``config.model_name_or_path``, or build its architecture with random weights (no download).

    Random weights use ``config.architecture`` (e.g. the 3B numbers) or, for ``builtin:tiny``, the tiny
    architecture; latency does not depend on weight values.
    """
    if not random_weights:
        return VLFeatureExtractor.from_pretrained(config, device=device)
    from models.tiny_qwen import TINY_ARCHITECTURE, build_random_qwen2_5_vl

    architecture = config.architecture
    if architecture is None:
        if config.model_name_or_path != "builtin:tiny":
            raise ValueError("random weights need vlm.architecture in the model config (or builtin:tiny)")
        architecture = TINY_ARCHITECTURE
    model, processor, tokenizer = build_random_qwen2_5_vl(
        architecture,
        dtype=torch_dtype(config.dtype),
        device=device,
        seed=seed,
        min_pixels=config.min_pixels,
        max_pixels=config.max_pixels,
        attn_implementation=resolve_attn_implementation(config.attn_implementation, device),
    )
    image_processor = None
    if processor is None or config.processor_backend == "pil":
        from transformers import Qwen2VLImageProcessorPil

        image_processor = Qwen2VLImageProcessorPil(min_pixels=config.min_pixels, max_pixels=config.max_pixels)
    return VLFeatureExtractor(
        model, config, processor=processor, tokenizer=tokenizer, image_processor=image_processor
    )


def model_path_for(config: VLMConfig) -> str:
    """Resolved local model folder (``builtin:tiny`` -> the cached tiny build)."""
    return resolve_model_path(config.model_name_or_path)


def prepare_model(model: torch.nn.Module, fast: FastPathConfig, device: str | torch.device) -> dict[str, Any]:
    """Apply dtype, attention, quantisation and compile steps to ``model`` in place; return what was done."""
    fast.validate()
    done: dict[str, Any] = {}
    if fast.dtype is not None:
        model.to(torch_dtype(fast.dtype))
        done["dtype"] = fast.dtype
    if fast.attn_implementation is not None:
        attn = resolve_attn_implementation(fast.attn_implementation, device)
        model.set_attn_implementation(attn)
        done["attn_implementation"] = attn
    if fast.vision_attention == "batched":
        done["vision_attention_batched_layers"] = use_batched_vision_attention(model)
    if fast.quantization != "none":
        done["quantization_backend"] = quantize_vlm(model, fast.quantization)
    if fast.compile:
        compile_vlm(model, fast.compile_mode, fast.compile_backend)
        done["compile_mode"] = fast.compile_mode
    return done


def compile_vlm(model: torch.nn.Module, mode: str = "default", backend: str = "inductor") -> None:
    """``torch.compile`` the language model and the vision tower in place (static shapes).

    ``mode`` applies to inductor only; other backends (``aot_eager``, ``cudagraphs``) take none.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    inner = base.model
    options = {"mode": mode} if backend == "inductor" else {}
    inner.language_model = torch.compile(inner.language_model, backend=backend, dynamic=False, **options)
    inner.visual = torch.compile(inner.visual, backend=backend, dynamic=False, **options)


def trim_after_last_image(inputs: dict[str, torch.Tensor], image_token_id: int) -> dict[str, torch.Tensor]:
    """Drop every position after the last image token of any sample (the vision features do not see them)."""
    ids = inputs["input_ids"]
    is_image = ids == image_token_id
    if not bool(is_image.any()):
        return inputs
    positions = torch.arange(ids.shape[1], device=ids.device).expand_as(ids)
    cut = int(positions[is_image].max()) + 1
    trimmed = dict(inputs)
    for key in ("input_ids", "attention_mask", "mm_token_type_ids"):
        trimmed[key] = inputs[key][:, :cut]
    return trimmed


def pad_to_multiple(
    inputs: dict[str, torch.Tensor], multiple: int, pad_token_id: int
) -> dict[str, torch.Tensor]:
    """Right-pad the token tensors to a multiple of ``multiple`` (attention mask 0 on the padding)."""
    length = inputs["input_ids"].shape[1]
    extra = -length % multiple if multiple > 0 else 0
    if not extra:
        return inputs
    padded = dict(inputs)
    padded["input_ids"] = F.pad(inputs["input_ids"], (0, extra), value=pad_token_id)
    padded["attention_mask"] = F.pad(inputs["attention_mask"], (0, extra), value=0)
    padded["mm_token_type_ids"] = F.pad(inputs["mm_token_type_ids"], (0, extra), value=0)
    return padded


def action_stream(device: str | torch.device) -> torch.cuda.Stream:
    """A highest-priority CUDA stream for the action expert (its kernels go ahead of queued VLM work)."""
    # Out-of-range priorities map to the nearest valid one; lower numbers are higher priorities.
    return torch.cuda.Stream(device=device, priority=-100)


class FastVLM:
    """Run feature extraction with the per-call fast-path steps around an (already prepared) extractor."""

    def __init__(self, extractor: VLFeatureExtractor, fast: FastPathConfig | None = None):
        self.fast = (fast or FastPathConfig()).validate()
        self.extractor = VLFeatureExtractor(
            extractor.hf_model,
            vlm_config_for(extractor.config, self.fast),
            processor=extractor.processor,
            tokenizer=extractor.tokenizer,
            image_processor=extractor.image_processor,
        )
        device = self.extractor.device
        self.cuda = device.type == "cuda"
        self.stream = None
        if self.cuda and self.fast.dedicated_stream:
            self.stream = torch.cuda.Stream(device=device, priority=0)  # 0 is the lowest priority
        pad = self.extractor.tokenizer.pad_token_id
        self.pad_token_id = int(pad if pad is not None else 0)
        self.last_sequence_length = 0

    @property
    def config(self) -> VLMConfig:
        """The effective VLM config (model config + overrides)."""
        return self.extractor.config

    def model_inputs(self, images: Sequence[np.ndarray], instruction: str) -> dict[str, torch.Tensor]:
        """CPU model inputs for one sample after trimming and padding."""
        ex = self.extractor
        inputs = ex.prepare_inputs([images], [instruction], device="cpu")
        if self.fast.trim_tail and self.config.token_selection != "all":
            inputs = trim_after_last_image(inputs, ex.image_token_id)
        if self.fast.pad_to_multiple:
            inputs = pad_to_multiple(inputs, self.fast.pad_to_multiple, self.pad_token_id)
        return inputs

    @torch.no_grad()
    def extract(self, images: Sequence[np.ndarray], instruction: str) -> tuple[torch.Tensor, VLFeatureMeta]:
        """One sample -> (CPU ``[T, Hvl]`` features in ``feature_dtype``, metadata), as ``extract``."""
        start = time.perf_counter()
        ex = self.extractor
        inputs = self.model_inputs(images, instruction)
        self.last_sequence_length = int(inputs["input_ids"].shape[1])
        dtype = torch_dtype(self.config.feature_dtype)
        if self.cuda:
            features = self._extract_cuda(inputs, dtype)
        else:
            features = ex.forward_features(inputs)[0].to(dtype)
        grid = inputs["image_grid_thw"]
        meta = VLFeatureMeta(
            num_tokens=int(features.shape[0]),
            tokens_per_view=ex.tokens_per_view(grid),
            image_grid_thw=grid.tolist(),
            hidden_size=int(features.shape[1]),
            dtype=self.config.feature_dtype,
            token_selection=self.config.token_selection,
            inference_time_s=time.perf_counter() - start,
        )
        return features, meta

    def _extract_cuda(self, inputs: dict[str, torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
        pin = self.fast.pin_memory
        device = self.extractor.device
        stream = self.stream if self.stream is not None else torch.cuda.current_stream(device)
        if pin:
            inputs = {key: value.pin_memory() for key, value in inputs.items()}
        with torch.cuda.stream(stream):
            on_device = {key: value.to(device, non_blocking=pin) for key, value in inputs.items()}
            features = self.extractor.forward_features(on_device)[0].to(dtype)
            out = torch.empty(features.shape, dtype=dtype, pin_memory=pin)
            out.copy_(features, non_blocking=pin)
        stream.synchronize()  # blocks this thread only; other streams keep running
        return out


def feature_difference(reference: torch.Tensor, other: torch.Tensor) -> dict[str, float]:
    """How far ``other`` is from ``reference`` (same ``[T, H]`` shape): cosine per token, relative error."""
    if reference.shape != other.shape:
        raise ValueError(f"feature shapes differ: {list(reference.shape)} vs {list(other.shape)}")
    ref = reference.double()
    oth = other.double()
    cosine = F.cosine_similarity(ref, oth, dim=-1)
    return {
        "cosine_min": float(cosine.min()),
        "cosine_mean": float(cosine.mean()),
        "relative_error": float((ref - oth).norm() / ref.norm().clamp_min(1e-12)),
        "max_abs_error": float((ref - oth).abs().max()),
    }
