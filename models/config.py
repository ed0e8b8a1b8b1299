"""Model configuration: a tree of dataclasses that travels inside every checkpoint.

``PolicyConfig.to_dict()`` / ``PolicyConfig.from_dict()`` round-trip through plain JSON/YAML values and
reject unknown keys with an error that names the key and where it was found, so a typo in a YAML file or a
checkpoint written by a newer version fails loudly instead of being ignored. ``load_model_config("tiny")``
reads ``config/models/tiny.yaml``; any other argument that is an existing file is read as a YAML path.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, get_type_hints

from contracts.constants import ACTION_PERIOD_S, SENSOR_RATE_HZ

T = TypeVar("T")

DTYPES = ("float32", "float16", "bfloat16")
TOKEN_SELECTIONS = ("vision", "all", "pooled")
ATTN_IMPLEMENTATIONS = ("auto", "flash_attention_2", "sdpa", "eager")
PROCESSOR_BACKENDS = ("auto", "torchvision", "pil")
HEADS = ("regression", "flow")
STATE_DIM_MAX = 7
"""The measured pose has 7 values: x, y, z (mm), rotation vector (rad), gripper."""


class ConfigError(ValueError):
    """A model configuration is malformed (unknown key, wrong type or out-of-range value)."""


@dataclass
class VLMConfig:
    """The vision-language model that turns N camera views + an instruction into VL features.

    ``model_name_or_path`` is a local directory, a hub id already in the local cache (never downloaded:
    ``local_files_only``), or ``builtin:tiny`` for the tiny test model built on first use. ``architecture``
    holds Qwen2.5-VL config overrides used only to build the model with random weights (benchmarks).
    ``feature_layer`` -1 takes the language model's final (normed) hidden states; another index takes that
    entry of ``hidden_states``. ``pooled_grid`` is the per-view grid that ``token_selection="pooled"``
    average-pools the vision tokens to (``pooled_grid**2`` tokens per view).
    """

    model_name_or_path: str = "Qwen/Qwen2.5-VL-3B-Instruct"
    hidden_size: int = 2048
    dtype: str = "bfloat16"
    attn_implementation: str = "auto"
    processor_backend: str = "auto"
    min_pixels: int = 56 * 56
    max_pixels: int = 256 * 28 * 28
    token_selection: str = "vision"
    pooled_grid: int = 4
    feature_layer: int = -1
    feature_dtype: str = "float32"
    num_views: int = 5
    image_height: int = 360
    image_width: int = 640
    prompt_prefix: str = "Task: "
    local_files_only: bool = True
    architecture: dict[str, Any] | None = None

    def validate(self) -> None:
        """Raise ``ConfigError`` for values outside their allowed sets."""
        _one_of("vlm.dtype", self.dtype, DTYPES)
        _one_of("vlm.feature_dtype", self.feature_dtype, DTYPES)
        _one_of("vlm.token_selection", self.token_selection, TOKEN_SELECTIONS)
        _one_of("vlm.attn_implementation", self.attn_implementation, ATTN_IMPLEMENTATIONS)
        _one_of("vlm.processor_backend", self.processor_backend, PROCESSOR_BACKENDS)
        _positive("vlm.num_views", self.num_views)
        _positive("vlm.hidden_size", self.hidden_size)
        _positive("vlm.pooled_grid", self.pooled_grid)
        if not 0 < self.min_pixels <= self.max_pixels:
            raise ConfigError(
                f"vlm: need 0 < min_pixels <= max_pixels, got {self.min_pixels}, {self.max_pixels}"
            )


@dataclass
class LoRAConfig:
    """peft LoRA on the VLM's language model only (the vision tower stays frozen and un-adapted)."""

    enabled: bool = True
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])

    def validate(self) -> None:
        """Raise ``ConfigError`` for a non-positive rank or a dropout outside [0, 1)."""
        _positive("lora.r", self.r)
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"lora.dropout must be in [0, 1), got {self.dropout}")
        if not self.target_modules:
            raise ConfigError("lora.target_modules must not be empty")


