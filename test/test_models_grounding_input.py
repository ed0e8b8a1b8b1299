"""The grounding read-out: the VLM's Stage 0 grounding head, frozen inside the action expert."""

import shutil

import numpy as np
import pytest
import torch
from models_fixtures import make_policy, one_torch_thread, sensor, tiny_qwen_dir, vl_feats  # noqa: F401

from models.checkpoint import load_checkpoint, save_checkpoint
from models.grounding import OFFSET_SCALE_MM, GroundingHead, GroundingHeadConfig, save_grounding_head
from models.policy import grounding_head_config

HEAD = GroundingHeadConfig(hidden_size=64, num_views=5, grid_h=4, grid_w=4)


@pytest.fixture(scope="module")
def vlm_with_head(tiny_qwen_dir, tmp_path_factory):  # noqa: F811
    """The tiny VLM folder plus a (random) grounding head, as a Stage 0 model is shipped."""
    folder = tmp_path_factory.mktemp("stage0") / "model"
    shutil.copytree(tiny_qwen_dir, folder)
    torch.manual_seed(7)
    head = GroundingHead(HEAD)
    with torch.no_grad():
        for parameter in head.parameters():
            parameter.normal_(0.0, 0.5)
    save_grounding_head(head, folder)
    return folder, head


def test_head_shape_follows_the_feature_layout(tiny_qwen_dir):  # noqa: F811
    policy = make_policy(tiny_qwen_dir, grounding_input=True)
    assert grounding_head_config(policy.config) == HEAD
    assert grounding_head_config(make_policy(tiny_qwen_dir).config) is None


def test_readout_is_the_vlm_head_frozen_and_one_more_latent(vlm_with_head):
    folder, head = vlm_with_head
    policy = make_policy(folder, grounding_input=True)
    readout = policy.action_expert.resampler.grounding
    assert not torch.equal(readout.offset.weight, head.offset.weight)  # fresh: not yet the VLM's head
    policy.load_grounding_from_vlm()
    for name, value in head.state_dict().items():
        assert torch.equal(readout.state_dict()[name], value), name
    policy.set_stage(1)
    trainable = {id(p) for group in policy.parameter_groups().values() for p in group}
    assert not any(id(p) in trainable for p in readout.parameters())
    assert any(id(p) in trainable for p in policy.action_expert.resampler.grounding_embed.parameters())

    feats = vl_feats(3)
    latents = policy.encode_vl_features(feats).latents
    cfg = policy.config.action_expert
    assert (
        latents.shape == (3, cfg.vl_latents + 1, cfg.d_model) and cfg.encoded_vl_tokens == cfg.vl_latents + 1
    )
    with torch.no_grad():
        expected = head(feats).offset_mm / OFFSET_SCALE_MM
    assert torch.allclose(latents[:, -1, :2], expected, atol=1e-5)  # the raw read-out, embedded at the tick
    assert torch.equal(latents[:, -1, 2:], torch.zeros_like(latents[:, -1, 2:]))
    actions = policy.predict_actions(feats, sensor(3), 0.5)
    assert actions.shape == (3, 8, 7) and torch.isfinite(actions).all()


def test_readout_needs_every_vision_token(vlm_with_head):
    policy = make_policy(vlm_with_head[0], grounding_input=True)
    mask = torch.ones(2, 80, dtype=torch.bool)
    mask[1, 40] = False
    with pytest.raises(ValueError, match="all 80 vision tokens"):
        policy.encode_vl_features(vl_feats(2), mask)


def test_vlm_without_or_with_another_head_is_refused(tiny_qwen_dir, vlm_with_head, tmp_path):  # noqa: F811
    with pytest.raises(FileNotFoundError, match="no grounding head"):
        make_policy(tiny_qwen_dir, grounding_input=True).load_grounding_from_vlm()
    other = tmp_path / "model"
    shutil.copytree(vlm_with_head[0], other)
    save_grounding_head(GroundingHead(GroundingHeadConfig(64, 5, 2, 8)), other)
    with pytest.raises(ValueError, match="grounding head"):
        make_policy(other, grounding_input=True).load_grounding_from_vlm()


def test_checkpoint_carries_the_readout_without_the_vlm(vlm_with_head, tmp_path):
    folder, head = vlm_with_head
    policy = make_policy(folder, grounding_input=True)
    policy.load_grounding_from_vlm()
    save_checkpoint(policy, tmp_path / "ckpt")
    loaded = load_checkpoint(tmp_path / "ckpt")  # the action-expert node: no VLM folder read
    feats, window = vl_feats(2), sensor(2)
    assert torch.equal(loaded.predict_actions(feats, window, 0.3), policy.predict_actions(feats, window, 0.3))
    assert torch.equal(loaded.action_expert.resampler.grounding.offset.weight, head.offset.weight)


def test_with_motion_input_the_readout_also_enters_as_it_is_at_the_tick(vlm_with_head):
    """A feature 3 s old: the read-out at capture minus the lateral motion since is the offset from here."""
    folder, head = vlm_with_head
    policy = make_policy(folder, grounding_input=True, motion_input=True)
    policy.load_grounding_from_vlm()
    policy.set_normalization(motion_mean=torch.full((6,), 0.5), motion_std=torch.full((6,), 2.0))
    ae = policy.action_expert
    assert ae.grounding_now_embed is not None
    assert make_policy(folder, grounding_input=True).action_expert.grounding_now_embed is None
    feats = vl_feats(2)
    motion_mm = torch.tensor([[3.0, -4.0, 1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0, 0.0, 0.0]])
    seen = []
    ae.grounding_now_embed.register_forward_hook(lambda module, args, out: seen.append(args[0].clone()))
    policy.predict_actions(feats, sensor(2), 2.0, motion=motion_mm)
    with torch.no_grad():
        at_capture = head(feats).offset_mm
    np.testing.assert_allclose(
        (seen[0] * OFFSET_SCALE_MM).numpy(), (at_capture - motion_mm[:, :2]).numpy(), atol=1e-4
    )
    # The same motion in every other channel and the same read-out: only the lateral motion moves it.
    seen.clear()
    moved_up = motion_mm.clone()
    moved_up[:, 2] += 5.0
    policy.predict_actions(feats, sensor(2), 2.0, motion=moved_up)
    np.testing.assert_allclose(
        (seen[0] * OFFSET_SCALE_MM).numpy(), (at_capture - motion_mm[:, :2]).numpy(), atol=1e-4
    )


