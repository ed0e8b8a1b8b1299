"""Causal force/OCT sensor window ``[B, W, C]`` -> tokens ``[B, 2 * P, d_model]``.

Force (the first ``force_channels`` channels, N) and the OCT A-line (the remaining channels, a depth
profile per sample) are different signals, so they get separate branches:

* force: each patch of ``patch_len`` samples (a short force trace) is linearly embedded;
* A-line: every sample's depth profile is first embedded (``aline_embed_dim``, shared across time), then
  each patch of embedded profiles is linearly embedded.

Both branches yield P = ceil(W / patch_len) tokens; the oldest patch is left-padded so the newest sample
always ends the last patch. A type embedding and a temporal position embedding mark each token.
Per-channel normalisation statistics (``mean``/``std`` buffers) are part of the state dict, so they travel
with every checkpoint; set them from training data with ``set_normalization``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.config import SensorEncoderConfig

_EPS = 1e-6


class SensorEncoder(nn.Module):
    """Two-branch patch encoder for the force + A-line window (see module docstring)."""

    def __init__(self, config: SensorEncoderConfig, d_model: int):
        super().__init__()
        self.config = config
        fc = config.force_channels
        ac = config.channels - fc
        pl = config.patch_len
        self.register_buffer("mean", torch.zeros(config.channels))
        self.register_buffer("std", torch.ones(config.channels))
        self.force_patch = nn.Linear(pl * fc, d_model)
        self.aline_embed = nn.Linear(ac, config.aline_embed_dim)
        self.aline_patch = nn.Linear(pl * config.aline_embed_dim, d_model)
        self.type_embed = nn.Parameter(torch.zeros(2, d_model))
        self.pos_embed = nn.Parameter(torch.zeros(config.num_patches, d_model))
        nn.init.normal_(self.type_embed, std=0.02)
        nn.init.normal_(self.pos_embed, std=0.02)
        self.norm = nn.LayerNorm(d_model)

    @property
    def num_tokens(self) -> int:
        """Tokens per window (force patches + A-line patches)."""
        return 2 * self.config.num_patches

    @torch.no_grad()
    def set_normalization(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Per-channel statistics (shape ``[C]``); std is floored at 1e-6."""
        mean = torch.as_tensor(mean, dtype=torch.float32).reshape(-1)
        std = torch.as_tensor(std, dtype=torch.float32).reshape(-1)
        for name, value in (("mean", mean), ("std", std)):
            if value.shape != (self.config.channels,):
                raise ValueError(
                    f"sensor {name} must have shape ({self.config.channels},), got {tuple(value.shape)}"
                )
            if not torch.isfinite(value).all():
                raise ValueError(f"sensor {name} contains non-finite values")
        self.mean.copy_(mean)
        self.std.copy_(std.clamp_min(_EPS))

    def forward(self, window: torch.Tensor) -> torch.Tensor:
        """``[B, W, C]`` float window (newest sample last) -> ``[B, 2P, d_model]`` tokens."""
        cfg = self.config
        if window.ndim != 3 or window.shape[1] != cfg.window or window.shape[2] != cfg.channels:
            raise ValueError(
                f"sensor window must be [B, {cfg.window}, {cfg.channels}], got {list(window.shape)}"
            )
        x = (window.float() - self.mean) / self.std
        pad = cfg.num_patches * cfg.patch_len - cfg.window
        if pad:
            x = F.pad(x, (0, 0, pad, 0))  # zeros = the mean after normalisation
        batch, patches = x.shape[0], cfg.num_patches
        force = x[..., : cfg.force_channels].reshape(batch, patches, -1)
        aline = F.gelu(self.aline_embed(x[..., cfg.force_channels :])).reshape(batch, patches, -1)
        tokens = torch.cat(
            [
                self.force_patch(force) + self.type_embed[0] + self.pos_embed,
                self.aline_patch(aline) + self.type_embed[1] + self.pos_embed,
            ],
            dim=1,
        )
        return self.norm(tokens)
