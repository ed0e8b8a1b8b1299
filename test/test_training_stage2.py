"""Stage 2 (LoRA, cache off, one VLM forward per R ticks): learns, base VLM untouched, checkpoint loads."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.checkpoint import load_checkpoint, read_checkpoint_info
from models.lora import is_lora_parameter
from training.config import TrainConfig
from training.fixtures import make_synthetic_dataset
from training.trainer import Trainer


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("stage2")
    make_synthetic_dataset(root / "data", num_episodes=12, duration_s=2.2)
    cfg = TrainConfig(
        stage=2,
        data=str(root / "data"),
        out=str(root / "run"),
        cache_mode="off",
        val_episodes=["episode_003", "episode_008"],
        steps=16,
        global_batch=4,
        micro_batch=2,
        val_every=16,
        log_every=4,
        checkpoint_every=16,
        warmup_steps=2,
        lr_sensor_encoder=8e-4,
        lr_action_expert=1e-3,
        lr_lora=2e-3,
        val_max_items=4,
        progress=False,
    )
    trainer = Trainer(cfg)
    vlm = trainer.policy.vlm_model
    base_before = {n: p.detach().clone() for n, p in vlm.named_parameters() if not is_lora_parameter(n)}
    buffers_before = {n: b.detach().clone() for n, b in vlm.named_buffers()}
    lora_before = {n: p.detach().clone() for n, p in vlm.named_parameters() if is_lora_parameter(n)}
    heads_before = {n: p.detach().clone() for n, p in trainer.policy.action_expert.named_parameters()}
    try:
        result = trainer.run()
    finally:
        trainer.close()
    return trainer, result, base_before, buffers_before, lora_before, heads_before


def test_stage2_reduces_validation_loss(trained):
    trainer, result, *_ = trained
    assert result.finished
    val = dict((int(s), v) for s, v in result.history["val/loss"])
    assert val[16] < 0.6 * val[0], val
    # One VLM forward per micro-batch of 2 groups x R=17 windows; 2 micro-batches per step.
    assert trainer.align.reuse == 17 and trainer.accum == 2


def test_base_vlm_bit_identical_only_lora_and_heads_move(trained):
    trainer, _, base_before, buffers_before, lora_before, heads_before = trained
    vlm = trainer.policy.vlm_model
    for name, param in vlm.named_parameters():
        if not is_lora_parameter(name):
            assert torch.equal(param, base_before[name]), name
            assert not param.requires_grad
    for name, buffer in vlm.named_buffers():
        assert torch.equal(buffer, buffers_before[name]), name
    lora_now = {n: p for n, p in vlm.named_parameters() if is_lora_parameter(n)}
    assert lora_now and any(not torch.equal(lora_now[n], lora_before[n]) for n in lora_now)
    assert all(bool(p.detach().abs().sum() > 0) for n, p in lora_now.items() if "lora_B" in n)
    moved = [
        n for n, p in trainer.policy.action_expert.named_parameters() if not torch.equal(p, heads_before[n])
    ]
    assert len(moved) > len(heads_before) // 2


def test_separate_learning_rates_per_group(trained):
    trainer, *_ = trained
    groups = {g["name"]: g for g in trainer.optimizer.param_groups}
    assert set(groups) == {"sensor_encoder", "action_expert", "lora"}
    ratio = groups["lora"]["lr"] / 2e-3
    assert groups["sensor_encoder"]["lr"] == pytest.approx(8e-4 * ratio)
    assert groups["action_expert"]["lr"] == pytest.approx(1e-3 * ratio)
    lora_ids = {id(p) for p in groups["lora"]["params"]}
    assert lora_ids == {id(p) for n, p in trainer.policy.vlm_model.named_parameters() if is_lora_parameter(n)}


def test_final_checkpoint_with_lora_loads_in_the_nodes_unchanged(trained):
    trainer, result, *_ = trained
    info = read_checkpoint_info(result.final_checkpoint)
    assert info["has_lora"] and info["lora_hash"] != "none"
    assert info["fingerprint"] == trainer.policy.fingerprint
    vlm_side = load_checkpoint(result.final_checkpoint, load_vlm=True)  # vlm_node
    expert_side = load_checkpoint(result.final_checkpoint)  # action_expert_node
    episode = trainer.val_episodes[0]
    sample = episode.sample(5, 0)
    images = episode.load_images(sample["ref"])
    trained_policy = trainer.policy.eval()
    features = vlm_side.extract_vl_features(images, episode.instruction)
    torch.testing.assert_close(features, trained_policy.extract_vl_features(images, episode.instruction))
    window = torch.from_numpy(np.ascontiguousarray(sample["sensor_window"]))
    age, state = float(sample["vl_age_s"]), sample["robot_state"]
    torch.testing.assert_close(
        expert_side.predict_actions(features, window, age, robot_state=state),
        trained_policy.predict_actions(features, window, age, robot_state=state),
    )
