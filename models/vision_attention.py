"""Qwen2.5-VL's windowed vision attention as one SDPA call instead of one call per window.

Without flash-attn, transformers runs the vision tower's attention window by window from Python: a
640x360 view has ~20 windows, 28 of the 3B tower's 32 layers are windowed, and five views make ~2800 small
SDPA calls per forward, each with its own launch and Python overhead. Here the windows (or, in the
full-attention layers, the images) of a layer are gathered into one padded batch ``[windows, heads,
longest, head_dim]`` and attend under a key-padding mask in a single call; the outputs are scattered back in
sequence order. Same arithmetic per window, so the features agree with transformers' path to float
rounding (``test/test_vision_attention.py`` states the tolerance).

:func:`use_batched_vision_attention` switches a loaded model over in place (``FastPathConfig
.vision_attention = "batched"``); flash-attention models keep their own varlen kernel.
"""

from __future__ import annotations

import types
from typing import Any

import torch
import torch.nn.functional as F

VISION_ATTENTION = ("per_window", "batched")
"""``per_window``: transformers' own loop; ``batched``: one padded SDPA call per layer (this module)."""


def window_batch_index(cu_seqlens: torch.Tensor, total: int) -> tuple[torch.Tensor, torch.Tensor]:
    """For windows bounded by ``cu_seqlens``: (token index ``[W, L]``, valid ``[W, L]``), L the longest.

    Row ``w`` lists the sequence positions of window ``w`` in order, padded (with position 0, masked out)
    to the longest window.
    """
    lengths = cu_seqlens[1:] - cu_seqlens[:-1]
    longest = int(lengths.max())
    offsets = torch.arange(longest, device=cu_seqlens.device)
    valid = offsets[None, :] < lengths[:, None]
    index = torch.where(valid, cu_seqlens[:-1, None] + offsets[None, :], torch.zeros_like(offsets)[None, :])
    if total and int(index.max()) >= total:
        raise ValueError(f"cu_seqlens reach past the {total}-token sequence")
    return index, valid


def batched_window_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, cu_seqlens: torch.Tensor, scale: float
) -> torch.Tensor:
    """Block-diagonal attention over ``[S, heads, head_dim]`` tensors; returns ``[S, heads, head_dim]``."""
    index, valid = window_batch_index(cu_seqlens, query.shape[0])

    def gather(tensor: torch.Tensor) -> torch.Tensor:
        return tensor[index].transpose(1, 2)  # [W, heads, L, head_dim]

    mask = valid[:, None, None, :]  # padded keys never attend; padded query rows are dropped below
    out = F.scaled_dot_product_attention(
        gather(query), gather(key), gather(value), attn_mask=mask, scale=scale
    )
    return out.transpose(1, 2)[valid]


def _batched_forward(
    self: Any,
    hidden_states: torch.Tensor,
    cu_seqlens: torch.Tensor,
    position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
    **kwargs: Any,
) -> torch.Tensor:
    """Drop-in ``forward`` of ``Qwen2_5_VLVisionAttention`` (same projections, rotary and output)."""
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import apply_rotary_pos_emb_vision

    seq_length = hidden_states.shape[0]
    query, key, value = self.qkv(hidden_states).reshape(seq_length, 3, self.num_heads, -1).unbind(1)
    cos, sin = position_embeddings
    query, key = apply_rotary_pos_emb_vision(query, key, cos, sin)
    out = batched_window_attention(query, key, value, cu_seqlens, self.scaling)
    return self.proj(out.reshape(seq_length, -1).contiguous())


def vision_attention_modules(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The ``Qwen2_5_VLVisionAttention`` modules of a (possibly peft-wrapped) Qwen2.5-VL."""
    return [m for m in model.modules() if type(m).__name__ == "Qwen2_5_VLVisionAttention"]


def use_batched_vision_attention(model: torch.nn.Module) -> int:
    """Switch every vision attention of ``model`` to the batched path in place; returns how many.

    Raises ``ValueError`` for a model without Qwen2.5-VL vision attention. Flash-attention models are left
    as they are (their varlen kernel already runs all windows in one call) and return 0.
    """
    modules = vision_attention_modules(model)
    if not modules:
        raise ValueError(
            "no Qwen2_5_VLVisionAttention in this model: batched vision attention is for Qwen2.5-VL"
        )
    if "flash" in str(getattr(modules[0].config, "_attn_implementation", "")):
        return 0
    for module in modules:
        module.forward = types.MethodType(_batched_forward, module)
    return len(modules)
