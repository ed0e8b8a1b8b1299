"""``profile_vlm``: time the VLM feature extraction and recommend the asynchronous rates.

    profile_vlm --config tiny --num-samples 5 --json
    profile_vlm --config qwen2_5_vl_3b --random-weights --device cuda:0 --views 5 --image-size 640x360
    profile_vlm --config qwen2_5_vl_3b --model-path /models/qwen --write-config my_rig.yaml

N timed end-to-end extractions (preprocessing + forward + copy to CPU, what the vlm_node pays) run after
warm-up. The rule (``recommend``): VLM period = p95 latency x (1 + margin), rounded up to a whole number of
action periods; reuse count = period / action period; sensor window = sensor rate x action period; the
VL staleness bound is two periods (one late inference is tolerated before HOLD). ``--write-config`` writes
a copy of the nodes' parameter YAML with ``vlm_period_s``, ``action_period_s`` and ``vl_max_age_s`` set,
and the fast path profiled as vlm_node parameters (``nodes.fast_path_params``), usable as ``bringup
--params-file`` or the launch file's ``config_file:=``. ``--search-fast-path`` first times every
feature-preserving combination the node can switch on for this device (batched vision attention, static
shapes, CUDA streams on a GPU) and profiles the fastest, so ``--write-config`` then holds the
measured best set for the card at hand.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import resource
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from contracts.constants import ACTION_PERIOD_S, SENSOR_RATE_HZ

DEFAULT_MARGIN = 0.10
NODE_PARAMS_FILE = "insertion_vla.yaml"
RESULT_KEYS = (
    "latency_mean_ms",
    "latency_p50_ms",
    "latency_p95_ms",
    "latency_p99_ms",
    "latency_min_ms",
    "latency_max_ms",
    "achievable_hz",
    "tokens_per_view",
    "num_tokens",
    "sequence_length",
    "peak_memory_mb",
    "peak_memory_kind",
    "recommended_vlm_period_s",
    "recommended_vlm_update_hz",
    "recommended_vlm_reuse_count",
    "recommended_sensor_window",
    "recommended_vl_max_age_s",
    "margin",
    "action_period_s",
    "sensor_rate_hz",
    "num_samples",
    "warmup",
    "config",
)


@dataclass(frozen=True)
class Recommendation:
    """Asynchronous timing derived from a measured p95 latency (see ``recommend``)."""

    vlm_period_s: float
    vlm_update_hz: float
    vlm_reuse_count: int
    sensor_window: int
    vl_max_age_s: float


def recommend(
    p95_ms: float,
    action_period_s: float = ACTION_PERIOD_S,
    margin: float = DEFAULT_MARGIN,
    sensor_rate_hz: float = SENSOR_RATE_HZ,
) -> Recommendation:
    """Apply the rule: period = ceil(p95 x (1 + margin) / action period) action periods (at least one).

    >>> recommend(1484.0).vlm_period_s, recommend(1484.0).vlm_reuse_count
    (1.7, 17)
    """
    if not (math.isfinite(p95_ms) and p95_ms >= 0):
        raise ValueError(f"p95 latency must be a finite non-negative number of ms, got {p95_ms}")
    if action_period_s <= 0 or margin < 0 or sensor_rate_hz <= 0:
        raise ValueError("action_period_s and sensor_rate_hz must be positive and margin non-negative")
    action_ms = action_period_s * 1e3
    # The tolerance keeps an exact multiple (e.g. 909.0909.. ms x 1.1 = 1000 ms) from rounding up a step.
    steps = max(1, math.ceil(p95_ms * (1.0 + margin) / action_ms - 1e-9))
    period_s = round(steps * action_period_s, 9)
    return Recommendation(
        vlm_period_s=period_s,
        vlm_update_hz=1.0 / period_s,
        vlm_reuse_count=steps,
        sensor_window=max(1, round(sensor_rate_hz * action_period_s)),
        vl_max_age_s=round(2 * period_s, 9),
    )


def latency_summary(samples_s: Sequence[float]) -> dict[str, float]:
    """Mean, p50, p95, p99, min, max (ms) and achievable Hz (back-to-back: 1 / mean) of latencies in s."""
    values = np.asarray(samples_s, dtype=np.float64) * 1e3
    if values.size == 0:
        raise ValueError("need at least one timed sample")
    mean = float(values.mean())
    return {
        "latency_mean_ms": mean,
        "latency_p50_ms": float(np.percentile(values, 50)),
        "latency_p95_ms": float(np.percentile(values, 95)),
        "latency_p99_ms": float(np.percentile(values, 99)),
        "latency_min_ms": float(values.min()),
        "latency_max_ms": float(values.max()),
        "achievable_hz": 1e3 / mean if mean > 0 else float("inf"),
    }


def time_calls(fn: Callable[[], Any], num_samples: int, warmup: int, sync: Callable[[], None] | None = None):
    """Run ``fn`` ``warmup`` times, then ``num_samples`` timed times; return (seconds list, last result)."""
    result = None
    for _ in range(warmup):
        result = fn()
    samples = []
    for _ in range(num_samples):
        if sync is not None:
            sync()
        start = time.perf_counter()
        result = fn()
        if sync is not None:
            sync()
        samples.append(time.perf_counter() - start)
    return samples, result


def random_views(num_views: int, width: int, height: int, seed: int = 0) -> list[np.ndarray]:
    """``num_views`` random HxWx3 uint8 RGB images (content does not change the latency)."""
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (height, width, 3), dtype=np.uint8) for _ in range(num_views)]


def parse_image_size(text: str) -> tuple[int, int]:
    """``"640x360"`` -> ``(640, 360)`` (width, height)."""
    try:
        width, height = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"image size must be WIDTHxHEIGHT, e.g. 640x360, got {text!r}"
        ) from None
    if width < 1 or height < 1:
        raise argparse.ArgumentTypeError(f"image size must be positive, got {text!r}")
    return width, height


def peak_memory_mb(device) -> tuple[float, str]:
    """CUDA: peak allocated by torch since the last reset; CPU: the process's peak resident set size."""
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "cuda_max_allocated"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, "cpu_process_max_rss"


