"""Action expert: VL latents + sensor tokens + feature age -> normalised action chunk ``[B, H, D]``.

Three stages, split so the expensive VL side runs once per VL feature rather than once per tick:

1. ``encode_vl`` (cacheable): a latent resampler — ``vl_latents`` learned queries cross-attend to the
   projected VL tokens ``[B, T, Hvl]`` — compresses ~1500 x 2048 features to ``[B, vl_latents, d]``. It
   depends on nothing but the features, so one result serves all ~17 ticks that reuse them.
2. ``context``: a small transformer encoder over ``[age token, (state token,) (motion token,) (grounding
   now token,) sensor tokens, VL latents]``; the state token embeds the measured robot pose when
   ``state_dim > 0``, the motion token the robot's pose change since the features' capture when
   ``motion_input``. With ``grounding_input`` the VLM's read-out of the target offset is one more VL latent,
   and with ``motion_input`` too it also enters as it is now: the offset at capture minus the robot's
   lateral motion since, so that a feature 3 s old still says where the target is from here.
3. a head, decoding ``horizon`` action tokens that cross-attend to the context:
   * ``regression``: learned step queries, one pass, trained with masked MSE;
   * ``flow`` (rectified flow matching): tokens embed a noisy chunk x_t and the time t; the decoder
     predicts the velocity x1 - x0. Inference integrates ``flow_steps`` Euler steps from a fixed
     noise chunk (a non-persistent buffer drawn from ``flow_seed``), so eval output is deterministic and
     identical for every batch element given identical inputs. The context is computed once per call.

   With ``lateral_from_readout`` the lateral steps (dx, dy) come from ``lateral_steps_mm`` instead: learned
   gates on the compensated read-out, decoded from the same context by the step queries.

Ground-truth actions enter only ``loss``; ``predict`` has no parameter through which they could leak.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from models.config import ActionExpertConfig
from models.grounding import OFFSET_SCALE_MM, GroundingHead, GroundingHeadConfig

MOTION_DIM = 6
"""Motion since capture: translation (mm) and rotation vector (rad) of pose(t) relative to pose(capture)."""


def _encoder_layer(cfg: ActionExpertConfig) -> nn.TransformerEncoderLayer:
    return nn.TransformerEncoderLayer(
        cfg.d_model,
        cfg.num_heads,
        cfg.ffn_mult * cfg.d_model,
        cfg.dropout,
        activation="gelu",
        batch_first=True,
        norm_first=True,
    )


def _decoder_layer(cfg: ActionExpertConfig) -> nn.TransformerDecoderLayer:
    return nn.TransformerDecoderLayer(
        cfg.d_model,
        cfg.num_heads,
        cfg.ffn_mult * cfg.d_model,
        cfg.dropout,
        activation="gelu",
        batch_first=True,
        norm_first=True,
    )


def fourier_features(x: torch.Tensor, count: int) -> torch.Tensor:
    """``[B]`` values in roughly [0, 1] -> ``[B, 2 * count + 1]`` (x, sin/cos at octave frequencies)."""
    freqs = math.pi * (2.0 ** torch.arange(count, device=x.device, dtype=torch.float32))
    angles = x.float()[:, None] * freqs
    return torch.cat([x.float()[:, None], angles.sin(), angles.cos()], dim=-1)


class VLResampler(nn.Module):
    """``[B, T, Hvl]`` (+ bool mask, True = real) -> ``[B, n_latents, d]`` via one cross-attention block.

    With a ``grounding`` head config, the VLM's grounding head (loaded by the trainer from the VLM folder,
    frozen) reads the instructed target's offset from the tokens. The offset travels raw in one more latent
    slot (``offset_mm / OFFSET_SCALE_MM`` in its first two channels, zeros after) and
    ``ActionExpert.context`` embeds it at the tick, where the motion since capture is known.
    """

    def __init__(self, vl_hidden: int, cfg: ActionExpertConfig, grounding: GroundingHeadConfig | None = None):
        super().__init__()
        self.in_norm = nn.LayerNorm(vl_hidden)
        self.proj = nn.Linear(vl_hidden, cfg.d_model)
        self.latents = nn.Parameter(torch.randn(cfg.vl_latents, cfg.d_model) * 0.02)
        self.positions = None
        if cfg.vl_token_positions:
            self.positions = nn.Parameter(torch.randn(cfg.vl_token_positions, cfg.d_model) * 0.02)
        self.attn = nn.MultiheadAttention(cfg.d_model, cfg.num_heads, dropout=cfg.dropout, batch_first=True)
        self.ffn = nn.Sequential(
            nn.LayerNorm(cfg.d_model),
            nn.Linear(cfg.d_model, cfg.ffn_mult * cfg.d_model),
            nn.GELU(),
            nn.Linear(cfg.ffn_mult * cfg.d_model, cfg.d_model),
        )
        self.out_norm = nn.LayerNorm(cfg.d_model)
        self.grounding = None
        if grounding is not None:
            self.grounding = GroundingHead(grounding).requires_grad_(False)
            self.grounding_embed = _offset_mlp(cfg.d_model)

    def forward(self, vl: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Compress VL tokens; masked-out tokens (False) never contribute."""
        keys = self.proj(self.in_norm(vl.float()))
        if self.positions is not None:  # tokens past the table get no position (still attended)
            count = min(keys.shape[1], self.positions.shape[0])
            keys = torch.cat([keys[:, :count] + self.positions[:count], keys[:, count:]], dim=1)
        queries = self.latents.expand(vl.shape[0], -1, -1)
        padding = None if mask is None else ~mask
        attended, _ = self.attn(queries, keys, keys, key_padding_mask=padding, need_weights=False)
        latents = queries + attended
        latents = self.out_norm(latents + self.ffn(latents))
        if self.grounding is None:
            return latents
        return torch.cat([latents, self._grounding_latent(vl, mask)], dim=1)

    def _grounding_latent(self, vl: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        tokens = self.grounding.config.num_views * self.grounding.config.tokens_per_view
        if vl.shape[1] < tokens or (mask is not None and not bool(mask[:, :tokens].all())):
            raise ValueError(f"the grounding read-out needs all {tokens} vision tokens of every feature")
        scaled = self.grounding(vl[:, :tokens]).offset_mm / OFFSET_SCALE_MM
        slot = scaled.new_zeros(scaled.shape[0], 1, self.out_norm.normalized_shape[0])
        slot[:, 0, :2] = scaled
        return slot


def readout_slot(vl_latents: torch.Tensor) -> torch.Tensor:
    """The raw grounding read-out ``[B, 2]`` in the resampler's output (offset / ``OFFSET_SCALE_MM``)."""
    return vl_latents[:, -1, :2]


def _offset_mlp(d_model: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(2, d_model), nn.GELU(), nn.Linear(d_model, d_model))


class ActionExpert(nn.Module):
    """See the module docstring; works in normalised action space (the policy de-normalises)."""

    def __init__(
        self,
        cfg: ActionExpertConfig,
        vl_hidden: int,
        num_sensor_tokens: int,
        grounding: GroundingHeadConfig | None = None,
    ):
        """``grounding``: the VLM's grounding head shape, exactly when ``cfg.grounding_input``."""
        super().__init__()
        if cfg.grounding_input != (grounding is not None):
            raise ValueError("pass the grounding head config exactly when action_expert.grounding_input")
        self.cfg = cfg
        d = cfg.d_model
        self.resampler = VLResampler(vl_hidden, cfg, grounding)
        self.age_mlp = nn.Sequential(nn.Linear(2 * 8 + 1, d), nn.GELU(), nn.Linear(d, d))
        self.type_embed = nn.Parameter(torch.randn(3, d) * 0.02)  # age, sensor, VL
        self.context_encoder = nn.TransformerEncoder(
            _encoder_layer(cfg), cfg.context_layers, norm=nn.LayerNorm(d), enable_nested_tensor=False
        )
        self.step_embed = nn.Parameter(torch.randn(cfg.horizon, d) * 0.02)
        self.decoder = nn.TransformerDecoder(_decoder_layer(cfg), cfg.decoder_layers, norm=nn.LayerNorm(d))
        self.out = nn.Linear(d, cfg.action_dim)
        if cfg.head == "flow":
            self.action_in = nn.Linear(cfg.action_dim, d)
            self.time_mlp = nn.Sequential(nn.Linear(2 * 8 + 1, d), nn.GELU(), nn.Linear(d, d))
            generator = torch.Generator().manual_seed(cfg.flow_seed)
            noise = torch.randn(cfg.horizon, cfg.action_dim, generator=generator)
            self.register_buffer("flow_noise", noise, persistent=False)
        self.num_sensor_tokens = num_sensor_tokens
        self.state_embed = None
        if cfg.state_dim:
            self.state_embed = nn.Sequential(nn.Linear(cfg.state_dim, d), nn.GELU(), nn.Linear(d, d))
            self.state_type = nn.Parameter(torch.randn(d) * 0.02)
        self.motion_embed = None
        if cfg.motion_input:
            self.motion_embed = nn.Sequential(nn.Linear(MOTION_DIM, d), nn.GELU(), nn.Linear(d, d))
            self.motion_type = nn.Parameter(torch.randn(d) * 0.02)
        self.grounding_now_embed = None
        if cfg.grounding_input and cfg.motion_input:
            self.grounding_now_embed = _offset_mlp(d)
            self.grounding_now_type = nn.Parameter(torch.randn(d) * 0.02)
        self.gate_out = nn.Linear(d, 1) if cfg.lateral_from_readout else None

    # ------------------------------------------------------------------------------------ building blocks
    def encode_vl(self, vl: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Cacheable VL compression ``[B, T, Hvl]`` -> ``[B, cfg.encoded_vl_tokens, d]``."""
        return self.resampler(vl, mask)

    def age_embedding(self, age_s: torch.Tensor) -> torch.Tensor:
        """Feature age (s, ``[B]``) -> ``[B, d]``; ages are clamped to ``[0, max_age_s]``."""
        scaled = age_s.float().clamp(0.0, self.cfg.max_age_s) / self.cfg.max_age_s
        return self.age_mlp(fourier_features(scaled, 8))

    def context(
        self,
        vl_latents: torch.Tensor,
        sensor_tokens: torch.Tensor,
        age: torch.Tensor,
        state: torch.Tensor | None = None,
        motion: torch.Tensor | None = None,
        motion_mm: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Fuse ``[age, (state,) (motion,) (grounding now,) sensor tokens, VL latents]`` -> ``[B, N, d]``.

        ``state`` is the normalised robot state ``[B, state_dim]``, required exactly when the config has
        ``state_dim > 0``; ``motion`` the normalised pose change since capture ``[B, 6]``, required exactly
        when ``motion_input``, and ``motion_mm`` the same change in physical units (mm, rad), required
        when the grounding read-out is compensated for it (``grounding_input`` and ``motion_input``).
        """
        offset = None
        if self.resampler.grounding is not None:
            offset = readout_slot(vl_latents)
            embedded = self.resampler.grounding_embed(offset)[:, None]
            vl_latents = torch.cat([vl_latents[:, :-1], embedded], dim=1)
        parts = [(age + self.type_embed[0])[:, None]]
        if self.state_embed is not None:
            if state is None:
                raise ValueError(f"this action expert needs the robot state ([B, {self.cfg.state_dim}])")
            parts.append((self.state_embed(state.float()) + self.state_type)[:, None])
        if self.motion_embed is not None:
            if motion is None:
                raise ValueError(f"this action expert needs the motion since capture ([B, {MOTION_DIM}])")
            parts.append((self.motion_embed(motion.float()) + self.motion_type)[:, None])
        if self.grounding_now_embed is not None:
            now = self.readout_now_mm(offset, motion_mm)
            parts.append((self.grounding_now_embed(now / OFFSET_SCALE_MM) + self.grounding_now_type)[:, None])
        parts += [sensor_tokens + self.type_embed[1], vl_latents + self.type_embed[2]]
        return self.context_encoder(torch.cat(parts, dim=1))

    @staticmethod
    def readout_now_mm(offset: torch.Tensor, motion_mm: torch.Tensor | None) -> torch.Tensor:
        """The target offset as it is at the tick ``[B, 2]`` (mm): the read-out minus the motion since.

        ``offset`` is the raw read-out slot (``readout_slot`` of ``encode_vl``'s output), ``motion_mm``
        the pose change since capture ``[B, 6]`` in mm and rad.
        """
        if motion_mm is None:
            raise ValueError("the compensated grounding read-out needs motion_mm ([B, 6], mm and rad)")
        return offset.float() * OFFSET_SCALE_MM - motion_mm[:, :2].float()

    def lateral_steps_mm(
        self,
        context: torch.Tensor,
        age: torch.Tensor,
        vl_latents: torch.Tensor,
        motion_mm: torch.Tensor | None,
    ) -> torch.Tensor:
        """Lateral steps ``[B, H, 2]`` (mm) for ``lateral_from_readout``: step j moves g_j of what is left.

        The gates ``g`` in [0, 1] are decoded from the context by the step queries; the offset left before
        step j is the read-out times ``prod_{i<j} (1 - g_i)``: compensated for ``motion_mm`` (the pose
        change since capture), or as it was at capture when the policy has no motion input (``None``).
        """
        if self.gate_out is None:
            raise ValueError("this action expert decodes its lateral steps (lateral_from_readout: false)")
        queries = (self.step_embed + age[:, None]).expand(context.shape[0], -1, -1)
        gates = torch.sigmoid(self.gate_out(self.decoder(queries, context)))[..., 0]
        kept = torch.cumprod(1.0 - gates, dim=1)
        left_before = torch.cat([torch.ones_like(kept[:, :1]), kept[:, :-1]], dim=1)
        offset = readout_slot(vl_latents)
        now = (
            offset.float() * OFFSET_SCALE_MM if motion_mm is None else self.readout_now_mm(offset, motion_mm)
        )
        return (gates * left_before)[..., None] * now[:, None, :]

    def _decode(self, tokens: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        return self.out(self.decoder(tokens, context))

    def _flow_velocity(self, x_t: torch.Tensor, t: torch.Tensor, age: torch.Tensor, context: torch.Tensor):
        cond = self.time_mlp(fourier_features(t, 8)) + age
        tokens = self.action_in(x_t) + self.step_embed + cond[:, None]
        return self._decode(tokens, context)

    # ------------------------------------------------------------------------------------------ heads
    def predict(self, context: torch.Tensor, age: torch.Tensor) -> torch.Tensor:
        """Normalised chunk ``[B, H, D]`` from the context only (no target input exists here)."""
        batch = context.shape[0]
        if self.cfg.head == "regression":
            queries = (self.step_embed + age[:, None]).expand(batch, -1, -1)
            return self._decode(queries, context)
        steps = self.cfg.flow_steps
        x = self.flow_noise.to(context.dtype).expand(batch, -1, -1)
        for i in range(steps):
            t = torch.full((batch,), i / steps, device=context.device)
            x = x + self._flow_velocity(x, t, age, context) / steps
        return x

    def loss(
        self, context: torch.Tensor, age: torch.Tensor, target: torch.Tensor, step_mask: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Training loss against normalised targets ``[B, H, D]``; ``step_mask`` ``[B, H]``, False = pad."""
        if self.cfg.head == "regression":
            loss = masked_mean_square(self.predict(context, age) - target, step_mask)
            return loss, {"mse_norm": float(loss.detach())}
        batch = target.shape[0]
        noise = torch.randn_like(target)
        t = torch.rand(batch, device=target.device)
        x_t = (1.0 - t)[:, None, None] * noise + t[:, None, None] * target
        velocity = self._flow_velocity(x_t, t, age, context)
        loss = masked_mean_square(velocity - (target - noise), step_mask)
        return loss, {"flow_mse": float(loss.detach())}


def masked_mean_square(diff: torch.Tensor, step_mask: torch.Tensor) -> torch.Tensor:
    """Mean squared ``diff`` over real steps (``diff`` ``[B, H, D]``, ``step_mask`` ``[B, H]``)."""
    weights = step_mask.float()[..., None].expand_as(diff)
    return (diff**2 * weights).sum() / weights.sum().clamp_min(1.0)


def masked_mean_abs(diff: torch.Tensor, step_mask: torch.Tensor) -> torch.Tensor:
    """Mean |diff| over real steps (``diff`` ``[B, H, D]``, ``step_mask`` ``[B, H]``)."""
    weights = step_mask.float()[..., None].expand_as(diff)
    return (diff.abs() * weights).sum() / weights.sum().clamp_min(1.0)