@dataclass
class SensorEncoderConfig:
    """Causal sensor window ``[B, window, channels]`` -> tokens.

    The first ``force_channels`` channels are force (N), the rest the OCT A-line. Time is cut into patches
    of ``patch_len`` samples (the oldest patch is left-padded when ``window`` is not a multiple).
    """

    window: int = 65
    channels: int = 1026
    force_channels: int = 1
    patch_len: int = 13
    aline_embed_dim: int = 64
    sample_rate_hz: float = SENSOR_RATE_HZ

    def validate(self) -> None:
        """Raise ``ConfigError`` when the force channels do not leave at least one A-line channel."""
        _positive("sensor.window", self.window)
        _positive("sensor.patch_len", self.patch_len)
        _positive("sensor.aline_embed_dim", self.aline_embed_dim)
        if not 0 < self.force_channels < self.channels:
            raise ConfigError(
                f"sensor: need 0 < force_channels < channels, got {self.force_channels}, {self.channels}"
            )

    @property
    def num_patches(self) -> int:
        """Number of temporal patches (tokens per signal)."""
        return -(-self.window // self.patch_len)


@dataclass
class ActionExpertConfig:
    """Transformer that fuses VL latents, sensor tokens and the feature age into an action chunk.

    VL tokens are first compressed by a latent resampler (``vl_latents`` learned queries, one cross-attention)
    whose result depends only on the VL features, so it is computed once per feature and reused for every
    tick. ``head="regression"`` predicts the chunk in one pass; ``head="flow"`` integrates a flow-matching
    velocity field for ``flow_steps`` Euler steps from a fixed initial noise (deterministic in eval).
    """

    d_model: int = 256
    num_heads: int = 8
    context_layers: int = 2
    decoder_layers: int = 2
    ffn_mult: int = 4
    dropout: float = 0.0
    vl_latents: int = 16
    horizon: int = 8
    action_dim: int = 7
    head: str = "regression"
    flow_steps: int = 10
    flow_seed: int = 0
    max_age_s: float = 3.4
    # Learned embeddings for the first ``vl_token_positions`` VL token indices (0: none). Cross-attention
    # is blind to token order, and for a fixed view count and image size a token's index is its view and
    # image position: where the target appears in a view is what aligns the needle over it.
    vl_token_positions: int = 0
    # Robot state input: the first ``state_dim`` values of the measured pose (x, y, z in mm, rotation
    # vector, gripper) at the tick, one more context token (0: no state input). DESIGN allows state as
    # long as it is what the robot actually did; with the tip position, "which layer am I in" is no longer
    # something a memoryless 100 ms sensor window has to guess.
    state_dim: int = 0
    # Motion since capture: the robot's pose change from the capture stamp of the features' newest image to
    # the tick (translation mm, rotation vector rad, base frame), one more context token. A feature shows
    # the scene as the cameras saw it at capture; the tool camera rides on the needle, so by the time the
    # feature is used the robot has moved by this much, which its current state alone cannot tell.
    motion_input: bool = False
    # Grounding read-out: the VLM's own Stage 0 grounding head (``models.grounding``, shipped beside the
    # VLM weights, frozen) reads the instructed target's offset from the VL tokens, and its estimate is one
    # more VL latent. A pretrained read-out the few demonstrations of Stage 1 could never learn themselves;
    # it sees nothing but the features. Needs ``vl_token_positions`` (the head's token grid). With
    # ``motion_input`` too, the estimate also enters as it is at the tick (offset at capture minus the
    # lateral motion since), so no policy has to learn that subtraction from a few demonstrations.
    grounding_input: bool = False
    # Lateral steps from the read-out: the chunk's dx, dy are not decoded freely but as learned gates on
    # the read-out (step j moves g_j in [0, 1] of the offset still left after steps < j), so the policy
    # decides when and how fast to align and the VLM says where to. A free decoder fitted on a few
    # demonstrations maps the read-out to steps too loosely to stay within 1 mm; the scripted expert's
    # chunks are exactly of this form. Needs ``grounding_input``; with ``motion_input`` the offset is
    # compensated for the motion since capture, without it (an ablation) it is the offset at capture.
    lateral_from_readout: bool = False

    @property
    def encoded_vl_tokens(self) -> int:
        """Tokens ``encode_vl`` returns per feature: the resampler's latents (+ the grounding latent)."""
        return self.vl_latents + int(self.grounding_input)

    def validate(self) -> None:
        """Raise ``ConfigError`` for an unknown head or sizes that do not divide."""
        _one_of("action_expert.head", self.head, HEADS)
        for name in (
            "d_model",
            "num_heads",
            "context_layers",
            "decoder_layers",
            "vl_latents",
            "horizon",
            "action_dim",
            "flow_steps",
            "ffn_mult",
        ):
            _positive(f"action_expert.{name}", getattr(self, name))
        if self.vl_token_positions < 0:
            raise ConfigError(f"action_expert.vl_token_positions must be >= 0, got {self.vl_token_positions}")
        if not 0 <= self.state_dim <= STATE_DIM_MAX:
            raise ConfigError(f"action_expert.state_dim must be in 0..{STATE_DIM_MAX}, got {self.state_dim}")
        if self.d_model % self.num_heads:
            raise ConfigError(
                f"action_expert.d_model {self.d_model} is not divisible by num_heads {self.num_heads}"
            )
        if self.grounding_input and not self.vl_token_positions:
            raise ConfigError(
                "action_expert.grounding_input needs vl_token_positions (the head's token grid)"
            )
        if self.lateral_from_readout and not self.grounding_input:
            raise ConfigError("action_expert.lateral_from_readout needs grounding_input (the read-out)")
        if self.lateral_from_readout and self.action_dim < 2:
            raise ConfigError("action_expert.lateral_from_readout needs action_dim >= 2 (dx, dy)")


AGE_RECIPES = ("unknown", "fresh", "reuse", "matched")


@dataclass
class StalenessConfig:
    """Which feature ages the action expert was trained on (set by the trainer, kept in the checkpoint).

    ``fresh``: age of the newest frame only (k = 0); ``reuse``: ages over one VLM period from fresh
    (k uniform in [0, R)); ``matched``: the ages the node sees deployed, ``vlm_latency_s`` + U[0,
    ``vlm_period_s``). ``unknown``: a checkpoint from before recipes were recorded. ``min_age_s`` /
    ``max_age_s`` bound the trained ages; the node's default maximum feature age follows from them.
    """

    recipe: str = "unknown"
    vlm_latency_s: float = 0.0
    vlm_period_s: float = 0.0
    min_age_s: float = 0.0
    max_age_s: float = 0.0

    def validate(self) -> None:
        """Raise ``ConfigError`` for an unknown recipe or an empty age range."""
        _one_of("staleness.recipe", self.recipe, AGE_RECIPES)
        if self.recipe != "unknown" and not 0.0 <= self.min_age_s <= self.max_age_s:
            raise ConfigError(
                f"staleness: need 0 <= min_age_s <= max_age_s, got {self.min_age_s}, {self.max_age_s}"
            )

    @property
    def known(self) -> bool:
        """Whether the trained ages are recorded."""
        return self.recipe != "unknown"


@dataclass
class PolicyConfig:
    """The whole policy: VLM, LoRA, sensor encoder, action expert and the async timing."""

    name: str = "default"
    vlm: VLMConfig = field(default_factory=VLMConfig)
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    sensor: SensorEncoderConfig = field(default_factory=SensorEncoderConfig)
    action_expert: ActionExpertConfig = field(default_factory=ActionExpertConfig)
    staleness: StalenessConfig = field(default_factory=StalenessConfig)
    action_period_s: float = ACTION_PERIOD_S
    vlm_period_s: float = 1.7
    vlm_reuse_count: int = 17

    def validate(self) -> PolicyConfig:
        """Check every section; return ``self`` so calls chain."""
        self.vlm.validate()
        self.lora.validate()
        self.sensor.validate()
        self.action_expert.validate()
        self.staleness.validate()
        _positive("vlm_reuse_count", self.vlm_reuse_count)
        if self.action_period_s <= 0 or self.vlm_period_s <= 0:
            raise ConfigError("action_period_s and vlm_period_s must be positive")
        return self

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (JSON/YAML-serialisable)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PolicyConfig:
        """Build from a nested dict; unknown keys raise ``ConfigError`` naming them; missing keys default."""
        return _from_dict(cls, data, "").validate()


def _one_of(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{name} must be one of {allowed}, got {value!r}")


def _positive(name: str, value: int | float) -> None:
    if not value > 0:
        raise ConfigError(f"{name} must be positive, got {value!r}")


def _from_dict(cls: type[T], data: Any, where: str) -> T:
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping, got {type(data).__name__}")
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        prefix = f"{where}." if where else ""
        raise ConfigError(
            f"unknown config key {prefix}{unknown[0]!s}"
            + (f" (and {unknown[1:]})" if len(unknown) > 1 else "")
            + f"; known keys of {cls.__name__}: {sorted(fields)}"
        )
    kwargs = {}
    for key, value in data.items():
        hint = hints[key]
        path = f"{where}.{key}" if where else key
        if dataclasses.is_dataclass(hint):
            kwargs[key] = _from_dict(hint, value, path)
        else:
            kwargs[key] = _coerce(hint, value, path)
    return cls(**kwargs)


def _coerce(hint: Any, value: Any, path: str) -> Any:
    """Light type check so ``window: "65"`` fails here rather than deep inside torch."""
    if hint is bool and not isinstance(value, bool):
        raise ConfigError(f"{path} must be a bool, got {value!r}")
    if hint is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ConfigError(f"{path} must be an int, got {value!r}")
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path} must be a number, got {value!r}")
        return float(value)
    if hint is str and not isinstance(value, str):
        raise ConfigError(f"{path} must be a string, got {value!r}")
    return value


def config_search_dirs() -> list[Path]:
    """Where named model configs are looked up, in order."""
    dirs = []
    if os.environ.get("INSERTION_VLA_ROOT"):
        dirs.append(Path(os.environ["INSERTION_VLA_ROOT"]) / "config" / "models")
    dirs.append(Path(__file__).resolve().parent.parent / "config" / "models")
    dirs.append(Path(sys.prefix) / "share" / "insertion_vla_ros" / "config" / "models")
    return dirs


def load_model_config(name_or_path: str | os.PathLike) -> PolicyConfig:
    """Read ``config/models/<name>.yaml`` (searching ``config_search_dirs()``) or a YAML file path."""
    import yaml

    candidate = Path(name_or_path)
    if candidate.suffix in (".yaml", ".yml") or candidate.is_file():
        if not candidate.is_file():
            raise FileNotFoundError(f"model config file not found: {candidate}")
        path = candidate
    else:
        tried = [d / f"{name_or_path}.yaml" for d in config_search_dirs()]
        path = next((p for p in tried if p.is_file()), None)
        if path is None:
            raise FileNotFoundError(
                f"no model config named {str(name_or_path)!r}; looked in " + ", ".join(str(p) for p in tried)
            )
    data = yaml.safe_load(path.read_text()) or {}
    try:
        return PolicyConfig.from_dict(data)
    except ConfigError as error:
        raise ConfigError(f"{path}: {error}") from None