def profile(
    config_name: str,
    *,
    random_weights: bool = False,
    model_path: str | None = None,
    views: int | None = None,
    image_size: tuple[int, int] | None = None,
    device: str = "cpu",
    num_samples: int = 20,
    warmup: int = 3,
    margin: float = DEFAULT_MARGIN,
    action_period_s: float | None = None,
    sensor_rate_hz: float | None = None,
    fast: dict[str, Any] | None = None,
    instruction: str = "Insert the needle into the target.",
    seed: int = 0,
) -> dict[str, Any]:
    """Build the VLM for ``config_name``, time ``num_samples`` extractions and return the result dict."""
    import torch

    from models.config import load_model_config
    from models.fast_path import FastPathConfig, FastVLM, load_extractor, prepare_model

    if num_samples < 1 or warmup < 0:
        raise ValueError("num_samples must be >= 1 and warmup >= 0")
    policy_config = load_model_config(config_name)
    vlm_config = policy_config.vlm
    if model_path is not None:
        vlm_config = dataclasses.replace(vlm_config, model_name_or_path=model_path)
    if views is not None:
        vlm_config = dataclasses.replace(vlm_config, num_views=views)
    width, height = image_size or (vlm_config.image_width, vlm_config.image_height)
    vlm_config = dataclasses.replace(vlm_config, image_width=width, image_height=height)
    fast_config = FastPathConfig.from_dict(fast or {})
    torch_device = torch.device(device)
    extractor = load_extractor(vlm_config, device=torch_device, random_weights=random_weights, seed=seed)
    applied = prepare_model(extractor.hf_model, fast_config, torch_device)
    runner = FastVLM(extractor, fast_config)
    images = random_views(vlm_config.num_views, width, height, seed=seed)
    sync = (lambda: torch.cuda.synchronize(torch_device)) if torch_device.type == "cuda" else None
    if torch_device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(torch_device)
    samples, (features, meta) = time_calls(
        lambda: runner.extract(images, instruction), num_samples, warmup, sync
    )
    memory, memory_kind = peak_memory_mb(torch_device)
    action_period_s = policy_config.action_period_s if action_period_s is None else action_period_s
    sensor_rate_hz = policy_config.sensor.sample_rate_hz if sensor_rate_hz is None else sensor_rate_hz
    summary = latency_summary(samples)
    rec = recommend(summary["latency_p95_ms"], action_period_s, margin, sensor_rate_hz)
    effective = runner.config
    import transformers

    result: dict[str, Any] = {
        **summary,
        "tokens_per_view": int(max(meta.tokens_per_view)),
        "num_tokens": int(features.shape[0]),
        "sequence_length": runner.last_sequence_length,
        "peak_memory_mb": memory,
        "peak_memory_kind": memory_kind,
        "recommended_vlm_period_s": rec.vlm_period_s,
        "recommended_vlm_update_hz": rec.vlm_update_hz,
        "recommended_vlm_reuse_count": rec.vlm_reuse_count,
        "recommended_sensor_window": rec.sensor_window,
        "recommended_vl_max_age_s": rec.vl_max_age_s,
        "margin": margin,
        "action_period_s": action_period_s,
        "sensor_rate_hz": sensor_rate_hz,
        "num_samples": num_samples,
        "warmup": warmup,
        "config": {
            "model_config": config_name,
            "model": vlm_config.model_name_or_path,
            "random_weights": random_weights,
            "device": str(torch_device),
            "device_name": torch.cuda.get_device_name(torch_device) if torch_device.type == "cuda" else None,
            "views": vlm_config.num_views,
            "image_size": [width, height],
            "dtype": effective.dtype,
            "attn_implementation": applied.get(
                "attn_implementation",
                getattr(extractor.hf_model.config, "_attn_implementation", effective.attn_implementation),
            ),
            "min_pixels": effective.min_pixels,
            "max_pixels": effective.max_pixels,
            "token_selection": effective.token_selection,
            "fast_path": fast_config.to_dict(),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
        },
    }
    if tuple(result) != RESULT_KEYS:  # the schema is part of the contract (tests check it too)
        raise RuntimeError(f"profile result keys drifted from RESULT_KEYS: {list(result)}")
    return result


