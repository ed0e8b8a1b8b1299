"""The fast path as node parameters: settings, fallbacks on a CPU host, and how diagnostics show them."""

from __future__ import annotations

import pytest
import torch
from models_fixtures import make_policy, one_torch_thread, sensor, tiny_qwen_dir, vl_feats  # noqa: F401

from insertion_vla_ros.nodes.fast_path_params import (
    EXPERT_FAST_PATH_PARAMETERS,
    VLM_FAST_PATH_PARAMETERS,
    expert_fast_path,
    report_fast_path,
    vlm_fast_path,
)
from insertion_vla_ros.ros_io.diagnostics import Level, TaskStatus


def _defaults(specs) -> dict:
    return {spec.name: spec.default for spec in specs}


def test_defaults_are_the_plain_path_with_nothing_to_report():
    choice = vlm_fast_path(_defaults(VLM_FAST_PATH_PARAMETERS), "cpu")
    assert choice.summary() == "plain" and not choice.fallbacks and not choice.approximations
    task = TaskStatus("vl features")
    report_fast_path(task, choice)
    assert task.level == Level.OK and task.values["fast path"] == "plain"
    assert expert_fast_path(_defaults(EXPERT_FAST_PATH_PARAMETERS), "cpu").summary() == "plain"


def test_cuda_only_options_fall_back_on_a_cpu_and_say_so():
    params = _defaults(VLM_FAST_PATH_PARAMETERS) | {
        "cuda_streams": True,
        "attn_implementation": "flash_attention_2",
        "vision_attention": "batched",
        "static_shapes": True,
        "vlm_dtype": "bfloat16",
    }
    choice = vlm_fast_path(params, "cpu")
    fast = choice.fast
    assert (fast.pin_memory, fast.dedicated_stream, fast.attn_implementation) == (False, False, "sdpa")
    assert fast.vision_attention == "batched" and fast.trim_tail and fast.pad_to_multiple == 64
    assert any("cuda_streams needs a CUDA device" in note for note in choice.fallbacks)
    assert any("flash_attention_2 needs CUDA" in note for note in choice.fallbacks)
    assert choice.approximations == ["vlm_dtype bfloat16"]
    task = TaskStatus("vl features")
    report_fast_path(task, choice)
    assert task.level == Level.WARN and "fast path fell back" in task.message
    assert task.values["features approximate the checkpoint's"] == "vlm_dtype bfloat16"

    expert = expert_fast_path({"cuda_graphs": True, "cuda_streams": True}, "cpu")
    assert not expert.cuda_graphs and not expert.cuda_streams and len(expert.fallbacks) == 2
    assert expert_fast_path({"cuda_graphs": True, "cuda_streams": False}, "cuda:0").cuda_graphs


def test_a_tick_runner_serves_batch_one_ticks_after_the_checks(tiny_qwen_dir):  # noqa: F811
    policy = make_policy(tiny_qwen_dir)
    calls = []

    def runner(latents, window, age, state, motion):
        calls.append(window.shape[0])
        return policy.head_forward(latents, window, age, state, motion)

    feats, window = vl_feats(1), sensor(2)
    plain = policy.predict_actions(feats, window[0], 0.4)
    policy.set_tick_runner(runner)
    assert torch.equal(policy.predict_actions(feats, window[0], 0.4), plain) and calls == [1]
    policy.predict_actions(feats, window, 0.4)  # a batch of two keeps head_forward
    assert calls == [1]
    bad = window[0].clone()
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        policy.predict_actions(feats, bad, 0.4)
    assert calls == [1], "the runner saw an input the checks should have stopped"
    policy.set_tick_runner(None)
    assert torch.equal(policy.predict_actions(feats, window[0], 0.4), plain) and calls == [1]