@pytest.mark.parametrize("head", ["regression", "flow"])
def test_lateral_steps_from_the_readout_are_gated_fractions_of_the_offset_from_here(vlm_with_head, head):
    """``lateral_from_readout``: dx, dy point at the compensated read-out and never step past it."""
    folder, grounding = vlm_with_head
    policy = make_policy(
        folder, grounding_input=True, motion_input=True, lateral_from_readout=True, head=head
    )
    policy.load_grounding_from_vlm()
    feats, window = vl_feats(2), sensor(2)
    motion_mm = torch.tensor([[3.0, -4.0, 1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0, 0.0, 0.0]])
    with torch.no_grad():
        from_here = grounding(feats).offset_mm - motion_mm[:, :2]
        chunk = policy.predict_actions(feats, window, 2.0, motion=motion_mm)
    steps = chunk[..., :2]
    unit = from_here / from_here.norm(dim=-1, keepdim=True)
    along = (steps * unit[:, None]).sum(-1)
    across = steps[..., 0] * unit[:, None, 1] - steps[..., 1] * unit[:, None, 0]
    assert (along > 0).all() and torch.allclose(across, torch.zeros_like(across), atol=1e-5)
    assert (along.sum(1) < from_here.norm(dim=-1)).all()  # what is left after the chunk stays ahead
    gate = policy.action_expert.gate_out
    with torch.no_grad():
        gate.bias.fill_(30.0)  # "all of it now": the first step covers the offset, the rest stand still
        snapped = policy.predict_actions(feats, window, 2.0, motion=motion_mm)
        gate.bias.fill_(-30.0)
        still = policy.predict_actions(feats, window, 2.0, motion=motion_mm)
    torch.testing.assert_close(snapped[:, 0, :2], from_here, atol=1e-4, rtol=1e-4)
    assert snapped[:, 1:, :2].abs().max() < 1e-4 and still[..., :2].abs().max() < 1e-4
    torch.testing.assert_close(snapped[..., 2:], still[..., 2:])  # the gates touch dx, dy only


def test_lateral_gates_train_on_the_demonstrated_steps(vlm_with_head):
    """The gates learn from the lateral targets: the loss on them falls and enters the training loss."""
    folder, grounding = vlm_with_head
    policy = make_policy(folder, grounding_input=True, motion_input=True, lateral_from_readout=True)
    policy.load_grounding_from_vlm()
    policy.set_stage(1)
    feats, window = vl_feats(4), sensor(4)
    motion = torch.zeros(4, 6)
    with torch.no_grad():
        from_here = grounding(feats).offset_mm
    target = torch.zeros(4, 8, 7)
    target[:, 0, :2] = 0.5 * from_here  # half of the offset, then the other half, then stand still
    target[:, 1, :2] = 0.5 * from_here
    batch = {
        "sensor_window": window,
        "vl_age_s": torch.full((4,), 0.5),
        "target_actions": target,
        "vl_features": feats,
        "motion": motion,
    }
    params = [p for group in policy.parameter_groups().values() for p in group]
    optimizer = torch.optim.Adam(params, lr=3e-3)
    first = policy(batch).metrics["lateral_mse_norm"]
    for _ in range(60):
        optimizer.zero_grad()
        output = policy(batch)
        output.loss.backward()
        optimizer.step()
    assert output.metrics["loss"] > output.metrics["lateral_mse_norm"] > 0.0
    assert policy(batch).metrics["lateral_mse_norm"] < 0.3 * first


def test_lateral_from_readout_needs_the_readout(tiny_qwen_dir):  # noqa: F811
    from models.config import ConfigError

    with pytest.raises(ConfigError, match="lateral_from_readout needs grounding_input"):
        make_policy(tiny_qwen_dir, motion_input=True, lateral_from_readout=True)
    with pytest.raises(ValueError, match="decodes its lateral steps"):
        ae = make_policy(tiny_qwen_dir).action_expert
        ae.lateral_steps_mm(
            torch.zeros(1, 4, 64), torch.zeros(1, 64), torch.zeros(1, 9, 64), torch.zeros(1, 6)
        )


def test_without_motion_input_the_gates_steer_to_the_offset_at_capture(vlm_with_head):
    """The staleness ablation (no motion since capture): the same gates on the uncompensated read-out."""
    folder, grounding = vlm_with_head
    policy = make_policy(folder, grounding_input=True, lateral_from_readout=True)
    policy.load_grounding_from_vlm()
    feats = vl_feats(2)
    with torch.no_grad():
        policy.action_expert.gate_out.bias.fill_(30.0)
        snapped = policy.predict_actions(feats, sensor(2), 2.0)
        at_capture = grounding(feats).offset_mm
    torch.testing.assert_close(snapped[:, 0, :2], at_capture, atol=1e-4, rtol=1e-4)