def default_node_params_file() -> Path:
    """The nodes' ``config/insertion_vla.yaml`` (this source tree, else the installed share folder)."""
    candidates = []
    if os.environ.get("INSERTION_VLA_ROOT"):
        candidates.append(Path(os.environ["INSERTION_VLA_ROOT"]) / "config" / NODE_PARAMS_FILE)
    candidates.append(Path(__file__).resolve().parent.parent / "config" / NODE_PARAMS_FILE)
    candidates.append(Path(sys.prefix) / "share" / "insertion_vla_ros" / "config" / NODE_PARAMS_FILE)
    for path in candidates:
        if path.is_file():
            return path
    raise FileNotFoundError("node parameter file not found; looked in " + ", ".join(map(str, candidates)))


def fast_path_node_params(fast: dict[str, Any]) -> dict[str, Any]:
    """vlm_node parameters (``nodes.fast_path_params``) for a profiled ``FastPathConfig`` dict.

    Raises ``ValueError`` for steps that are not node parameters (pixel bounds, token selection: they are
    the feature layout, set in the model config the policy is trained with) or static shapes other than the
    node's ``static_shapes`` (trim + pad to 64).
    """
    from models.fast_path import FastPathConfig

    plain = FastPathConfig().to_dict()
    changed = {k: v for k, v in fast.items() if v != plain[k]}
    layout = sorted(set(changed) & {"min_pixels", "max_pixels", "token_selection"})
    if layout:
        raise ValueError(f"{layout} change the feature layout: set them in the model config, not the node")
    static = changed.pop("trim_tail", False), changed.pop("pad_to_multiple", 0)
    if static not in ((False, 0), (True, 64)):
        raise ValueError("vlm_node's static_shapes is trim_tail + pad_to_multiple 64; profile with those")
    streams = changed.pop("pin_memory", False), changed.pop("dedicated_stream", False)
    if streams[0] != streams[1]:
        raise ValueError("vlm_node's cuda_streams is pin_memory + dedicated_stream together")
    params = {
        "attn_implementation": fast["attn_implementation"] or "",
        "vision_attention": fast["vision_attention"],
        "static_shapes": static[0],
        "compile": bool(fast["compile"]),
        "compile_mode": fast["compile_mode"],
        "cuda_streams": streams[0],
        "vlm_dtype": fast["dtype"] or "",
        "quantization": fast["quantization"],
    }
    node_steps = {
        "dtype",
        "attn_implementation",
        "vision_attention",
        "compile",
        "compile_mode",
        "quantization",
    }
    unknown = sorted(set(changed) - node_steps)
    if unknown:
        raise ValueError(f"{unknown} are not vlm_node parameters")
    return params


