"""The fast path as node parameters: what each node may switch on, and its fallbacks on a host without it.

vlm_node takes the VLM steps of ``models.fast_path`` (attention kernel, batched vision attention, static
shapes, compile, CUDA streams, dtype and quantisation), action_expert_node the CUDA-graph tick and its
high-priority stream. Steps that change the feature layout (pixel bounds, token selection) are not here:
they are part of the model config the policy was trained with. ``vlm_dtype`` and ``quantization`` change
the features' values slightly; the node says so in its diagnostics. A step the host cannot run (CUDA
options on a CPU device, flash-attn without the package, a quantisation backend that is missing) is
switched off with one log line and a diagnostics entry: :func:`vlm_fast_path` / :func:`expert_fast_path`
return those notes beside the settings.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from typing import Any

from insertion_vla_ros.ros_io.diagnostics import Level, TaskStatus
from insertion_vla_ros.ros_io.parameters import ParamSpec
from models.config import ATTN_IMPLEMENTATIONS, DTYPES
from models.fast_path import COMPILE_MODES, FastPathConfig
from models.quantize import QUANTIZATIONS
from models.vision_attention import VISION_ATTENTION

STATIC_PAD_MULTIPLE = 64
"""``static_shapes``: the prompt is trimmed after the last image and padded to a multiple of this."""

VLM_FAST_PATH_PARAMETERS: list[ParamSpec] = [
    ParamSpec(
        "attn_implementation",
        "",
        "VLM attention kernel ('' keeps the checkpoint's; flash_attention_2 needs CUDA and flash-attn).",
        read_only=True,
        choices=("", *ATTN_IMPLEMENTATIONS),
    ),
    ParamSpec(
        "vision_attention",
        "per_window",
        "Vision tower windows: per_window (transformers' loop) or batched (one SDPA call per layer, "
        "same features).",
        read_only=True,
        choices=VISION_ATTENTION,
    ),
    ParamSpec(
        "static_shapes",
        False,
        f"Trim the prompt after the last image and pad to {STATIC_PAD_MULTIPLE} tokens (same features; "
        "fixed shapes for compile).",
        read_only=True,
    ),
    ParamSpec("compile", False, "torch.compile the VLM at configure (slow first inference).", read_only=True),
    ParamSpec("compile_mode", "default", "torch.compile mode.", read_only=True, choices=COMPILE_MODES),
    ParamSpec(
        "cuda_streams",
        False,
        "CUDA: pinned inputs and a low-priority stream of the VLM's own, so the action expert is not "
        "queued behind it.",
        read_only=True,
    ),
    ParamSpec(
        "vlm_dtype",
        "",
        "VLM weight dtype override ('' keeps the checkpoint's); features then approximate the trained ones.",
        read_only=True,
        choices=("", *DTYPES),
    ),
    ParamSpec(
        "quantization",
        "none",
        "VLM weight quantisation (torchao); features then approximate the trained ones.",
        read_only=True,
        choices=QUANTIZATIONS,
    ),
]

EXPERT_FAST_PATH_PARAMETERS: list[ParamSpec] = [
    ParamSpec(
        "cuda_graphs",
        False,
        "CUDA: replay the action expert's tick (sensor encoder, context, head) from a CUDA graph.",
        read_only=True,
    ),
    ParamSpec(
        "cuda_streams",
        False,
        "CUDA: run the action expert on a high-priority stream (ahead of queued VLM kernels).",
        read_only=True,
    ),
]


@dataclass
class FastPathChoice:
    """What a node runs: the settings after fallbacks, the notes on what fell back or approximates."""

    fast: FastPathConfig = field(default_factory=FastPathConfig)
    cuda_graphs: bool = False
    cuda_streams: bool = False
    fallbacks: list[str] = field(default_factory=list)
    approximations: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """One line for the log and diagnostics: the steps that are on."""
        plain = FastPathConfig()
        on = [
            f"{name}={value}"
            for name, value in self.fast.to_dict().items()
            if value != getattr(plain, name) and name not in ("compile_backend",)
        ]
        on += [name for name in ("cuda_graphs", "cuda_streams") if getattr(self, name)]
        return ", ".join(on) if on else "plain"


def report_fast_path(task: TaskStatus, choice: FastPathChoice | None) -> None:
    """Add the fast path in use to a diagnostics task; a fallback makes the task WARN."""
    if choice is None:
        return
    task.values["fast path"] = choice.summary()
    if choice.approximations:
        task.values["features approximate the checkpoint's"] = ", ".join(choice.approximations)
    if choice.fallbacks:
        task.values["fast path fallbacks"] = "; ".join(choice.fallbacks)
        task.merge(Level.WARN, "fast path fell back: " + "; ".join(choice.fallbacks))


def _is_cuda(device: str) -> bool:
    return str(device).startswith("cuda")


def vlm_fast_path(params: dict[str, Any], device: str) -> FastPathChoice:
    """vlm_node's fast path from its parameters on ``device`` (see the module docstring)."""
    choice = FastPathChoice()
    cuda = _is_cuda(device)
    attn = params["attn_implementation"] or None
    if attn == "flash_attention_2" and not (cuda and importlib.util.find_spec("flash_attn") is not None):
        choice.fallbacks.append(
            f"attn_implementation flash_attention_2 needs CUDA and flash-attn ({device}): sdpa"
        )
        attn = "sdpa"
    streams = bool(params["cuda_streams"])
    if streams and not cuda:
        choice.fallbacks.append(f"cuda_streams needs a CUDA device ({device}): off")
        streams = False
    quantization = params["quantization"]
    if quantization != "none":
        quantization = _usable_quantization(quantization, device, choice.fallbacks)
    dtype = params["vlm_dtype"] or None
    if dtype is not None:
        choice.approximations.append(f"vlm_dtype {dtype}")
    if quantization != "none":
        choice.approximations.append(f"quantization {quantization}")
    static = bool(params["static_shapes"])
    choice.fast = FastPathConfig(
        dtype=dtype,
        attn_implementation=attn,
        vision_attention=params["vision_attention"],
        trim_tail=static,
        pad_to_multiple=STATIC_PAD_MULTIPLE if static else 0,
        compile=bool(params["compile"]),
        compile_mode=params["compile_mode"],
        quantization=quantization,
        pin_memory=streams,
        dedicated_stream=streams,
    ).validate()
    choice.cuda_streams = streams
    return choice


def expert_fast_path(params: dict[str, Any], device: str) -> FastPathChoice:
    """action_expert_node's fast path from its parameters on ``device``."""
    choice = FastPathChoice()
    cuda = _is_cuda(device)
    for name in ("cuda_graphs", "cuda_streams"):
        wanted = bool(params[name])
        if wanted and not cuda:
            choice.fallbacks.append(f"{name} needs a CUDA device ({device}): off")
            wanted = False
        setattr(choice, name, wanted)
    return choice


def _usable_quantization(method: str, device: str, fallbacks: list[str]) -> str:
    from models.quantize import QuantizationError, resolve_backend

    try:
        resolve_backend(method, "auto", "cuda" if _is_cuda(device) else "cpu")
    except QuantizationError as error:
        fallbacks.append(f"quantization {method}: {error}: none")
        return "none"
    return method
