r"""Vision-language feature extractor on Qwen2.5-VL (transformers): N camera views + instruction -> [T, Hvl].

The prompt puts the instruction *before* the images, so that under the language model's causal attention
every vision token has already seen the task text (vision tokens placed first would be instruction-blind).
Layout, identical to what the Qwen chat template produces for ``[text, image * N]``::

    <|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n{prefix}{instruction}\n
    <|vision_start|><|image_pad|>*n_1<|vision_end|> ... <|vision_start|><|image_pad|>*n_N<|vision_end|>
    <|im_end|>\n<|im_start|>assistant\n

Features are the language model's hidden states (``feature_layer``; -1 = final normed layer, no LM head):
``token_selection="vision"`` keeps the image-token positions (views in order, each in merged-patch raster
order), ``"all"`` keeps every real token, ``"pooled"`` average-pools each view's vision tokens to a
``pooled_grid x pooled_grid`` grid. With torchvision the real ``Qwen2_5_VLProcessor`` (``AutoProcessor``)
prepares the inputs; without it ``Qwen2VLImageProcessorPil`` + the tokenizer are used and the image tokens
are expanded by hand (same ids, checked in the tests).
"""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from models.config import VLMConfig

SYSTEM_PROMPT = "You are a helpful assistant."
TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def torch_dtype(name: str) -> torch.dtype:
    """``"bfloat16"`` -> ``torch.bfloat16`` (only the three names in ``models.config.DTYPES``)."""
    try:
        return TORCH_DTYPES[name]
    except KeyError:
        raise ValueError(f"unknown dtype {name!r}; expected one of {sorted(TORCH_DTYPES)}") from None


def resolve_attn_implementation(requested: str, device: str | torch.device = "cpu") -> str:
    """``auto`` -> ``flash_attention_2`` when flash-attn imports and the device is CUDA, else ``sdpa``."""
    if requested != "auto":
        return requested
    if torch.device(device).type == "cuda" and importlib.util.find_spec("flash_attn") is not None:
        try:
            import flash_attn  # noqa: F401

            return "flash_attention_2"
        except Exception:  # an installed but broken flash-attn (ABI mismatch) must not take the node down
            pass
    return "sdpa"


BUILTIN_DIR = Path(__file__).resolve().parent / "builtin"
"""Models shipped inside the package (``builtin:<name>`` -> ``models/builtin/<name>``)."""


def resolve_model_path(name_or_path: str) -> str:
    """Map ``builtin:`` names to local folders; anything else is returned unchanged.

    ``builtin:tiny`` is the random-weight test model, built once into the cache; ``builtin:<name>`` is a
    model shipped in ``models/builtin/<name>`` (``builtin:tiny-sim``: the Stage 0 embedded default).
    """
    if name_or_path == "builtin:tiny":
        from models.tiny_qwen import cached_tiny_qwen2_5_vl

        return str(cached_tiny_qwen2_5_vl())
    if name_or_path.startswith("builtin:"):
        folder = BUILTIN_DIR / name_or_path.removeprefix("builtin:")
        if not (folder / "config.json").is_file():
            shipped = (
                sorted(p.name for p in BUILTIN_DIR.iterdir() if p.is_dir()) if BUILTIN_DIR.is_dir() else []
            )
            raise FileNotFoundError(
                f"no built-in model {name_or_path!r} (looked in {folder}); built-in models: "
                f"builtin:tiny, " + ", ".join(f"builtin:{name}" for name in shipped)
            )
        return str(folder)
    return name_or_path


def torchvision_available() -> bool:
    """Tell whether torchvision imports (transformers then builds the real ``Qwen2_5_VLProcessor``)."""
    return importlib.util.find_spec("torchvision") is not None


@dataclass
class VLFeatureMeta:
    """What the VLFeatures message needs besides the tensor."""

    num_tokens: int
    tokens_per_view: list[int]
    image_grid_thw: list[list[int]]
    hidden_size: int
    dtype: str
    token_selection: str
    inference_time_s: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


def validate_views(images: Sequence[np.ndarray], num_views: int) -> None:
    """Raise ``ValueError`` unless ``images`` is ``num_views`` HxWx3 uint8 arrays."""
    if isinstance(images, np.ndarray) or not isinstance(images, Sequence):
        raise ValueError(
            f"images must be a sequence of {num_views} HxWx3 uint8 arrays, got {type(images).__name__}"
        )
    if len(images) != num_views:
        raise ValueError(f"expected {num_views} camera views, got {len(images)}")
    for index, image in enumerate(images):
        if not isinstance(image, np.ndarray):
            raise ValueError(f"view {index}: expected a numpy array, got {type(image).__name__}")
        if image.dtype != np.uint8:
            raise ValueError(f"view {index}: expected dtype uint8, got {image.dtype}")
        if image.ndim != 3 or image.shape[2] != 3 or image.shape[0] < 1 or image.shape[1] < 1:
            raise ValueError(f"view {index}: expected shape HxWx3 (RGB), got {image.shape}")


