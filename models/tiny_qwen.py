"""Build Qwen2.5-VL models without downloading anything: a tiny one for tests, random-weight ones for benches.

``build_tiny_qwen2_5_vl(out_dir)`` writes a complete model directory (``config.json`` + safetensors weights,
a tokenizer with the Qwen special tokens and a Qwen-style chat template, and a ``Qwen2_5_VLProcessor``) so
that ``AutoProcessor.from_pretrained(out_dir)`` and ``Qwen2_5_VLForConditionalGeneration.from_pretrained``
load it exactly as they load the real checkpoint. The tokenizer is a byte-level BPE with no merges (one
token per byte) plus the Qwen special tokens: deterministic, no training corpus needed.

``build_random_qwen2_5_vl(architecture, ...)`` builds any Qwen2.5-VL architecture (e.g. the 3B numbers in
``config/models/qwen2_5_vl_3b.yaml``) in memory with random weights, for latency benchmarks where weight
values do not matter and saving 7 GB to disk would only cost time.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

# The Qwen2 special tokens, in the real tokenizer's order; the tiny tokenizer gives them consecutive ids.
QWEN_SPECIAL_TOKENS: tuple[str, ...] = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)

# A Qwen2-VL style chat template (same prompt layout as the real one, without tool-calling branches).
QWEN_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}"
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Architecture of the tiny model (2 text layers + 2 vision layers); vocab size is set from the tokenizer.
TINY_ARCHITECTURE: dict[str, dict[str, Any]] = {
    "text_config": {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 4096,
        "rope_scaling": {"type": "mrope", "mrope_section": [2, 3, 3]},
    },
    "vision_config": {
        "depth": 2,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_heads": 2,
        "out_hidden_size": 64,
        "patch_size": 14,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "window_size": 112,
        "fullatt_block_indexes": [1],
    },
    "tie_word_embeddings": True,
}


# The embedded default's architecture (``builtin:tiny-sim``): trained in Stage 0 (``training.stage0``) on
# sim renders. Wider than TINY_ARCHITECTURE so that sub-millimetre target positions fit in its features,
# still a 5-view forward of a few tens of ms on a 2-core CPU.
TINY_SIM_ARCHITECTURE: dict[str, dict[str, Any]] = {
    "text_config": {
        "hidden_size": 128,
        "intermediate_size": 256,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 4096,
        "rope_scaling": {"type": "mrope", "mrope_section": [4, 6, 6]},
    },
    "vision_config": {
        "depth": 4,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_heads": 4,
        "out_hidden_size": 128,
        "patch_size": 14,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "window_size": 112,
        "fullatt_block_indexes": [3],
    },
    "tie_word_embeddings": True,
}

ARCHITECTURES: dict[str, dict[str, Any]] = {"tiny": TINY_ARCHITECTURE, "tiny-sim": TINY_SIM_ARCHITECTURE}
"""Architectures Stage 0 can start from, by name."""


def build_tokenizer():
    """Byte-level BPE tokenizer (256 byte tokens, no merges) + the Qwen special tokens and chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    byte_chars = list(bytes_to_unicode().values())
    vocab = {char: index for index, char in enumerate(byte_chars)}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=None))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        model_max_length=32768,
        padding_side="right",
    )
    tokenizer.add_special_tokens({"additional_special_tokens": list(QWEN_SPECIAL_TOKENS)})
    tokenizer.chat_template = QWEN_CHAT_TEMPLATE
    return tokenizer


def build_processor(tokenizer, min_pixels: int = 56 * 56, max_pixels: int = 28 * 28 * 1280):
    """``Qwen2_5_VLProcessor`` (needs torchvision) with the Qwen2-VL image processor and pixel bounds."""
    from transformers import Qwen2_5_VLProcessor, Qwen2VLImageProcessor, Qwen2VLVideoProcessor

    image_processor = Qwen2VLImageProcessor(min_pixels=min_pixels, max_pixels=max_pixels)
    return Qwen2_5_VLProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=Qwen2VLVideoProcessor(),
        chat_template=QWEN_CHAT_TEMPLATE,
    )


