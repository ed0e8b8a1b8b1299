"""Measurements behind ``bench/vlm_fast_path.py`` and ``bench/gpu_check.py``: one fast-path step at a time.

``measure_vlm_steps`` times every step of ``models.fast_path`` against the plain path on the same inputs
(p50/p95, tokens, speed-up, and the feature difference from the plain features). Steps that change the
model (dtype, attention kernel, quantisation, compile) run on a copy, so each is measured on its own.
``measure_action_expert`` times one 10 Hz tick (window upload, sensor encoder, context, head, download),
eager or replayed from a CUDA graph; ``measure_action_expert_concurrent`` does so while the VLM runs on
the same GPU, from a thread of this process or from a separate process (how the nodes deploy).
"""

from __future__ import annotations

import copy
import gc
import importlib.util
import multiprocessing
import sys
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from models.fast_path import FastPathConfig, FastVLM, feature_difference, prepare_model
from models.profile_vlm import latency_summary, time_calls
from models.vlm import VLFeatureExtractor

INSTRUCTION = "Insert the needle into the target."


def default_steps(extractor: VLFeatureExtractor, quantization: str) -> dict[str, FastPathConfig]:
    """The steps to measure for this extractor's device and dtype (GPU-only ones only on CUDA).

    ``quantization`` is one method or a comma-separated list (one step each).
    """
    cuda = extractor.device.type == "cuda"
    cfg = extractor.config
    other_dtype = "float32" if cfg.dtype == "bfloat16" else "bfloat16"
    static = {"trim_tail": True, "pad_to_multiple": 64}
    steps = {
        "plain": FastPathConfig(),
        other_dtype: FastPathConfig(dtype=other_dtype),
        "sdpa": FastPathConfig(attn_implementation="sdpa"),
        "eager_attention": FastPathConfig(attn_implementation="eager"),
    }
    if cuda and importlib.util.find_spec("flash_attn") is not None:
        steps["flash_attention_2"] = FastPathConfig(attn_implementation="flash_attention_2")
    steps["batched_vision_attention"] = FastPathConfig(vision_attention="batched")
    steps["bounded_pixels"] = FastPathConfig(max_pixels=max(cfg.min_pixels, cfg.max_pixels // 2))
    steps["token_trim"] = FastPathConfig(trim_tail=True)
    steps["pooled_tokens"] = FastPathConfig(token_selection="pooled", trim_tail=True)
    steps["static_shapes"] = FastPathConfig(**static)
    if cuda:
        steps["pinned_stream"] = FastPathConfig(pin_memory=True, dedicated_stream=True)
    for method in quantization.split(","):  # e.g. "int8_weight_only,int8_dynamic"
        steps[f"quant_{method}"] = FastPathConfig(quantization=method)
    steps["compile"] = FastPathConfig(compile=True, **static)
    steps["compile_batched_vision"] = FastPathConfig(compile=True, vision_attention="batched", **static)
    if cuda:
        steps["combined"] = FastPathConfig(
            compile=True, vision_attention="batched", pin_memory=True, dedicated_stream=True, **static
        )
    return steps


def _changes_model(fast: FastPathConfig) -> bool:
    return (
        fast.dtype is not None
        or fast.attn_implementation is not None
        or fast.compile
        or fast.vision_attention != "per_window"
        or (fast.quantization != "none")
    )


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _prepare_step(extractor: VLFeatureExtractor, fast: FastPathConfig, images) -> dict[str, Any]:
    """Runner for one step (on a model copy when the step changes the model) after its first call."""
    work = extractor
    applied: dict[str, Any] = {}
    if _changes_model(fast):
        work = VLFeatureExtractor(
            copy.deepcopy(extractor.hf_model),
            extractor.config,
            processor=extractor.processor,
            tokenizer=extractor.tokenizer,
            image_processor=extractor.image_processor,
        )
        applied = prepare_model(work.hf_model, fast, extractor.device)
    runner = FastVLM(work, fast)
    first = time.perf_counter()
    runner.extract(images, INSTRUCTION)  # compile and lazy initialisation happen here
    return {"runner": runner, "applied": applied, "first_call_s": time.perf_counter() - first}


def _step_entry(prepared: dict[str, Any], samples: list[float], features, meta) -> dict[str, Any]:
    summary = latency_summary(samples)
    return {
        "p50_ms": summary["latency_p50_ms"],
        "p95_ms": summary["latency_p95_ms"],
        "mean_ms": summary["latency_mean_ms"],
        "first_call_s": prepared["first_call_s"],
        "tokens_per_view": int(max(meta.tokens_per_view)),
        "num_tokens": int(features.shape[0]),
        "sequence_length": prepared["runner"].last_sequence_length,
        "applied": prepared["applied"],
        "features": features,
    }


def measure_vlm_steps(
    extractor: VLFeatureExtractor,
    images: list[np.ndarray],
    steps: dict[str, FastPathConfig],
    num_samples: int,
    warmup: int,
    deadline: float | None = None,
    interleave: bool | None = None,
    log: Callable[[str], None] = lambda _: None,
) -> dict[str, dict[str, Any]]:
    """Time every step; ``"plain"`` must come first (the others are compared with its features).

    ``interleave`` (default: on CPU) keeps every step's model and times them round-robin, so load from
    other processes on a shared machine falls on all steps alike; on a GPU the steps run one after the
    other and each model copy is freed before the next.
    """
    device = extractor.device
    interleave = device.type != "cuda" if interleave is None else interleave
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else None
    results: dict[str, dict[str, Any]] = {}
    prepared: dict[str, dict[str, Any]] = {}
    for name, fast in steps.items():
        if deadline is not None and time.monotonic() > deadline:
            results[name] = {"skipped": "time budget spent"}
            continue
        log(f"vlm step {name}")
        try:
            step = _prepare_step(extractor, fast, images)
            if interleave:
                prepared[name] = step
                continue
            samples, (features, meta) = time_calls(
                lambda step=step: step["runner"].extract(images, INSTRUCTION), num_samples, warmup, sync
            )
            results[name] = _step_entry(step, samples, features, meta)
        except Exception as error:  # one failing step must not lose the others' figures
            results[name] = {"error": f"{type(error).__name__}: {error}"[:500]}
            log(traceback.format_exc(limit=3))
        finally:
            step = None
            _free(device)
    if interleave and prepared:
        runs: dict[str, list[float]] = {name: [] for name in prepared}
        outputs: dict[str, Any] = {}
        for round_index in range(warmup + num_samples):
            for name, step in prepared.items():
                begin = time.perf_counter()
                outputs[name] = step["runner"].extract(images, INSTRUCTION)
                if round_index >= warmup:
                    runs[name].append(time.perf_counter() - begin)
        for name, step in prepared.items():
            results[name] = _step_entry(step, runs[name], *outputs[name])
    ordered = {name: results[name] for name in steps if name in results}
    reference = ordered.get("plain", {}).get("features")
    plain_p50 = ordered.get("plain", {}).get("p50_ms")
    for entry in ordered.values():
        features = entry.pop("features", None)
        if features is None:
            continue
        if plain_p50:
            entry["speedup_vs_plain"] = plain_p50 / entry["p50_ms"]
        if reference is not None and features.shape == reference.shape:
            entry.update(feature_difference(reference.float(), features.float()))
    return ordered


def _sync_stream(stream: torch.cuda.Stream | None) -> None:
    if stream is not None:
        stream.synchronize()


def tick_function(policy, graphed: bool = False, stream: torch.cuda.Stream | None = None):
    """A zero-argument callable doing one tick (numpy window in, CPU chunk out) with fixed inputs."""
    from models.fast_graphs import GraphedActionHead

    cfg = policy.config
    device = policy.device
    vl = torch.randn(1, 64, policy.vl_hidden_size, device=device)
    encoded = policy.encode_vl_features(vl)
    window = (
        np.random.default_rng(0).standard_normal((cfg.sensor.window, cfg.sensor.channels)).astype(np.float32)
    )
    state = np.zeros(policy.state_dim, np.float32) if policy.state_dim else None
    if graphed:
        head = GraphedActionHead(policy, stream=stream)

        def tick():
            return head(encoded.latents, torch.from_numpy(window)[None], 0.2, state).cpu()

        return tick
    if device.type == "cuda" and stream is not None:

        def tick():
            with torch.cuda.stream(stream):
                out = policy.predict_actions(encoded, window, 0.2, robot_state=state).cpu()
            return out

        return tick
    return lambda: policy.predict_actions(encoded, window, 0.2, robot_state=state).cpu()


def measure_action_expert(policy, num_ticks: int, warmup: int, graphed: bool = False, stream=None) -> dict:
    """p50/p99/mean (ms) of one tick, alone on the device."""
    tick = tick_function(policy, graphed=graphed, stream=stream)
    samples, _ = time_calls(tick, num_ticks, warmup)
    return _tick_summary(samples)


def _tick_summary(samples: list[float]) -> dict[str, float]:
    values = np.asarray(samples) * 1e3
    return {
        "p50_ms": float(np.percentile(values, 50)),
        "p99_ms": float(np.percentile(values, 99)),
        "mean_ms": float(values.mean()),
        "max_ms": float(values.max()),
        "ticks": int(values.size),
    }


def _ticks_while(
    busy: Callable[[], bool], tick: Callable[[], Any], num_ticks: int, gap_s: float
) -> list[float]:
    samples = []
    while len(samples) < num_ticks and busy():
        start = time.perf_counter()
        tick()
        samples.append(time.perf_counter() - start)
        time.sleep(gap_s)  # spread the ticks over the VLM's kernels, like a 10 Hz timer would
    return samples


def measure_action_expert_concurrent_thread(
    policy,
    vlm_runner: FastVLM,
    images: list[np.ndarray],
    num_ticks: int,
    graphed: bool,
    high_priority: bool,
    gap_s: float = 0.005,
) -> dict[str, Any]:
    """Ticks while a thread of this process runs the VLM back to back on the same GPU."""
    from models.fast_path import action_stream

    stream = action_stream(policy.device) if high_priority else None
    tick = tick_function(policy, graphed=graphed, stream=stream)
    for _ in range(3):
        tick()
    stop = threading.Event()
    vlm_runs = [0]

    def vlm_loop():
        while not stop.is_set():
            vlm_runner.extract(images, INSTRUCTION)
            vlm_runs[0] += 1

    previous = sys.getswitchinterval()
    sys.setswitchinterval(0.0005)  # the GIL would otherwise add up to 5 ms per hand-over
    thread = threading.Thread(target=vlm_loop, daemon=True)
    thread.start()
    try:
        while vlm_runs[0] < 1:
            time.sleep(0.01)
        samples = _ticks_while(lambda: True, tick, num_ticks, gap_s)
    finally:
        stop.set()
        thread.join()
        sys.setswitchinterval(previous)
    return {**_tick_summary(samples), "vlm_runs_during": vlm_runs[0]}


def _vlm_process_main(config_name: str, device: str, fast: dict, ready, stop, counter) -> None:
    """Child process: build the VLM with random weights and run it back to back until ``stop``."""
    import transformers

    from models.config import load_model_config
    from models.fast_path import FastPathConfig, FastVLM, load_extractor, prepare_model
    from models.profile_vlm import random_views

    transformers.logging.set_verbosity_error()
    cfg = load_model_config(config_name).vlm
    extractor = load_extractor(cfg, device=device, random_weights=True)
    fast_config = FastPathConfig.from_dict(fast)
    prepare_model(extractor.hf_model, fast_config, device)
    runner = FastVLM(extractor, fast_config)
    images = random_views(cfg.num_views, cfg.image_width, cfg.image_height)
    runner.extract(images, INSTRUCTION)
    ready.set()
    while not stop.is_set():
        runner.extract(images, INSTRUCTION)
        with counter.get_lock():
            counter.value += 1


def measure_action_expert_concurrent_process(
    policy,
    config_name: str,
    num_ticks: int,
    graphed: bool,
    high_priority: bool,
    fast: dict | None = None,
    start_timeout_s: float = 180.0,
    gap_s: float = 0.005,
) -> dict[str, Any]:
    """Ticks while another process (as the vlm_node would be) runs the VLM back to back on the same GPU."""
    from models.fast_path import action_stream

    context = multiprocessing.get_context("spawn")
    ready, stop = context.Event(), context.Event()
    counter = context.Value("i", 0)
    device = str(policy.device)
    child = context.Process(
        target=_vlm_process_main, args=(config_name, device, fast or {}, ready, stop, counter), daemon=True
    )
    child.start()
    try:
        if not ready.wait(start_timeout_s):
            raise TimeoutError(f"the VLM process was not ready within {start_timeout_s} s")
        stream = action_stream(policy.device) if high_priority else None
        tick = tick_function(policy, graphed=graphed, stream=stream)
        for _ in range(3):
            tick()
        samples = _ticks_while(child.is_alive, tick, num_ticks, gap_s)
    finally:
        stop.set()
        child.join(30)
        if child.is_alive():
            child.terminate()
    return {**_tick_summary(samples), "vlm_runs_during": int(counter.value)}
