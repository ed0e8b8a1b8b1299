"""``AsyncVLAPolicy``: the one class the nodes and the trainers use (see docs/CONTRACTS.md).

Run time: the vlm_node calls ``extract_vl_features`` (slow, VLM loaded); the action-expert node calls
``encode_vl_features`` once per received feature and ``predict_actions`` every tick (fast, no VLM).
``predict_actions`` also accepts raw features and then reuses the encoding while it is handed the same,
unmodified tensor object and the weights are unchanged, so a naive caller gets the fast path too.

Training: ``forward(batch)`` returns loss + metrics. Stage 1 passes cached ``vl_features``; Stage 2 passes
``images`` + ``instructions`` for G groups and ``group_size`` R: one VLM forward (batched over the groups)
serves the R sensor windows / targets of each group, exactly as a feature is reused at run time.
``set_stage(1|2)`` sets ``requires_grad`` accordingly; ``parameter_groups()`` feeds separate learning rates.

Actions are normalised inside (``action_mean``/``action_std`` buffers, per action dimension), and so is the
optional robot state (``state_mean``/``state_std``, present when ``action_expert.state_dim > 0``), so inputs
and outputs are physical units. The ``fingerprint`` identifies the feature function: the VLM by the content
of its weights (:mod:`models.model_identity`: moving them keeps it, other weights at the same path change
it), the settings that change its output, the LoRA weights hash (``none`` for no adapter or a no-op one)
and the feature layout. It does not depend on the sensor encoder or action expert.
"""

from __future__ import annotations

import hashlib
import json
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn

from contracts.constants import ACTION_NAMES
from models import lora as lora_utils
from models.action_expert import MOTION_DIM, ActionExpert, masked_mean_square, readout_slot
from models.config import PolicyConfig
from models.grounding import OFFSET_SCALE_MM, GroundingHeadConfig, load_grounding_head, token_grid
from models.model_identity import weights_identity
from models.sensor_encoder import SensorEncoder
from models.vlm import VLFeatureExtractor, VLFeatureMeta

FINGERPRINT_VERSION = 2
"""2: the VLM is identified by its weights' content (1 hashed ``model_name_or_path``)."""


class PolicyOutput(NamedTuple):
    """``forward`` result: scalar loss (with graph) and float metrics."""

    loss: torch.Tensor
    metrics: dict[str, float]


@dataclass
class EncodedVL:
    """VL features after the action expert's resampler: ``latents`` ``[B, encoded_vl_tokens, d_model]``.

    Valid for the policy weights that produced it; compute once per VL feature, reuse for every tick.
    """

    latents: torch.Tensor

    @property
    def batch_size(self) -> int:
        """Number of feature sets encoded."""
        return int(self.latents.shape[0])


def _as_tensor(value: Any, name: str) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (np.ndarray, np.generic)):
        return torch.from_numpy(np.ascontiguousarray(value))
    if isinstance(value, (float, int)) and not isinstance(value, bool):
        return torch.tensor(float(value))
    raise ValueError(f"{name} must be a torch.Tensor, numpy array or number, got {type(value).__name__}")