def node_params(result: dict[str, Any], base: dict[str, Any]) -> dict[str, Any]:
    """``base`` (the nodes' YAML as a dict) with the recommended periods, staleness bound and fast path."""
    params = json.loads(json.dumps(base))  # deep copy of plain YAML data
    vlm = params.setdefault("vlm_node", {}).setdefault("ros__parameters", {})
    expert = params.setdefault("action_expert_node", {}).setdefault("ros__parameters", {})
    vlm.update(fast_path_node_params(result["config"]["fast_path"]))
    vlm["vlm_period_s"] = float(result["recommended_vlm_period_s"])
    expert["action_period_s"] = float(result["action_period_s"])
    expert["vl_max_age_s"] = float(result["recommended_vl_max_age_s"])
    return params


def write_node_params(result: dict[str, Any], path: Path, base_path: Path | None = None) -> Path:
    """Write the nodes' parameter YAML with the recommendations (a full copy of ``base_path``)."""
    import yaml

    base_path = base_path or default_node_params_file()
    base = yaml.safe_load(base_path.read_text()) or {}
    cfg = result["config"]
    header = (
        f"# Written by profile_vlm from {base_path.name}: {cfg['views']} views {cfg['image_size'][0]}x"
        f"{cfg['image_size'][1]}, {cfg['model_config']} on {cfg['device']},\n"
        f"# p50 {result['latency_p50_ms']:.1f} ms, p95 {result['latency_p95_ms']:.1f} ms, margin "
        f"{result['margin']:.0%}: VLM period {result['recommended_vlm_period_s']} s "
        f"({result['recommended_vlm_update_hz']:.3f} Hz), reuse {result['recommended_vlm_reuse_count']} "
        f"ticks,\n# sensor window {result['recommended_sensor_window']} samples (the action expert takes "
        "its window length from the checkpoint; train with this one).\n"
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(header + yaml.safe_dump(node_params(result, base), sort_keys=False))
    return path


def human_summary(result: dict[str, Any]) -> str:
    """A few lines for people."""
    cfg = result["config"]
    return "\n".join(
        [
            f"VLM {cfg['model_config']} ({cfg['model']}) on {cfg['device']}: {cfg['views']} views "
            f"{cfg['image_size'][0]}x{cfg['image_size'][1]}, {result['tokens_per_view']} tokens/view, "
            f"{result['num_tokens']} feature tokens, sequence {result['sequence_length']}",
            f"latency over {result['num_samples']} runs: mean {result['latency_mean_ms']:.1f} ms, "
            f"p50 {result['latency_p50_ms']:.1f}, p95 {result['latency_p95_ms']:.1f}, "
            f"p99 {result['latency_p99_ms']:.1f} ms -> {result['achievable_hz']:.2f} Hz back-to-back",
            f"peak memory {result['peak_memory_mb']:.0f} MB ({result['peak_memory_kind']})",
            f"recommended: vlm_period_s {result['recommended_vlm_period_s']} "
            f"({result['recommended_vlm_update_hz']:.3f} Hz), reuse {result['recommended_vlm_reuse_count']}, "
            f"sensor window {result['recommended_sensor_window']}, "
            f"vl_max_age_s {result['recommended_vl_max_age_s']}",
        ]
    )


def build_parser() -> argparse.ArgumentParser:
    """Command-line interface (see the module docstring)."""
    parser = argparse.ArgumentParser(prog="profile_vlm", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--config", default="tiny", help="model config name (tiny, qwen2_5_vl_3b) or YAML path"
    )
    parser.add_argument(
        "--random-weights", action="store_true", help="build the architecture, random weights"
    )
    parser.add_argument("--model-path", default=None, help="override vlm.model_name_or_path (local folder)")
    parser.add_argument("--views", type=int, default=None, help="camera views (default: the config's)")
    parser.add_argument(
        "--image-size", type=parse_image_size, default=None, help="WIDTHxHEIGHT, e.g. 640x360"
    )
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--num-samples", type=int, default=20, help="timed runs")
    parser.add_argument("--warmup", type=int, default=3, help="untimed runs first")
    parser.add_argument("--margin", type=float, default=DEFAULT_MARGIN, help="fraction added to p95")
    parser.add_argument("--action-period-s", type=float, default=None, help="default: the config's")
    parser.add_argument("--sensor-rate-hz", type=float, default=None, help="default: the config's")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    parser.add_argument("--seed", type=int, default=0)
    fast = parser.add_argument_group("fast path (models.fast_path.FastPathConfig)")
    fast.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default=None)
    fast.add_argument(
        "--attn",
        dest="attn_implementation",
        default=None,
        choices=("auto", "flash_attention_2", "sdpa", "eager"),
    )
    fast.add_argument("--min-pixels", type=int, default=None)
    fast.add_argument("--max-pixels", type=int, default=None)
    fast.add_argument("--token-selection", choices=("vision", "all", "pooled"), default=None)
    fast.add_argument("--trim-tail", action="store_true", help="drop prompt tokens after the last image")
    fast.add_argument(
        "--pad-to-multiple", type=int, default=0, help="static shapes: pad tokens to a multiple"
    )
    fast.add_argument("--compile", action="store_true", help="torch.compile the LM and vision tower")
    fast.add_argument(
        "--quantization",
        default="none",
        choices=("none", "int8_weight_only", "int8_dynamic", "int4_weight_only"),
    )
    fast.add_argument("--pin-memory", action="store_true")
    fast.add_argument("--dedicated-stream", action="store_true")
    fast.add_argument("--vision-attention", choices=("per_window", "batched"), default="per_window")
    fast.add_argument(
        "--search-fast-path",
        action="store_true",
        help="time every feature-preserving node fast path on this device, profile the fastest",
    )
    out = parser.add_argument_group("output")
    out.add_argument("--json", action="store_true", help="print exactly the JSON result on stdout")
    out.add_argument("--save-results", type=Path, default=None, help="write the JSON result here")
    out.add_argument("--write-config", type=Path, default=None, help="write node parameter YAML here")
    out.add_argument("--base-params", type=Path, default=None, help="YAML to copy (default: the package's)")
    return parser