def _model_config(architecture: Mapping[str, Any], tokenizer):
    """``Qwen2_5_VLConfig`` for ``architecture`` whose special-token ids match ``tokenizer``."""
    from transformers import Qwen2_5_VLConfig

    ids = {name: tokenizer.convert_tokens_to_ids(name) for name in QWEN_SPECIAL_TOKENS}
    architecture = copy.deepcopy(dict(architecture))  # transformers edits nested dicts (rope) in place
    text = dict(architecture.get("text_config", {}))
    text.setdefault("vocab_size", len(tokenizer))
    text.setdefault("bos_token_id", ids["<|endoftext|>"])
    text.setdefault("eos_token_id", ids["<|im_end|>"])
    text.setdefault("pad_token_id", ids["<|endoftext|>"])
    if text["vocab_size"] < len(tokenizer):
        raise ValueError(f"vocab_size {text['vocab_size']} is smaller than the tokenizer ({len(tokenizer)})")
    return Qwen2_5_VLConfig(
        text_config=text,
        vision_config=dict(architecture.get("vision_config", {})),
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=bool(architecture.get("tie_word_embeddings", True)),
    )


def _init_model(
    config, seed: int, dtype: torch.dtype, device: str | torch.device, attn_implementation: str | None = None
):
    """Instantiate ``Qwen2_5_VLForConditionalGeneration(config)`` deterministically under ``seed``.

    The global CPU RNG state is restored afterwards, so building a model never perturbs a caller's seed.
    """
    from transformers import Qwen2_5_VLForConditionalGeneration

    kwargs = {"dtype": dtype}
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    cpu_rng = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        with torch.device(device):
            model = Qwen2_5_VLForConditionalGeneration._from_config(config, **kwargs)
    finally:
        torch.random.set_rng_state(cpu_rng)
    return model.eval()


def build_tiny_qwen2_5_vl(
    out_dir: str | os.PathLike,
    seed: int = 0,
    architecture: Mapping[str, Any] | None = None,
    min_pixels: int = 56 * 56,
    max_pixels: int = 112 * 112,
) -> Path:
    """Save a tiny Qwen2.5-VL (weights, config, tokenizer, processor) to ``out_dir`` and return the path.

    The weights depend only on ``seed`` and ``architecture`` (default ``TINY_ARCHITECTURE``), so two builds
    with the same arguments are bit-identical. The global torch RNG state is left untouched.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer()
    config = _model_config(architecture or TINY_ARCHITECTURE, tokenizer)
    model = _init_model(config, seed=seed, dtype=torch.float32, device="cpu")
    model.save_pretrained(out)
    build_processor(tokenizer, min_pixels=min_pixels, max_pixels=max_pixels).save_pretrained(out)
    return out


def _default_cache_root() -> Path:
    root = os.environ.get("INSERTION_VLA_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "insertion_vla_ros"
    )
    return Path(root)


def cached_tiny_qwen2_5_vl(seed: int = 0, cache_root: str | os.PathLike | None = None) -> Path:
    """Build the tiny model once into a cache folder (``$INSERTION_VLA_CACHE`` or ~/.cache) and reuse it.

    The folder name carries a hash of the architecture and seed, so a changed recipe never reuses a stale
    build. Written to a temporary folder first and renamed, so concurrent callers never see half a model.
    """
    import tempfile

    recipe = json.dumps({"arch": TINY_ARCHITECTURE, "seed": seed, "version": 1}, sort_keys=True)
    tag = hashlib.sha256(recipe.encode()).hexdigest()[:12]
    root = Path(cache_root) if cache_root is not None else _default_cache_root()
    target = root / f"tiny_qwen2_5_vl-{tag}"
    if (target / "config.json").is_file():
        return target
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".tiny_qwen-", dir=root))
    build_tiny_qwen2_5_vl(staging, seed=seed)
    try:
        staging.rename(target)
    except OSError:  # another process won the race; its build is identical
        import shutil

        shutil.rmtree(staging, ignore_errors=True)
    return target


def build_random_qwen2_5_vl(
    architecture: Mapping[str, Any],
    dtype: torch.dtype = torch.bfloat16,
    device: str | torch.device = "cpu",
    seed: int = 0,
    min_pixels: int = 56 * 56,
    max_pixels: int = 28 * 28 * 1280,
    attn_implementation: str | None = None,
):
    """In-memory ``(model, processor)`` of ``architecture`` with random weights (for latency benchmarks).

    Uses the tiny byte-level tokenizer, so text prompts tokenize to more tokens than with the real Qwen
    tokenizer; the image tokens, which dominate the sequence, are counted exactly as for the real model.
    """
    tokenizer = build_tokenizer()
    config = _model_config(architecture, tokenizer)
    model = _init_model(
        config, seed=seed, dtype=dtype, device=device, attn_implementation=attn_implementation
    )
    try:
        processor = build_processor(tokenizer, min_pixels=min_pixels, max_pixels=max_pixels)
    except ImportError:
        processor = None
    return model, processor, tokenizer