class AsyncVLAPolicy(nn.Module):
    """VLM feature extractor + sensor encoder + action expert with the asynchronous contract."""

    def __init__(self, config: PolicyConfig, load_vlm: bool = False, device: str | torch.device = "cpu"):
        super().__init__()
        self.config = config.validate()
        ae = config.action_expert
        self.sensor_encoder = SensorEncoder(config.sensor, ae.d_model)
        self.action_expert = ActionExpert(
            ae, config.vlm.hidden_size, self.sensor_encoder.num_tokens, grounding_head_config(config)
        )
        self.register_buffer("action_mean", torch.zeros(ae.action_dim))
        self.register_buffer("action_std", torch.ones(ae.action_dim))
        if ae.state_dim:  # only then: checkpoints of state-free policies keep their exact keys
            self.register_buffer("state_mean", torch.zeros(ae.state_dim))
            self.register_buffer("state_std", torch.ones(ae.state_dim))
        if ae.motion_input:
            self.register_buffer("motion_mean", torch.zeros(MOTION_DIM))
            self.register_buffer("motion_std", torch.ones(MOTION_DIM))
        self._vlm: VLFeatureExtractor | None = None
        self.vlm_model: nn.Module | None = None
        self._stored_lora_hash = lora_utils.NO_LORA_HASH
        self._merged_lora_hash: str | None = None
        self.lora_source_dir = None  # adapter folder of a checkpoint loaded without the VLM
        self._vl_cache: tuple | None = None
        self._tick_runner: Any = None  # batch-1 replacement of head_forward (models.fast_graphs.tick_runner)
        self._vlm_identity: str | None = None
        self.last_vl_meta: VLFeatureMeta | None = None
        self.to(device)
        if load_vlm:
            self.attach_vlm(device=device)

    # ------------------------------------------------------------------------------------ properties
    @property
    def vl_hidden_size(self) -> int:
        """Hvl, the VLM text hidden size the action expert consumes."""
        return self.config.vlm.hidden_size

    @property
    def action_names(self) -> tuple[str, ...]:
        """Names of the action dimensions (``contracts.constants.ACTION_NAMES`` for 7-D actions)."""
        dim = self.config.action_expert.action_dim
        return ACTION_NAMES if dim == len(ACTION_NAMES) else tuple(f"a{i}" for i in range(dim))

    @property
    def state_dim(self) -> int:
        """Robot-state values the policy consumes (first ``state_dim`` of the measured pose; 0: none)."""
        return self.config.action_expert.state_dim

    @property
    def motion_input(self) -> bool:
        """Whether the policy takes the robot's motion since the features' capture (``motion_input``)."""
        return self.config.action_expert.motion_input

    @property
    def has_vlm(self) -> bool:
        """True when the VLM is loaded (``extract_vl_features`` and Stage 2 need it)."""
        return self._vlm is not None

    @property
    def vlm(self) -> VLFeatureExtractor:
        """The feature extractor; raises when the VLM is not loaded."""
        if self._vlm is None:
            raise RuntimeError("the VLM is not loaded: construct with load_vlm=True or call attach_vlm()")
        return self._vlm

    @property
    def device(self) -> torch.device:
        """Device of the action expert."""
        return self.action_mean.device

    @property
    def feature_layout(self) -> dict[str, Any]:
        """What a VL feature tensor looks like; consumers must agree on all of it."""
        vlm = self.config.vlm
        return {
            "token_selection": vlm.token_selection,
            "pooled_grid": vlm.pooled_grid if vlm.token_selection == "pooled" else None,
            "feature_layer": vlm.feature_layer,
            "hidden_size": vlm.hidden_size,
            "dtype": vlm.feature_dtype,
            "num_views": vlm.num_views,
            "image_size": [vlm.image_height, vlm.image_width],
        }

    @property
    def lora_hash(self) -> str:
        """Hash of the LoRA weights in use (``none`` without an effective adapter)."""
        if self._merged_lora_hash is not None:
            return self._merged_lora_hash
        if self.vlm_model is not None and hasattr(self.vlm_model, "peft_config"):
            return lora_utils.hash_lora_tensors(lora_utils.lora_state_dict(self.vlm_model))
        return self._stored_lora_hash

    @property
    def vlm_weights_identity(self) -> str:
        """Content identity of the VLM weights (``models.model_identity``).

        Stored in a checkpoint, or computed once from the weight files (read, not loaded).
        """
        if self._vlm_identity is None:
            self._vlm_identity = weights_identity(self.config.vlm.model_name_or_path)
        return self._vlm_identity

    @property
    def fingerprint(self) -> str:
        """16-hex identity of the VL feature function (VLM + LoRA + layout); see module docstring."""
        vlm = self.config.vlm
        identity = {
            "version": FINGERPRINT_VERSION,
            "vlm": {
                "weights": self.vlm_weights_identity,
                "dtype": vlm.dtype,
                "min_pixels": vlm.min_pixels,
                "max_pixels": vlm.max_pixels,
                "prompt_prefix": vlm.prompt_prefix,
                "architecture": vlm.architecture,
            },
            "lora": self.lora_hash,
            "layout": self.feature_layout,
        }
        blob = json.dumps(identity, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    # ------------------------------------------------------------------------------------------- VLM
    def attach_vlm(
        self,
        extractor: VLFeatureExtractor | None = None,
        device: str | torch.device | None = None,
        lora_dir: str | None = None,
    ) -> VLFeatureExtractor:
        """Load (or adopt) the VLM; apply LoRA (fresh, or from ``lora_dir``) when ``config.lora.enabled``."""
        device = device if device is not None else self.device
        if extractor is None:
            extractor = VLFeatureExtractor.from_pretrained(self.config.vlm, device=device)
        self._vlm_identity = weights_identity(self.config.vlm.model_name_or_path)
        model = extractor.hf_model
        if lora_dir is not None:
            model = lora_utils.load_lora_adapter(model, lora_dir, trainable=False)
        elif self.config.lora.enabled:
            model = lora_utils.apply_lora(model, self.config.lora)
        model.requires_grad_(False)
        self._vlm = extractor
        self.vlm_model = model
        self._merged_lora_hash = None
        return extractor

    def load_grounding_from_vlm(self) -> None:
        """Copy the grounding head saved beside the VLM's weights (Stage 0) into the grounding read-out.

        For a fresh policy with ``action_expert.grounding_input``; checkpoints carry the head themselves.
        Raises ``FileNotFoundError`` for a VLM without a head and ``ValueError`` for one of another shape.
        """
        from models.vlm import resolve_model_path

        readout = self.action_expert.resampler.grounding
        if readout is None:
            raise ValueError("this policy has no grounding read-out (action_expert.grounding_input: false)")
        head = load_grounding_head(resolve_model_path(self.config.vlm.model_name_or_path))
        if head.config != readout.config:
            raise ValueError(f"the VLM's grounding head is {head.config}, this policy reads {readout.config}")
        readout.load_state_dict(head.state_dict())

    def merge_lora_for_inference(self) -> None:
        """Fold LoRA into the VLM weights (faster inference); the fingerprint keeps the adapter's hash."""
        if self.vlm_model is None or not hasattr(self.vlm_model, "peft_config"):
            return
        lora_hash = self.lora_hash
        self.vlm_model = lora_utils.merge_lora(self.vlm_model)
        self.vlm.hf_model = self.vlm_model
        self._merged_lora_hash = lora_hash

    def extract_vl_features(self, images: Sequence[np.ndarray], instruction: str) -> torch.Tensor:
        """``num_views`` HxWx3 uint8 RGB arrays + instruction -> ``[T, Hvl]`` (CPU, ``feature_dtype``).

        Metadata (tokens per view, grids, inference time) is left in ``last_vl_meta``.
        """
        features, meta = self.vlm.extract(images, instruction)
        self.last_vl_meta = meta
        return features

    def extract_vl_features_batch(
        self, list_of_images: Sequence[Sequence[np.ndarray]], instructions: Sequence[str]
    ) -> list[torch.Tensor]:
        """Batched ``extract_vl_features`` (one forward) for the training feature cache."""
        features, metas = self.vlm.extract_batch(list_of_images, instructions)
        self.last_vl_meta = metas[-1]
        return features

    # ---------------------------------------------------------------------------------- normalisation
    @torch.no_grad()
    def set_normalization(
        self,
        sensor_mean: Any = None,
        sensor_std: Any = None,
        action_mean: Any = None,
        action_std: Any = None,
        state_mean: Any = None,
        state_std: Any = None,
        motion_mean: Any = None,
        motion_std: Any = None,
    ) -> None:
        """Set per-channel sensor, per-dimension action and robot-state statistics (any subset).

        State statistics may cover the whole pose (the first ``state_dim`` values are kept); a policy
        without state input (``state_dim == 0``) ignores them.
        """
        if sensor_mean is not None or sensor_std is not None:
            mean = self.sensor_encoder.mean if sensor_mean is None else sensor_mean
            std = self.sensor_encoder.std if sensor_std is None else sensor_std
            self.sensor_encoder.set_normalization(mean, std)
        vectors = [("action_mean", action_mean), ("action_std", action_std)]
        if self.state_dim:
            vectors += [("state_mean", state_mean), ("state_std", state_std)]
        if self.motion_input:
            vectors += [("motion_mean", motion_mean), ("motion_std", motion_std)]
        for name, value in vectors:
            if value is None:
                continue
            dim = getattr(self, name).shape[0]
            tensor = torch.as_tensor(value, dtype=torch.float32).reshape(-1)
            if name.startswith("state_"):  # statistics of the whole pose: keep the values the policy uses
                tensor = tensor[:dim]
            if tensor.shape != (dim,) or not torch.isfinite(tensor).all():
                raise ValueError(f"{name} must be {dim} finite values, got {tuple(tensor.shape)}")
            if name.endswith("_std"):
                tensor = tensor.clamp_min(1e-6)
            getattr(self, name).copy_(tensor)

    def normalized_state(self, robot_state: Any, batch: int) -> torch.Tensor | None:
        """Measured pose values -> normalised ``[batch, state_dim]`` (``None``: the policy takes no state).

        ``robot_state`` is ``[state_dim]`` or ``[B, state_dim]``, or the full 7-D pose, of which the first
        ``state_dim`` values are used. Raises ``ValueError`` when a needed state is missing, mis-shaped or
        non-finite.
        """
        if not self.state_dim:
            return None
        if robot_state is None:
            raise ValueError(f"this policy needs robot_state (the first {self.state_dim} pose values)")
        state = _as_tensor(robot_state, "robot_state").to(self.device, torch.float32)
        state = state[None] if state.ndim == 1 else state
        if state.ndim != 2 or state.shape[1] < self.state_dim or state.shape[0] not in (1, batch):
            raise ValueError(
                f"robot_state must be [{self.state_dim}] or [{batch}, {self.state_dim}] (extra trailing "
                f"pose values are ignored), got {list(state.shape)}"
            )
        state = state[:, : self.state_dim]
        if not torch.isfinite(state).all():
            raise ValueError("robot_state contains non-finite values")
        return ((state - self.state_mean) / self.state_std).expand(batch, -1)

    def normalized_motion(self, motion: Any, batch: int) -> torch.Tensor | None:
        """Motion since capture ``[6]``/``[B, 6]`` -> normalised ``[batch, 6]`` (``None``: not an input).

        Raises ``ValueError`` when a needed motion is missing, mis-shaped or non-finite.
        """
        if not self.motion_input:
            return None
        if motion is None:
            raise ValueError(f"this policy needs the motion since capture ([{MOTION_DIM}] per window)")
        value = _as_tensor(motion, "motion").to(self.device, torch.float32)
        value = value[None] if value.ndim == 1 else value
        if value.ndim != 2 or value.shape[1] != MOTION_DIM or value.shape[0] not in (1, batch):
            raise ValueError(
                f"motion must be [{MOTION_DIM}] or [{batch}, {MOTION_DIM}], got {list(value.shape)}"
            )
        if not torch.isfinite(value).all():
            raise ValueError("motion contains non-finite values")
        return ((value - self.motion_mean) / self.motion_std).expand(batch, -1)

    def normalize_actions(self, actions: torch.Tensor) -> torch.Tensor:
        """Physical -> normalised units."""
        return (actions - self.action_mean) / self.action_std

    def denormalize_actions(self, actions: torch.Tensor) -> torch.Tensor:
        """Normalised -> physical units."""
        return actions * self.action_std + self.action_mean

    # ----------------------------------------------------------------------------------------- inference
    def _check_vl(
        self, vl: torch.Tensor, mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if vl.ndim == 2:
            vl = vl[None]
            mask = None if mask is None else mask.reshape(1, -1)
        if vl.ndim != 3 or vl.shape[2] != self.vl_hidden_size or vl.shape[1] == 0:
            raise ValueError(
                f"vl_features must be [T, {self.vl_hidden_size}] or [B, T, {self.vl_hidden_size}], "
                f"got {list(vl.shape)}"
            )
        if mask is not None:
            mask = mask.to(device=vl.device, dtype=torch.bool)
            if mask.shape != vl.shape[:2]:
                raise ValueError(f"vl_mask must be {list(vl.shape[:2])}, got {list(mask.shape)}")
            if not mask.any(dim=1).all():
                raise ValueError("vl_mask leaves a sample with no VL token")
        return vl, mask

    def _encode(self, vl: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        vl, mask = self._check_vl(vl.to(self.device), mask)
        return self.action_expert.encode_vl(vl, mask)

    def _weights_version(self) -> int:
        return sum(p._version for p in self.action_expert.resampler.parameters())

    @torch.no_grad()
    def encode_vl_features(self, vl_features: Any, vl_mask: Any = None) -> EncodedVL:
        """Resample VL features once (``[T,Hvl]`` or ``[B,T,Hvl]``) for reuse by ``predict_actions``."""
        vl = _as_tensor(vl_features, "vl_features")
        mask = None if vl_mask is None else _as_tensor(vl_mask, "vl_mask")
        if not torch.isfinite(vl).all():
            raise ValueError("vl_features contain non-finite values")
        with _eval_mode(self.sensor_encoder, self.action_expert):
            return EncodedVL(self._encode(vl, mask))

    def _cached_encode(self, vl: torch.Tensor, mask: torch.Tensor | None) -> EncodedVL:
        if vl.is_inference():  # no version counter, so in-place edits could not be detected
            return self.encode_vl_features(vl, mask)
        key = (vl._version, None if mask is None else id(mask), self._weights_version())
        cache = self._vl_cache
        if cache is not None and cache[0]() is vl and cache[1] == key:
            return cache[2]
        encoded = self.encode_vl_features(vl, mask)
        self._vl_cache = (weakref.ref(vl), key, encoded)
        return encoded

    def grounding_offset_mm(self, encoded: EncodedVL) -> np.ndarray:
        """The VLM's read-out of the instructed target's offset (target - tip at capture, mm), ``[B, 2]``.

        ``ValueError`` for a policy without the grounding read-out (``action_expert.grounding_input``).
        """
        if self.action_expert.resampler.grounding is None:
            raise ValueError("this policy has no grounding read-out (action_expert.grounding_input: false)")
        return readout_slot(encoded.latents).detach().cpu().double().numpy() * OFFSET_SCALE_MM

    @torch.no_grad()
    def predict_actions(
        self,
        vl_features: Any,
        sensor_window: Any,
        vl_age_s: Any,
        vl_mask: Any = None,
        robot_state: Any = None,
        motion: Any = None,
    ) -> torch.Tensor:
        """Predict a chunk ``[B, H, D]`` in physical units (``[H, D]`` for an unbatched ``[W, C]`` window).

        ``vl_features`` is ``[T,Hvl]``/``[B,T,Hvl]`` or an ``EncodedVL``; a VL batch of 1 is shared by
        every window. ``vl_age_s`` is a float or ``[B]``. ``robot_state`` is the measured pose at the tick
        (see ``normalized_state``); required when ``state_dim > 0``, ignored otherwise. ``motion`` is the
        robot's pose change since the features' capture (``models.action_expert.MOTION_DIM`` values);
        required when ``motion_input``, ignored otherwise. Eval mode, no grad, deterministic.
        """
        window = _as_tensor(sensor_window, "sensor_window")
        unbatched = window.ndim == 2
        window = (window[None] if unbatched else window).to(self.device, torch.float32)
        cfg = self.config.sensor
        if window.ndim != 3 or window.shape[1:] != (cfg.window, cfg.channels):
            raise ValueError(
                f"sensor_window must be [{cfg.window}, {cfg.channels}] or "
                f"[B, {cfg.window}, {cfg.channels}], got {list(_as_tensor(sensor_window, 's').shape)}"
            )
        if not torch.isfinite(window).all():
            raise ValueError("sensor_window contains non-finite values")
        batch = window.shape[0]
        age = _as_tensor(vl_age_s, "vl_age_s").to(self.device, torch.float32).reshape(-1)
        if age.numel() == 1:
            age = age.expand(batch)
        if age.shape != (batch,) or not torch.isfinite(age).all():
            raise ValueError(f"vl_age_s must be a finite float or [{batch}], got {list(age.shape)}")
        if isinstance(vl_features, EncodedVL):
            latents = vl_features.latents.to(self.device)
        else:
            vl = _as_tensor(vl_features, "vl_features")
            mask = None if vl_mask is None else _as_tensor(vl_mask, "vl_mask")
            latents = self._cached_encode(vl, mask).latents
        if latents.shape[0] == 1 and batch > 1:
            latents = latents.expand(batch, -1, -1)
        if latents.shape[0] != batch:
            raise ValueError(f"{latents.shape[0]} VL feature sets for {batch} sensor windows")
        state = self.normalized_state(robot_state, batch)
        moved = self.normalized_motion(motion, batch)
        head = self._tick_runner if (self._tick_runner is not None and batch == 1) else self.head_forward
        with _eval_mode(self.sensor_encoder, self.action_expert):
            actions = head(latents, window, age, state, moved)
        return actions[0] if unbatched else actions

    def set_tick_runner(self, runner: Any) -> None:
        """Run batch-1 ticks through ``runner`` (``head_forward``'s arguments; ``None``: ``head_forward``).

        The inputs are checked and normalised before the runner sees them (a CUDA graph checks nothing).
        """
        self._tick_runner = runner

    def head_forward(
        self,
        latents: torch.Tensor,
        window: torch.Tensor,
        age_s: torch.Tensor,
        state: torch.Tensor | None = None,
        motion: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Physical-unit chunk ``[B, H, D]`` from latents, a float window, ages, normalised state/motion.

        No checks (``predict_actions`` checks first; ``models.fast_graphs`` captures exactly this).
        """
        ae = self.action_expert
        age = ae.age_embedding(age_s)
        motion_mm = self._motion_mm(motion)
        context = ae.context(latents, self.sensor_encoder(window), age, state, motion, motion_mm)
        chunk = self.denormalize_actions(ae.predict(context, age))
        if ae.gate_out is None:
            return chunk
        lateral = ae.lateral_steps_mm(context, age, latents, motion_mm)
        return torch.cat([lateral.to(chunk.dtype), chunk[..., 2:]], dim=-1)

    def _motion_mm(self, motion: torch.Tensor | None) -> torch.Tensor | None:
        """Normalised motion since capture -> mm and rad (``None`` stays ``None``)."""
        return None if motion is None else motion * self.motion_std + self.motion_mean

    # ------------------------------------------------------------------------------------------ training
    def set_stage(self, stage: int) -> None:
        """Stage 1: only sensor encoder + action expert train. Stage 2: LoRA trains too; base VLM never."""
        if stage not in (1, 2):
            raise ValueError(f"stage must be 1 or 2, got {stage}")
        self.sensor_encoder.requires_grad_(True)
        self.action_expert.requires_grad_(True)
        if self.action_expert.resampler.grounding is not None:  # trained in Stage 0 only
            self.action_expert.resampler.grounding.requires_grad_(False)
        if self.vlm_model is not None:
            self.vlm_model.requires_grad_(False)
            if stage == 2:
                if not lora_utils.lora_parameters(self.vlm_model):
                    raise RuntimeError("Stage 2 needs LoRA adapters on the VLM (config.lora.enabled)")
                lora_utils.set_lora_trainable(self.vlm_model, True)
        elif stage == 2:
            raise RuntimeError("Stage 2 needs the VLM: construct with load_vlm=True")

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """Trainable parameters by group (``sensor_encoder``, ``action_expert``, ``lora``)."""
        groups = {
            "sensor_encoder": [p for p in self.sensor_encoder.parameters() if p.requires_grad],
            "action_expert": [p for p in self.action_expert.parameters() if p.requires_grad],
            "lora": [],
        }
        if self.vlm_model is not None:
            groups["lora"] = [p for p in lora_utils.lora_parameters(self.vlm_model) if p.requires_grad]
        return groups

    def trainable_parameter_report(self) -> dict[str, dict[str, int | float]]:
        """Parameter counts (total / trainable / %) per component."""
        return lora_utils.trainable_parameter_report(
            {
                "sensor_encoder": self.sensor_encoder,
                "action_expert": self.action_expert,
                "vlm": self.vlm_model,
            }
        )

    def forward(self, batch: dict[str, Any]) -> PolicyOutput:
        """Training step loss; see the module docstring and docs/CONTRACTS.md for ``batch`` keys."""
        window = batch["sensor_window"].to(self.device, torch.float32)
        n = window.shape[0]
        age_s = batch["vl_age_s"].to(self.device, torch.float32).reshape(-1)
        target = batch["target_actions"].to(self.device, torch.float32)
        step_mask = batch.get("action_mask")
        step_mask = torch.ones(target.shape[:2], dtype=torch.bool) if step_mask is None else step_mask
        step_mask = step_mask.to(self.device, torch.bool)
        if age_s.shape != (n,) or target.shape[0] != n or step_mask.shape != target.shape[:2]:
            raise ValueError(
                f"inconsistent batch: window {list(window.shape)}, vl_age_s {list(age_s.shape)}, "
                f"target {list(target.shape)}, action_mask {list(step_mask.shape)}"
            )
        if "vl_features" in batch:
            latents = self._encode(batch["vl_features"], batch.get("vl_mask"))
        elif "images" in batch:
            latents = self._grouped_vl_latents(
                batch["images"], batch["instructions"], int(batch["group_size"]), n
            )
        else:
            raise ValueError(
                "batch needs either 'vl_features' (Stage 1) or 'images' + 'instructions' (Stage 2)"
            )
        if latents.shape[0] != n:
            raise ValueError(f"{latents.shape[0]} VL feature sets for {n} sensor windows")
        state = self.normalized_state(batch.get("robot_state"), n)
        moved = self.normalized_motion(batch.get("motion"), n)
        ae = self.action_expert
        age = ae.age_embedding(age_s)
        motion_mm = self._motion_mm(moved)
        context = ae.context(latents, self.sensor_encoder(window), age, state, moved, motion_mm)
        loss, metrics = ae.loss(context, age, self.normalize_actions(target), step_mask)
        if ae.gate_out is not None:  # the lateral steps come from the gates, so they train on them
            lateral = ae.lateral_steps_mm(context, age, latents, motion_mm)
            error = (lateral - target[..., :2]) / self.action_std[:2]
            lateral_loss = masked_mean_square(error, step_mask)
            loss = loss + lateral_loss
            metrics["lateral_mse_norm"] = float(lateral_loss.detach())
        metrics["loss"] = float(loss.detach())
        metrics["vl_age_mean_s"] = float(age_s.mean())
        return PolicyOutput(loss, metrics)

    def _grouped_vl_latents(
        self, images: Sequence[Sequence[np.ndarray]], instructions: Sequence[str], group_size: int, n: int
    ) -> torch.Tensor:
        """One VLM forward for G groups, resampled once per group and shared by its R windows."""
        if group_size < 1 or len(images) * group_size != n:
            raise ValueError(f"{len(images)} image groups x group_size {group_size} != {n} sensor windows")
        vlm = self.vlm
        features = vlm.forward_features(vlm.prepare_inputs(images, instructions))
        padded = nn.utils.rnn.pad_sequence([vlm.to_feature_dtype(f) for f in features], batch_first=True)
        lengths = torch.tensor([f.shape[0] for f in features], device=padded.device)
        mask = torch.arange(padded.shape[1], device=padded.device)[None] < lengths[:, None]
        latents = self._encode(padded, mask)
        return latents.repeat_interleave(group_size, dim=0)

    # ------------------------------------------------------------------------------------- state dict
    def head_state_dict(self) -> dict[str, torch.Tensor]:
        """Everything except the VLM: sensor encoder, action expert, normalisation buffers."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("vlm_model.")}


def grounding_head_config(config: PolicyConfig) -> GroundingHeadConfig | None:
    """The shape of the grounding read-out of ``config`` (``None`` without ``grounding_input``)."""
    ae, vlm = config.action_expert, config.vlm
    if not ae.grounding_input:
        return None
    if ae.vl_token_positions % vlm.num_views:
        raise ValueError(
            f"vl_token_positions {ae.vl_token_positions} is not a multiple of {vlm.num_views} views"
        )
    per_view = ae.vl_token_positions // vlm.num_views
    grid = token_grid(per_view, (vlm.image_height, vlm.image_width))
    return GroundingHeadConfig(vlm.hidden_size, vlm.num_views, *grid)


class _eval_mode:
    """Temporarily put modules in eval mode, restoring each submodule's own flag afterwards."""

    def __init__(self, *modules: nn.Module):
        self.modules = modules
        self.switched: list[nn.Module] = []

    def __enter__(self):
        # Only the modules in training mode are switched and restored: at inference (everything already in
        # eval mode) ``eval()`` and restoring every flag through ``nn.Module.__setattr__`` cost ~1 ms a tick.
        self.switched = [m for module in self.modules for m in module.modules() if m.training]
        for module in self.switched:
            module.training = False
        return self

    def __exit__(self, *exc):
        for module in self.switched:
            module.training = True
        return False
