"""Each fast-path step of the VLM measured on its own against the plain path (one JSON on stdout).

    python bench/vlm_fast_path.py --quick                 # CPU, tiny config (< 60 s on 2 cores)
    python bench/vlm_fast_path.py --device cuda           # GPU, 3B architecture with random weights

Metrics per step S (``plain``, the other dtype, ``sdpa``, ``eager_attention``, ``bounded_pixels``,
``token_trim``, ``pooled_tokens``, ``static_shapes``, ``quant_<method>``, ``compile``; on CUDA also
``pinned_stream``, ``combined`` and ``flash_attention_2`` when flash-attn imports):
``vlm_S_p50_ms``, ``vlm_S_p95_ms``, ``vlm_S_speedup_vs_plain``, ``vlm_S_tokens_per_view``,
``vlm_S_cosine_min`` and ``vlm_S_relative_error`` (features against the plain path; null when the step
changes the token count). A step that fails or is skipped has null figures and a note in ``config.notes``.
Action expert: ``action_expert_p50_ms``/``_p99_ms`` per tick (and ``action_expert_graphed_*`` on CUDA).
"""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))

from _common import base_parser, emit  # noqa: E402

STEP_KEYS = (
    "p50_ms",
    "p95_ms",
    "speedup_vs_plain",
    "tokens_per_view",
    "num_tokens",
    "cosine_min",
    "relative_error",
)


def flatten_steps(steps: dict[str, dict], notes: dict[str, str]) -> dict[str, float | None]:
    """``{step: {key: value}}`` -> ``{vlm_step_key: value}`` with the same keys for every step."""
    metrics: dict[str, float | None] = {}
    for name, entry in steps.items():
        for key in STEP_KEYS:
            value = entry.get(key)
            metrics[f"vlm_{name}_{key}"] = float(value) if isinstance(value, (int, float)) else None
        for problem in ("error", "skipped"):
            if problem in entry:
                notes[name] = f"{problem}: {entry[problem]}"
    return metrics


def build(args):
    """(extractor, policy, images, effective model config) for the chosen device and config."""
    import torch
    import transformers

    from models.config import load_model_config
    from models.fast_path import load_extractor
    from models.policy import AsyncVLAPolicy
    from models.profile_vlm import random_views

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    policy_config = load_model_config(args.config)
    vlm = policy_config.vlm
    if args.views:
        vlm = dataclasses.replace(vlm, num_views=args.views)
    if args.image_size:
        vlm = dataclasses.replace(vlm, image_width=args.image_size[0], image_height=args.image_size[1])
    random_weights = args.random_weights or vlm.model_name_or_path != "builtin:tiny"
    extractor = load_extractor(vlm, device=args.device, random_weights=random_weights)
    policy_config.vlm = vlm
    torch.manual_seed(0)
    policy = AsyncVLAPolicy(policy_config, device=args.device).eval()
    images = random_views(vlm.num_views, vlm.image_width, vlm.image_height)
    return extractor, policy, images, random_weights


def parser():
    from models.profile_vlm import parse_image_size

    p = base_parser(__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--config", default=None, help="model config (default: tiny on CPU, qwen2_5_vl_3b on CUDA)"
    )
    p.add_argument("--random-weights", action="store_true")
    p.add_argument("--views", type=int, default=None)
    p.add_argument("--image-size", type=parse_image_size, default=None)
    p.add_argument("--num-samples", type=int, default=None)
    p.add_argument("--warmup", type=int, default=None)
    p.add_argument("--ticks", type=int, default=None, help="action expert ticks")
    p.add_argument(
        "--quantization", default=None, help="default: int8_weight_only on CUDA, int8_dynamic on CPU"
    )
    p.add_argument(
        "--compile", choices=("auto", "on", "off"), default="auto", help="auto: off for CPU --quick"
    )
    p.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads (1: steadier on a shared machine)"
    )
    p.add_argument("--budget-s", type=float, default=None, help="skip the remaining steps after this")
    return p


def main() -> None:
    args = parser().parse_args()
    import torch

    from models.fast_measure import default_steps, measure_action_expert, measure_vlm_steps

    cuda = args.device.startswith("cuda")
    args.config = args.config or ("qwen2_5_vl_3b" if cuda else "tiny")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    num_samples = args.num_samples or (5 if args.quick else 20)
    warmup = args.warmup if args.warmup is not None else (1 if args.quick else 3)
    ticks = args.ticks or (50 if args.quick else 300)
    quantization = args.quantization or ("int8_weight_only" if cuda else "int8_dynamic")
    start = time.monotonic()
    extractor, policy, images, random_weights = build(args)
    steps = default_steps(extractor, quantization)
    notes: dict[str, str] = {}
    if args.compile == "off" or (args.compile == "auto" and args.quick and not cuda):
        steps.pop("compile", None)
        steps.pop("combined", None)
        notes["compile"] = "inductor compiles take minutes on this CPU (run without --quick)"
    deadline = None if args.budget_s is None else start + args.budget_s
    results = measure_vlm_steps(extractor, images, steps, num_samples, warmup, deadline)
    if "compile" in notes:
        results["compile"] = {"skipped": notes["compile"]}
    metrics = flatten_steps(results, notes)
    for key, value in measure_action_expert(policy, ticks, 5).items():
        metrics[f"action_expert_{key}"] = value
    if cuda:
        for key, value in measure_action_expert(policy, ticks, 5, graphed=True).items():
            metrics[f"action_expert_graphed_{key}"] = value
    cfg = extractor.config
    config = {
        "device": args.device,
        "model_config": args.config,
        "random_weights": random_weights,
        "views": cfg.num_views,
        "image_size": [cfg.image_width, cfg.image_height],
        "dtype": cfg.dtype,
        "max_pixels": cfg.max_pixels,
        "num_samples": num_samples,
        "warmup": warmup,
        "ticks": ticks,
        "threads": torch.get_num_threads(),
        "quantization": quantization,
        "applied": {name: entry.get("applied") for name, entry in results.items()},
        "notes": notes,
        "wall_s": time.monotonic() - start,
    }
    emit("vlm_fast_path", config, metrics, args.out)


if __name__ == "__main__":
    main()