FAST_FLAGS = (
    "dtype", "attn_implementation", "min_pixels", "max_pixels", "token_selection", "trim_tail",
    "pad_to_multiple", "compile", "quantization", "pin_memory", "dedicated_stream", "vision_attention",
)  # fmt: skip


def node_fast_path_candidates(device: str) -> dict[str, dict[str, Any]]:
    """The node fast paths that keep the features (``--search-fast-path``), by name, for ``device``."""
    static = {"trim_tail": True, "pad_to_multiple": 64}
    batched = {"vision_attention": "batched"}
    candidates = {
        "plain": {},
        "batched_vision": batched,
        "static": static,
        "batched_static": batched | static,
    }
    if device.startswith("cuda"):
        streams = {"pin_memory": True, "dedicated_stream": True}
        candidates["batched_static_streams"] = batched | static | streams
    # torch.compile is left out: minutes of compiling per try, and it gained nothing on an H100 (README).
    return candidates


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``profile_vlm`` console script."""
    args = build_parser().parse_args(argv)
    import torch
    import transformers

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    transformers.logging.set_verbosity_error()  # keep stdout to the JSON
    transformers.logging.disable_progress_bar()
    defaults = vars(build_parser().parse_args([]))
    fast = {name: getattr(args, name) for name in FAST_FLAGS if getattr(args, name) != defaults[name]}
    common = dict(
        random_weights=args.random_weights,
        model_path=args.model_path,
        views=args.views,
        image_size=args.image_size,
        device=args.device,
        seed=args.seed,
    )
    if args.search_fast_path:
        timed = {}
        for name, steps in node_fast_path_candidates(args.device).items():
            trial = profile(args.config, num_samples=5, warmup=2, fast=fast | steps, **common)
            timed[name] = (trial["latency_p50_ms"], steps)
            print(f"fast path {name}: p50 {trial['latency_p50_ms']:.1f} ms", file=sys.stderr)
        best = min(timed, key=lambda name: timed[name][0])
        print(f"fastest node fast path: {best}", file=sys.stderr)
        fast = fast | timed[best][1]
    result = profile(
        args.config,
        num_samples=args.num_samples,
        warmup=args.warmup,
        margin=args.margin,
        action_period_s=args.action_period_s,
        sensor_rate_hz=args.sensor_rate_hz,
        fast=fast,
        **common,
    )
    text = json.dumps(result, indent=2)
    if args.save_results is not None:
        args.save_results.parent.mkdir(parents=True, exist_ok=True)
        args.save_results.write_text(text + "\n")
    if args.write_config is not None:
        written = write_node_params(result, args.write_config, args.base_params)
        print(f"wrote node parameters to {written}", file=sys.stderr)
    print(text if args.json else human_summary(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