class VLFeatureExtractor:
    """Qwen2.5-VL wrapped as a feature function; owns the HF model, tokenizer and image processor.

    ``hf_model`` is the ``Qwen2_5_VLForConditionalGeneration`` (possibly with peft LoRA layers injected in
    place); only its ``.model`` (vision tower + language model, no LM head) runs.
    """

    def __init__(self, hf_model, config: VLMConfig, processor=None, tokenizer=None, image_processor=None):
        self.hf_model = hf_model
        self.config = config
        self.processor = processor
        self.tokenizer = tokenizer if tokenizer is not None else processor.tokenizer
        self.image_processor = image_processor if image_processor is not None else processor.image_processor
        self.tokenizer.padding_side = "right"  # pads after real tokens: causal attention keeps them clean
        self.image_token = "<|image_pad|>"
        self.image_token_id = int(hf_model.config.image_token_id)
        tok_id = self.tokenizer.convert_tokens_to_ids(self.image_token)
        if tok_id != self.image_token_id:
            raise ValueError(
                f"tokenizer's {self.image_token} id {tok_id} != model image_token_id {self.image_token_id}"
            )
        self.merge_size = int(hf_model.config.vision_config.spatial_merge_size)
        text_hidden = int(hf_model.config.text_config.hidden_size)
        if text_hidden != config.hidden_size:
            raise ValueError(
                f"vlm.hidden_size is {config.hidden_size} but the loaded model has {text_hidden}"
            )

    # ----------------------------------------------------------------------------------------- loading
    @classmethod
    def from_pretrained(cls, config: VLMConfig, device: str | torch.device = "cpu") -> VLFeatureExtractor:
        """Load model + processor from ``config.model_name_or_path`` (local only unless configured)."""
        from transformers import Qwen2_5_VLForConditionalGeneration

        path = resolve_model_path(config.model_name_or_path)
        attn = resolve_attn_implementation(config.attn_implementation, device)
        model = Qwen2_5_VLForConditionalGeneration.from_pretrained(
            path,
            dtype=torch_dtype(config.dtype),
            attn_implementation=attn,
            local_files_only=config.local_files_only,
        )
        model.to(device).eval()
        processor, tokenizer, image_processor = load_processor(path, config)
        return cls(model, config, processor=processor, tokenizer=tokenizer, image_processor=image_processor)

    @property
    def device(self) -> torch.device:
        """Device of the model's parameters."""
        return next(self.hf_model.parameters()).device

    @property
    def use_processor(self) -> bool:
        """True when the full ``Qwen2_5_VLProcessor`` prepares inputs (torchvision path)."""
        return self.processor is not None and self.config.processor_backend != "pil"

    # ------------------------------------------------------------------------------------------ inputs
    def prompt(self, instruction: str, image_token_counts: Sequence[int] | None = None) -> str:
        """Chat-formatted prompt; one ``<|image_pad|>`` per view, or ``counts[i]`` of them when given."""
        counts = image_token_counts or [1] * self.config.num_views
        vision = "".join(f"<|vision_start|>{self.image_token * n}<|vision_end|>" for n in counts)
        return (
            f"<|im_start|>system\n{SYSTEM_PROMPT}<|im_end|>\n<|im_start|>user\n"
            f"{self.config.prompt_prefix}{instruction}\n{vision}<|im_end|>\n<|im_start|>assistant\n"
        )

    def prepare_inputs(
        self,
        image_groups: Sequence[Sequence[np.ndarray]],
        instructions: Sequence[str],
        device: str | torch.device | None = None,
    ) -> dict:
        """Validate and tokenize G samples (each ``num_views`` images + one instruction) -> model inputs.

        Tensors go to ``device`` (default: the model's); ``"cpu"`` lets a caller pin them and copy
        asynchronously itself (``models.fast_path``).
        """
        if len(image_groups) != len(instructions):
            raise ValueError(f"{len(image_groups)} image groups but {len(instructions)} instructions")
        if not image_groups:
            raise ValueError("need at least one sample")
        for images in image_groups:
            validate_views(images, self.config.num_views)
        for instruction in instructions:
            if not isinstance(instruction, str):
                raise ValueError(f"instruction must be a str, got {type(instruction).__name__}")
        flat = [np.ascontiguousarray(image) for images in image_groups for image in images]
        size = {"shortest_edge": self.config.min_pixels, "longest_edge": self.config.max_pixels}
        if self.use_processor:
            texts = [self.prompt(instruction) for instruction in instructions]
            inputs = self.processor(
                text=texts,
                images=flat,
                size=size,
                padding=True,
                return_tensors="pt",
                input_data_format="channels_last",
            )
        else:
            vision = self.image_processor(
                images=flat, size=size, return_tensors="pt", input_data_format="channels_last"
            )
            per_image = (vision["image_grid_thw"].prod(-1) // self.merge_size**2).tolist()
            views = self.config.num_views
            texts = [
                self.prompt(instruction, per_image[g * views : (g + 1) * views])
                for g, instruction in enumerate(instructions)
            ]
            inputs = dict(self.tokenizer(texts, padding=True, return_tensors="pt"))
            inputs["mm_token_type_ids"] = (inputs["input_ids"] == self.image_token_id).long()
            inputs.update(vision)
        keep = ("input_ids", "attention_mask", "mm_token_type_ids", "pixel_values", "image_grid_thw")
        target = self.device if device is None else device
        return {key: inputs[key].to(target) for key in keep}

    # -------------------------------------------------------------------------------------- features
    def forward_features(self, inputs: dict) -> list[torch.Tensor]:
        """Run vision tower + language model; return one ``[T_g, Hvl]`` tensor per sample (grad allowed)."""
        want_layers = self.config.feature_layer != -1
        out = self.hf_model.model(
            **inputs, use_cache=False, output_hidden_states=want_layers, return_dict=True
        )
        hidden = out.hidden_states[self.config.feature_layer] if want_layers else out.last_hidden_state
        return self._select_tokens(hidden, inputs)

    def _select_tokens(self, hidden: torch.Tensor, inputs: dict) -> list[torch.Tensor]:
        """Per sample, the feature tokens of ``token_selection`` from the hidden states ``[G, S, H]``."""
        grid = inputs["image_grid_thw"]
        views = self.config.num_views
        features = []
        for g in range(hidden.shape[0]):
            ids = inputs["input_ids"][g]
            if self.config.token_selection == "all":
                features.append(hidden[g][inputs["attention_mask"][g].bool()])
                continue
            vision = hidden[g][ids == self.image_token_id]
            if self.config.token_selection == "vision":
                features.append(vision)
            else:
                features.append(self._pool(vision, grid[g * views : (g + 1) * views]))
        return features

    def forward_features_shared(
        self,
        image_groups: Sequence[Sequence[np.ndarray]],
        instructions_per_group: Sequence[Sequence[str]],
    ) -> list[torch.Tensor]:
        """Features of every (group, instruction) pair, running the vision tower once per group.

        The result equals ``forward_features`` on the groups repeated once per instruction (same prompts,
        same tokens), in the order group 0 x its instructions, group 1 x ..., with gradients. Training
        pairs one frame with several instructions (Stage 0); the vision tower, which never sees the text,
        then runs once per frame instead of once per pair.
        """
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        if len(image_groups) != len(instructions_per_group):
            raise ValueError(f"{len(image_groups)} image groups but {len(instructions_per_group)} lists")
        for images in image_groups:
            validate_views(images, self.config.num_views)
        views = self.config.num_views
        flat = [np.ascontiguousarray(image) for images in image_groups for image in images]
        size = {"shortest_edge": self.config.min_pixels, "longest_edge": self.config.max_pixels}
        vision = self.image_processor(
            images=flat, size=size, return_tensors="pt", input_data_format="channels_last"
        )
        per_image = (vision["image_grid_thw"].prod(-1) // self.merge_size**2).tolist()
        texts, image_index = [], []
        for g, instructions in enumerate(instructions_per_group):
            for instruction in instructions:
                texts.append(self.prompt(instruction, per_image[g * views : (g + 1) * views]))
                image_index.extend(range(g * views, (g + 1) * views))
        if not texts:
            raise ValueError("need at least one instruction")
        device = self.device
        tokens = self.tokenizer(texts, padding=True, return_tensors="pt")
        grid = vision["image_grid_thw"].to(device)
        model = self.hf_model.model
        encoded = model.get_image_features(vision["pixel_values"].to(device), grid, return_dict=True)
        pooled = tuple(encoded.pooler_output[i] for i in image_index)
        inputs = {
            "input_ids": tokens["input_ids"].to(device),
            "attention_mask": tokens["attention_mask"].to(device),
            "image_grid_thw": grid[torch.as_tensor(image_index, device=device)],
        }
        inputs["mm_token_type_ids"] = (inputs["input_ids"] == self.image_token_id).long()
        want_layers = self.config.feature_layer != -1
        out = model(
            **inputs,
            mm_encoder_outputs={"image": BaseModelOutputWithPooling(pooler_output=pooled)},
            use_cache=False,
            output_hidden_states=want_layers,
            return_dict=True,
        )
        hidden = out.hidden_states[self.config.feature_layer] if want_layers else out.last_hidden_state
        return self._select_tokens(hidden, inputs)

    def _pool(self, vision: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
        """Average-pool each view's merged-patch grid to ``pooled_grid x pooled_grid`` tokens."""
        pooled, start = [], 0
        side = self.config.pooled_grid
        for t, h, w in grid.tolist():
            gh, gw = h // self.merge_size, w // self.merge_size
            count = t * gh * gw
            tokens = vision[start : start + count].reshape(t * gh, gw, -1).permute(2, 0, 1)
            start += count
            pooled.append(F.adaptive_avg_pool2d(tokens.float(), side).flatten(1).T.to(vision.dtype))
        return torch.cat(pooled, dim=0)

    def tokens_per_view(self, grid: torch.Tensor) -> list[int]:
        """Feature tokens each view contributes under the configured selection (not counting text)."""
        if self.config.token_selection == "pooled":
            return [self.config.pooled_grid**2] * grid.shape[0]
        return (grid.prod(-1) // self.merge_size**2).tolist()

    def to_feature_dtype(self, features: torch.Tensor) -> torch.Tensor:
        """Cast to the transport dtype (``feature_dtype``) and back to float32, keeping the graph."""
        return features.to(torch_dtype(self.config.feature_dtype)).float()

    @torch.no_grad()  # not inference_mode: its tensors cannot be versioned or used in autograd later
    def extract_batch(
        self, image_groups: Sequence[Sequence[np.ndarray]], instructions: Sequence[str]
    ) -> tuple[list[torch.Tensor], list[VLFeatureMeta]]:
        """G samples in one batched forward -> (CPU tensors ``[T_g, Hvl]`` in ``feature_dtype``, metadata)."""
        start = time.perf_counter()
        inputs = self.prepare_inputs(image_groups, instructions)
        features = self.forward_features(inputs)
        dtype = torch_dtype(self.config.feature_dtype)
        outs = [f.to(dtype).cpu() for f in features]
        elapsed = time.perf_counter() - start
        views = self.config.num_views
        metas = []
        for g, feature in enumerate(outs):
            grid = inputs["image_grid_thw"][g * views : (g + 1) * views]
            metas.append(
                VLFeatureMeta(
                    num_tokens=int(feature.shape[0]),
                    tokens_per_view=self.tokens_per_view(grid),
                    image_grid_thw=grid.tolist(),
                    hidden_size=int(feature.shape[1]),
                    dtype=self.config.feature_dtype,
                    token_selection=self.config.token_selection,
                    inference_time_s=elapsed / len(outs),
                )
            )
        return outs, metas

    def extract(self, images: Sequence[np.ndarray], instruction: str) -> tuple[torch.Tensor, VLFeatureMeta]:
        """Extract one sample: ``num_views`` HxWx3 uint8 RGB views + instruction -> (``[T, Hvl]``, meta)."""
        features, metas = self.extract_batch([images], [instruction])
        return features[0], metas[0]


def load_processor(path: str, config: VLMConfig):
    """``(processor | None, tokenizer, image_processor)`` for ``path`` honouring ``processor_backend``.

    ``auto`` uses ``AutoProcessor`` when torchvision is importable, otherwise the PIL image processor.
    """
    from transformers import AutoTokenizer

    backend = config.processor_backend
    if backend == "torchvision" and not torchvision_available():
        raise ImportError("vlm.processor_backend='torchvision' but torchvision is not installed")
    if backend in ("auto", "torchvision") and torchvision_available():
        from transformers import AutoProcessor

        processor = AutoProcessor.from_pretrained(path, local_files_only=config.local_files_only)
        return processor, processor.tokenizer, processor.image_processor
    from transformers import Qwen2VLImageProcessorPil

    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=config.local_files_only)
    image_processor = Qwen2VLImageProcessorPil.from_pretrained(path, local_files_only=config.local_files_only)
    return None, tokenizer, image_processor
