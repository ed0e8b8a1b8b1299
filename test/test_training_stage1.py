"""Stage 1 (cached features, frozen VLM): learns, logs, writes a node-loadable checkpoint, resumes exactly."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

from contracts.constants import ACTION_NAMES
from models.checkpoint import load_checkpoint, read_checkpoint_info
from models.config import config_search_dirs
from training.config import TrainConfig
from training.dataset import AlignmentConfig, open_episodes
from training.fixtures import make_synthetic_dataset
from training.normalization import CONSTANT_ACTION_STD, compute_normalization
from training.trainer import train

VAL = ["episode_003", "episode_008"]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("stage1")
    make_synthetic_dataset(root / "data", num_episodes=12, duration_s=1.5)
    return root


def _config(root, out, **overrides) -> TrainConfig:
    values = dict(
        stage=1,
        data=str(root / "data"),
        out=str(root / out),
        cache_dir=str(root / "cache"),
        cache_mode="build",
        val_episodes=VAL,
        steps=40,
        global_batch=8,
        micro_batch=8,
        val_every=40,
        log_every=5,
        checkpoint_every=40,
        warmup_steps=3,
        lr_sensor_encoder=1e-3,
        lr_action_expert=1e-3,
        progress=False,
    )
    values.update(overrides)
    return TrainConfig(**values)


def test_stage1_reduces_validation_loss_and_checkpoint_loads_unchanged(root):
    result = train(_config(root, "run"))
    assert result.finished and result.step == 40
    val = dict((int(s), v) for s, v in result.history["val/loss"])
    assert val[40] < 0.6 * val[0], val
    for name in ACTION_NAMES:
        assert f"val/mae_{name}" in result.history
    assert result.history["val/mae_dx"][-1][1] < result.history["val/mae_dx"][0][1]
    out = root / "run"
    assert (out / "curves.png").stat().st_size > 1000
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    assert json.loads((out / "history.json").read_text())["history"]["val/loss"] == result.history["val/loss"]

    info = read_checkpoint_info(result.final_checkpoint)
    assert info["extra"]["training"]["val_episodes"] == VAL and info["extra"]["training"]["stage"] == 1
    policy = load_checkpoint(result.final_checkpoint)  # exactly what the action-expert node does
    train_eps = open_episodes(
        sorted(p for p in (root / "data").iterdir() if p.name not in VAL), AlignmentConfig()
    )
    stats = compute_normalization(train_eps)
    # The gripper never moves in these episodes: its action keeps the constant instead of passing the
    # network's residual output through at unit scale.
    assert stats["action_std"][6] == pytest.approx(CONSTANT_ACTION_STD) and stats["action_std"][0] > 0.01
    sensor_cfg = policy.config.sensor
    chunk = policy.predict_actions(
        torch.randn(4, policy.vl_hidden_size),
        torch.randn(sensor_cfg.window, sensor_cfg.channels),
        0.2,
        robot_state=torch.randn(7),
    )
    assert torch.all((chunk[:, 6] - float(stats["action_mean"][6])).abs() < 1e-4)
    np.testing.assert_allclose(policy.action_mean.numpy(), stats["action_mean"], rtol=1e-6)
    np.testing.assert_allclose(policy.sensor_encoder.std.numpy(), stats["sensor_std"], rtol=1e-6)
    # The cache served features for the fingerprint the checkpoint carries (so nodes match the training).
    assert any((root / "cache").glob("*/fingerprint.json"))
    stored = {json.loads(p.read_text())["fingerprint"] for p in (root / "cache").glob("*/fingerprint.json")}
    assert info["fingerprint"] in stored


def _flow_dropout_model(tmp_path) -> str:
    """The tiny model with the stochastic flow head and dropout, so RNG restoration matters on resume."""
    source = next(d / "tiny.yaml" for d in config_search_dirs() if (d / "tiny.yaml").is_file())
    data = yaml.safe_load(source.read_text())
    data["action_expert"].update(head="flow", dropout=0.1, flow_steps=2)
    path = tmp_path / "tiny_flow.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


@pytest.mark.slow
def test_resume_after_interruption_reproduces_the_uninterrupted_run(root, tmp_path):
    model = _flow_dropout_model(tmp_path)
    common = dict(model=model, steps=10, checkpoint_every=4, val_every=5, log_every=1, num_workers=0)
    full = train(_config(root, "full", **common))
    interrupted = train(_config(root, "resumed", stop_after=6, **common))  # dies after step 6 (last ckpt: 4)
    assert not interrupted.finished and interrupted.final_checkpoint is None
    resumed = train(_config(root, "resumed", **common))
    assert resumed.finished
    a = load_file(str(full.final_checkpoint / "policy.safetensors"))
    b = load_file(str(resumed.final_checkpoint / "policy.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert full.history["train/loss"] == resumed.history["train/loss"]
    assert full.history["val/loss"] == resumed.history["val/loss"]
    # The flow head and dropout draw random numbers every step: a different RNG stream gives a different
    # run, so the equalities above hold only because resume restored RNG, data position and optimizer.
    other = train(_config(root, "other", seed=1, **common))
    assert other.history["train/loss"] != full.history["train/loss"]


def test_a_corrupt_cache_shard_is_a_one_line_error_with_the_fix_and_exit_2(root, tmp_path):
    import subprocess
    import sys

    train(_config(root, "warm", steps=2, val_every=2, checkpoint_every=2))  # builds the cache
    shards = sorted((root / "cache").glob("*/shard-*.safetensors"))
    assert shards
    data = bytearray(shards[0].read_bytes())
    data[-5] ^= 0xFF  # same size, wrong sha256
    shards[0].write_bytes(bytes(data))
    args = [
        sys.executable, "-m", "training", "stage1", "--data", str(root / "data"),
        "--out", str(tmp_path / "run"), "--cache-dir", str(root / "cache"), "--cache-mode", "on",
        "--steps", "2", "--global-batch", "8", "--micro-batch", "8", "--val-episodes", *VAL, "--no-progress",
    ]  # fmt: skip
    result = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert result.returncode == 2, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("insertion_vla_train: error:")]
    assert len(errors) == 1 and "Traceback" not in result.stderr
    assert "episode_" in errors[0] and "build-cache" in errors[0] and "--compute-on-miss" in errors[0]


def test_the_age_recipe_travels_in_the_checkpoint_and_sets_the_node_default(root, tmp_path):
    from insertion_vla_ros.runtime.controller import ControllerSettings

    result = train(
        _config(
            root,
            "matched",
            steps=2,
            val_every=2,
            checkpoint_every=2,
            age_recipe="matched",
            vlm_latency_s=0.3,
            vlm_period_s=0.5,
        )
    )
    info = read_checkpoint_info(result.final_checkpoint)
    staleness = info["model_config"]["staleness"]
    assert staleness == {
        "recipe": "matched",
        "vlm_latency_s": 0.3,
        "vlm_period_s": 0.5,
        "min_age_s": pytest.approx(0.3),
        "max_age_s": pytest.approx(0.7),
    }
    policy = load_checkpoint(result.final_checkpoint)
    settings = ControllerSettings.from_policy(policy)
    assert settings.trained_ages_s == (pytest.approx(0.3), pytest.approx(0.7))
    assert settings.vl_max_age_s == pytest.approx(0.7 + 0.1 + 0.25 * 0.5)
    # a checkpoint written before recipes were recorded: loads, with an unknown recipe the node reports
    config = json.loads((result.final_checkpoint / "config.json").read_text())
    del config["model_config"]["staleness"]
    old = tmp_path / "old"
    import shutil

    shutil.copytree(result.final_checkpoint, old)
    (old / "config.json").write_text(json.dumps(config))
    policy = load_checkpoint(old)
    assert policy.config.staleness.recipe == "unknown"
    settings = ControllerSettings.from_policy(policy)
    assert settings.trained_ages_s is None and settings.vl_max_age_s == policy.config.action_expert.max_age_s
