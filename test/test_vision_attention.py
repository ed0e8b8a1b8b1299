"""Batched windowed vision attention gives transformers' per-window features (CPU, float32)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from models_fixtures import one_torch_thread, tiny_qwen_dir, views  # noqa: F401

from models.config import load_model_config
from models.vision_attention import use_batched_vision_attention, window_batch_index

TOLERANCE = 1e-4
"""Largest absolute feature difference allowed, relative to the features' largest magnitude (float32)."""


def test_window_index_lists_every_token_once_in_order():
    cu = torch.tensor([0, 3, 8, 9])
    index, valid = window_batch_index(cu, 9)
    assert index.shape == (3, 5) and valid.sum() == 9
    assert index[valid].tolist() == list(range(9))
    with pytest.raises(ValueError, match="past the"):
        window_batch_index(cu, 7)


def _relative_difference(reference: torch.Tensor, other: torch.Tensor) -> float:
    return float((reference - other).abs().max() / reference.abs().max())


def test_3b_vision_layers_at_640x360_match_the_per_window_path():
    from transformers.models.qwen2_5_vl.configuration_qwen2_5_vl import Qwen2_5_VLVisionConfig
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VisionTransformerPretrainedModel

    vision = dict(load_model_config("qwen2_5_vl_3b").vlm.architecture["vision_config"])
    vision.update(depth=3, fullatt_block_indexes=[2])  # two windowed layers and a full one, as in the tower
    config = Qwen2_5_VLVisionConfig(**vision)
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    tower = Qwen2_5_VisionTransformerPretrainedModel(config).eval()
    grid = torch.tensor([[1, 26, 46]])  # one 640x360 view after the processor's resize to 28-multiples
    patch = config.in_channels * config.temporal_patch_size * config.patch_size**2
    pixels = torch.randn(int(grid.prod()), patch)
    batched = copy.deepcopy(tower)
    assert use_batched_vision_attention(batched) == 3
    with torch.no_grad():
        reference = tower(pixels, grid_thw=grid)
        fast = batched(pixels, grid_thw=grid)
    reference = getattr(reference, "pooler_output", reference)
    fast = getattr(fast, "pooler_output", fast)
    assert reference.shape == fast.shape and reference.shape[0] == 13 * 23
    assert _relative_difference(reference, fast) < TOLERANCE


def test_tiny_model_features_match_with_several_windows_per_view(tiny_qwen_dir):  # noqa: F811
    from models.vlm import VLFeatureExtractor

    cfg = load_model_config("tiny").vlm
    cfg.model_name_or_path = str(tiny_qwen_dir)
    cfg.image_height, cfg.image_width = 224, 336  # 2 x 3 windows of 112 px per view
    cfg.max_pixels = 224 * 336
    plain = VLFeatureExtractor.from_pretrained(cfg)
    fast = VLFeatureExtractor.from_pretrained(cfg)
    assert use_batched_vision_attention(fast.hf_model) == 2
    images = [np.ascontiguousarray(v) for v in views(3, size=(224, 336))]
    with torch.no_grad():
        reference, _ = plain.extract(images, "Insert the needle into the Red target")
        other, _ = fast.extract(images, "Insert the needle into the Red target")
    assert reference.shape == other.shape
    assert _relative_difference(reference.float(), other.float()) < TOLERANCE


def test_a_model_without_qwen_vision_attention_is_refused():
    with pytest.raises(ValueError, match="Qwen2.5-VL"):
        use_batched_vision_attention(torch.nn.Linear(2, 2))
