"""Shared fixtures and helpers for the models tests (imported by test_models_*.py; conftest is shared)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from models.config import PolicyConfig, load_model_config
from models.policy import AsyncVLAPolicy
from models.tiny_qwen import build_tiny_qwen2_5_vl


@pytest.fixture(scope="session")
def tiny_qwen_dir(tmp_path_factory):
    """A tiny Qwen2.5-VL saved once per session, loaded through from_pretrained like the real one."""
    return build_tiny_qwen2_5_vl(tmp_path_factory.mktemp("tiny_qwen"), seed=0)


def tiny_config(model_dir, **action_expert) -> PolicyConfig:
    """The tiny YAML config pointed at ``model_dir``, with optional action-expert overrides.

    Robot-state input is off unless ``state_dim`` is given: most tests exercise the VL + sensor contract,
    and the state tests (``test_models_policy.py``) switch it on explicitly.
    """
    action_expert.setdefault("state_dim", 0)
    cfg = load_model_config("tiny")
    cfg.vlm.model_name_or_path = str(model_dir)
    cfg.action_expert = dataclasses.replace(cfg.action_expert, **action_expert)
    return cfg.validate()


def make_policy(model_dir, seed: int = 0, load_vlm: bool = False, **action_expert) -> AsyncVLAPolicy:
    torch.manual_seed(seed)
    return AsyncVLAPolicy(tiny_config(model_dir, **action_expert), load_vlm=load_vlm)


def views(seed: int = 0, n: int = 5, size: tuple[int, int] = (112, 112)) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (*size, 3), dtype=np.uint8) for _ in range(n)]


def sensor(batch: int = 2, seed: int = 0, window: int = 65, channels: int = 1026) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, window, channels, generator=generator)


def vl_feats(batch: int = 2, tokens: int = 80, hidden: int = 64, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, tokens, hidden, generator=generator)


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """One intra-op thread: these models are tiny, and on a shared 2-core machine a second spinning
    thread made a training step >10x slower. Restored after the module so other tests are unaffected."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
