"""The grounding read-out: the VLM's Stage 0 grounding head, frozen inside the action expert."""

import shutil

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
        expected = policy.action_expert.resampler.grounding_embed(head(feats).offset_mm / OFFSET_SCALE_MM)
    assert torch.allclose(latents[:, -1], expected, atol=1e-5)
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
