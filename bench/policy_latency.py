"""Latency of the policy's two halves: ``predict_actions`` (action expert) and ``extract_vl_features`` (VLM).

Action expert (always the default size from ``qwen2_5_vl_3b.yaml``: Hvl 2048, ~1500 VL tokens, and the
tiny size for comparison), on ``--device``:

* ``action_expert_p50_ms`` / ``_p99_ms``: regression head, VL features encoded once (``encode_vl_features``)
  and reused, as at run time where one feature serves ~17 ticks;
* ``action_expert_uncached_p99_ms``: the same but re-encoding the raw features every call;
* ``vl_encode_p50_ms``: the once-per-feature resampler cost; ``action_expert_flow_p99_ms``: flow head.

VLM (``--config``; tiny by default, built locally; ``--random-weights`` builds ``vlm.architecture`` in memory,
e.g. ``--config qwen2_5_vl_3b --random-weights --device cuda``): ``vlm_p50_ms`` and ``tokens_per_view`` for
``num_views`` views of the configured image size at the config's pixel bound, and ``vlm_native_*`` with the
bound raised so the views keep their native size.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import base_parser, emit, percentiles_ms  # noqa: E402

from models.config import PolicyConfig, load_model_config  # noqa: E402
from models.policy import AsyncVLAPolicy  # noqa: E402
from models.vlm import VLFeatureExtractor, resolve_attn_implementation, torch_dtype  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


CPU_SAMPLES: dict[int, list[float]] = {}


def _time(fn, iters: int, warmup: int, device: torch.device) -> list[float]:
    """Wall-clock samples; the calling thread's CPU time per call goes to ``CPU_SAMPLES[id(result)]``.

    On a shared machine wall time includes waiting for a core; with one torch thread the CPU time is what
    the call costs on an idle core, so both are reported.
    """
    for _ in range(warmup):
        fn()
    _sync(device)
    samples, cpu = [], []
    for _ in range(iters):
        start, start_cpu = time.perf_counter(), time.thread_time()
        fn()
        _sync(device)
        samples.append(time.perf_counter() - start)
        cpu.append(time.thread_time() - start_cpu)
    CPU_SAMPLES[id(samples)] = cpu
    return samples


def bench_action_expert(
    cfg: PolicyConfig, tokens: int, device: torch.device, iters: int, prefix: str
) -> dict:
    """Predict latency (cached / uncached / flow) for the action-expert sizes in ``cfg``."""
    metrics: dict[str, float] = {}
    hvl = cfg.vlm.hidden_size
    window = torch.randn(1, cfg.sensor.window, cfg.sensor.channels, device=device)
    feats = torch.randn(1, tokens, hvl, device=device)
    state = (
        torch.zeros(1, cfg.action_expert.state_dim, device=device) if cfg.action_expert.state_dim else None
    )
    for head in ("regression", "flow"):
        head_cfg = dataclasses.replace(cfg, action_expert=dataclasses.replace(cfg.action_expert, head=head))
        torch.manual_seed(0)
        policy = AsyncVLAPolicy(head_cfg, device=device).eval()
        encoded = policy.encode_vl_features(feats)
        key = prefix if head == "regression" else f"{prefix}_flow"
        samples = _time(
            lambda p=policy, e=encoded: p.predict_actions(e, window, 0.5, robot_state=state), iters, 5, device
        )
        metrics.update(percentiles_ms(samples, key))
        if device.type == "cpu":
            metrics.update(percentiles_ms(CPU_SAMPLES[id(samples)], f"{key}_cpu"))
        if head == "regression":
            # A fresh tensor object per call defeats the identity cache: the un-amortised cost.
            samples = _time(
                lambda p=policy: p.predict_actions(feats.clone(), window, 0.5, robot_state=state),
                max(iters // 4, 5),
                2,
                device,
            )
            metrics.update(percentiles_ms(samples, f"{prefix}_uncached"))
            samples = _time(lambda p=policy: p.encode_vl_features(feats), max(iters // 4, 5), 2, device)
            metrics.update(percentiles_ms(samples, f"{prefix.replace('action_expert', 'vl_encode')}"))
    return metrics


def build_extractor(cfg: PolicyConfig, random_weights: bool, device: torch.device) -> VLFeatureExtractor:
    """The configured VLM (from disk), or its architecture with random weights (nothing downloaded)."""
    if not random_weights:
        return VLFeatureExtractor.from_pretrained(cfg.vlm, device=device)
    from models.tiny_qwen import TINY_ARCHITECTURE, build_random_qwen2_5_vl

    architecture = cfg.vlm.architecture or TINY_ARCHITECTURE
    model, processor, tokenizer = build_random_qwen2_5_vl(
        architecture,
        dtype=torch_dtype(cfg.vlm.dtype),
        device=device,
        attn_implementation=resolve_attn_implementation(cfg.vlm.attn_implementation, device),
    )
    if processor is None:
        from transformers import Qwen2VLImageProcessorPil

        return VLFeatureExtractor(
            model, cfg.vlm, tokenizer=tokenizer, image_processor=Qwen2VLImageProcessorPil()
        )
    return VLFeatureExtractor(model, cfg.vlm, processor=processor)


def bench_vlm(cfg: PolicyConfig, random_weights: bool, device: torch.device, iters: int) -> dict:
    """``extract`` latency and tokens per view, at the configured pixel bound and at native size."""
    extractor = build_extractor(cfg, random_weights, device)
    rng = np.random.default_rng(0)
    height, width = cfg.vlm.image_height, cfg.vlm.image_width
    images = [rng.integers(0, 256, (height, width, 3), dtype=np.uint8) for _ in range(cfg.vlm.num_views)]
    instruction = "insert the needle into the target along the planned trajectory"
    metrics: dict[str, float] = {}
    native_pixels = (round(height / 28) * 28) * (round(width / 28) * 28)
    runs = [("vlm", cfg.vlm.max_pixels)]
    if native_pixels > cfg.vlm.max_pixels:
        runs.append(("vlm_native", native_pixels))
    for key, max_pixels in runs:
        extractor.config = dataclasses.replace(cfg.vlm, max_pixels=max_pixels)
        features, meta = extractor.extract(images, instruction)
        samples = _time(lambda: extractor.extract(images, instruction), iters, 2, device)
        metrics.update(percentiles_ms(samples, key))
        metrics[f"{key}_tokens" if key != "vlm" else "vl_tokens"] = float(features.shape[0])
        metrics["tokens_per_view" if key == "vlm" else f"{key}_tokens_per_view"] = float(
            np.mean(meta.tokens_per_view)
        )
    if device.type == "cuda":
        metrics["vlm_peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    return metrics


def main() -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--config", default="tiny", help="VLM config name or YAML path (default: tiny)")
    parser.add_argument(
        "--random-weights", action="store_true", help="build vlm.architecture, random weights"
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--vl-tokens", type=int, default=1500, help="VL tokens fed to the action expert")
    parser.add_argument("--iters", type=int, default=None)
    parser.add_argument(
        "--threads", type=int, default=1, help="torch intra-op threads (1: what the action-expert node uses)"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    iters = args.iters or (40 if args.quick else 200)
    torch.set_grad_enabled(False)
    default_cfg = load_model_config("qwen2_5_vl_3b")
    tiny_cfg = load_model_config("tiny")
    metrics = bench_action_expert(default_cfg, args.vl_tokens, device, iters, "action_expert")
    metrics.update(bench_action_expert(tiny_cfg, 80, device, iters, "action_expert_tiny"))
    vlm_cfg = load_model_config(args.config)
    metrics.update(bench_vlm(vlm_cfg, args.random_weights, device, max(iters // 8, 3)))
    ae = default_cfg.action_expert
    config = {
        "quick": args.quick,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "iters": iters,
        "action_expert": {
            "d_model": ae.d_model,
            "context_layers": ae.context_layers,
            "decoder_layers": ae.decoder_layers,
            "vl_latents": ae.vl_latents,
            "flow_steps": ae.flow_steps,
            "vl_tokens": args.vl_tokens,
            "vl_hidden": 2048,
        },
        "vlm": {
            "config": args.config,
            "random_weights": args.random_weights,
            "dtype": vlm_cfg.vlm.dtype,
            "attn": resolve_attn_implementation(vlm_cfg.vlm.attn_implementation, device),
            "views": vlm_cfg.vlm.num_views,
            "image": [vlm_cfg.vlm.image_height, vlm_cfg.vlm.image_width],
            "max_pixels": vlm_cfg.vlm.max_pixels,
        },
    }
    emit("policy_latency", config, metrics, args.out)


if __name__ == "__main__":
    main()
