import json

import pytest
import torch
from models_fixtures import make_policy, one_torch_thread, sensor, tiny_qwen_dir, views, vl_feats  # noqa: F401
from safetensors.torch import load_file, save_file

from models.checkpoint import CheckpointError, _sha256, load_checkpoint, read_checkpoint_info, save_checkpoint


def _trained_like(policy):
    """Non-default weights and statistics, so a round trip that dropped anything would show."""
    torch.manual_seed(5)
    with torch.no_grad():
        for p in policy.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.01)
    policy.set_normalization(
        sensor_mean=torch.randn(1026),
        sensor_std=torch.rand(1026) + 0.5,
        action_mean=torch.randn(7),
        action_std=torch.rand(7) + 0.5,
    )
    return policy


@pytest.fixture
def saved(tiny_qwen_dir, tmp_path):  # noqa: F811
    policy = _trained_like(make_policy(tiny_qwen_dir))
    return policy, save_checkpoint(policy, tmp_path / "ckpt", extra={"step": 7})


@pytest.mark.parametrize("head", ["regression", "flow"])
def test_round_trip_is_bit_exact(tiny_qwen_dir, tmp_path, head):  # noqa: F811
    policy = _trained_like(make_policy(tiny_qwen_dir, head=head))
    save_checkpoint(policy, tmp_path / "ckpt")
    loaded = load_checkpoint(tmp_path / "ckpt")
    assert not loaded.has_vlm and not loaded.training
    original, again = policy.head_state_dict(), loaded.head_state_dict()
    assert original.keys() == again.keys()
    assert all(torch.equal(original[k], again[k]) for k in original)
    feats, window = vl_feats(2), sensor(2)
    assert torch.equal(policy.predict_actions(feats, window, 0.3), loaded.predict_actions(feats, window, 0.3))
    assert loaded.fingerprint == policy.fingerprint and loaded.config == policy.config


def test_info_is_readable_without_weights(saved):
    policy, path = saved
    info = read_checkpoint_info(path)
    assert info["fingerprint"] == policy.fingerprint
    assert info["action_names"] == ["dx", "dy", "dz", "drx", "dry", "drz", "gripper"]
    assert (info["sensor_window"], info["sensor_channels"], info["horizon"], info["action_dim"]) == (
        65,
        1026,
        8,
        7,
    )
    assert info["extra"] == {"step": 7} and info["has_lora"] is False
    assert {"torch", "transformers", "peft"} <= set(info["versions"])
    assert info["normalization"]["stored_in"] == "policy.safetensors"
    assert torch.allclose(torch.tensor(info["normalization"]["action_mean"]), policy.action_mean)
    assert sorted(p.name for p in path.iterdir()) == ["config.json", "policy.safetensors"]


def test_lora_adapter_round_trip_without_copying_the_base_vlm(tiny_qwen_dir, tmp_path):  # noqa: F811
    policy = make_policy(tiny_qwen_dir, load_vlm=True)
    with torch.no_grad():
        for name, p in policy.vlm_model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.3)
    feats = policy.extract_vl_features(views(0), "insert")
    path = save_checkpoint(policy, tmp_path / "ckpt")
    weights = load_file(str(path / "policy.safetensors"))
    assert not any(k.startswith("vlm_model") for k in weights)
    assert (path / "lora" / "adapter_model.safetensors").is_file()
    assert not (path / "lora" / "model.safetensors").exists()
    expert_only = load_checkpoint(path, load_vlm=False)
    assert not expert_only.has_vlm and expert_only.fingerprint == policy.fingerprint
    full = load_checkpoint(path, load_vlm=True)
    assert full.lora_hash == policy.lora_hash != "none"
    assert torch.equal(full.extract_vl_features(views(0), "insert"), feats)
    # re-saving an expert-only load keeps the adapter
    again = save_checkpoint(expert_only, tmp_path / "again")
    assert read_checkpoint_info(again)["fingerprint"] == policy.fingerprint
    assert (again / "lora" / "adapter_model.safetensors").read_bytes() == (
        path / "lora" / "adapter_model.safetensors"
    ).read_bytes()


def _edit_info(path, fn):
    info = json.loads((path / "config.json").read_text())
    fn(info)
    (path / "config.json").write_text(json.dumps(info))


def _rewrite_weights(path, fn):
    tensors = load_file(str(path / "policy.safetensors"))
    fn(tensors)
    save_file(tensors, str(path / "policy.safetensors"))
    _edit_info(
        path,
        lambda info: info["checksums"].update({"policy.safetensors": _sha256(path / "policy.safetensors")}),
    )


def test_missing_files(saved, tmp_path):
    _, path = saved
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nowhere")
    (path / "policy.safetensors").unlink()
    with pytest.raises(CheckpointError, match="missing.*policy.safetensors"):
        load_checkpoint(path)
    (path / "config.json").unlink()
    with pytest.raises(CheckpointError, match="no config.json"):
        read_checkpoint_info(path)


def test_missing_lora_files(tiny_qwen_dir, tmp_path):  # noqa: F811
    policy = make_policy(tiny_qwen_dir, load_vlm=True)
    path = save_checkpoint(policy, tmp_path / "ckpt")
    (path / "lora" / "adapter_model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="adapter_model.safetensors"):
        load_checkpoint(path)


def test_unknown_config_keys(saved):
    _, path = saved
    _edit_info(path, lambda info: info["model_config"]["action_expert"].update({"n_layers": 3}))
    with pytest.raises(CheckpointError, match=r"action_expert\.n_layers"):
        load_checkpoint(path)
    _edit_info(path, lambda info: info["model_config"]["action_expert"].pop("n_layers"))
    _edit_info(path, lambda info: info.update({"surprise": 1}))
    with pytest.raises(CheckpointError, match="surprise"):
        read_checkpoint_info(path)


def test_bad_json_and_format_version(saved):
    _, path = saved
    _edit_info(path, lambda info: info.update({"format_version": 99}))
    with pytest.raises(CheckpointError, match="format_version 99"):
        load_checkpoint(path)
    (path / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_checkpoint(path)


def test_shape_mismatch_names_the_tensor(saved):
    _, path = saved
    _edit_info(path, lambda info: info["model_config"]["sensor"].update({"aline_embed_dim": 8}))
    pattern = r"shape mismatch for 'sensor_encoder\.aline_embed\.(weight|bias)': checkpoint \[16\]"
    with pytest.raises(CheckpointError, match=pattern):
        load_checkpoint(path)


def test_missing_and_unexpected_tensors(saved):
    _, path = saved
    _rewrite_weights(path, lambda t: t.pop("action_std"))
    with pytest.raises(CheckpointError, match="missing tensor 'action_std'"):
        load_checkpoint(path)
    _rewrite_weights(path, lambda t: t.update({"action_std": torch.ones(7), "stray": torch.zeros(1)}))
    with pytest.raises(CheckpointError, match="unexpected tensor 'stray'"):
        load_checkpoint(path)


def test_non_finite_tensor(saved):
    _, path = saved
    _rewrite_weights(path, lambda t: t["action_expert.out.bias"].__setitem__(0, float("nan")))
    with pytest.raises(CheckpointError, match=r"'action_expert\.out\.bias' contains non-finite"):
        load_checkpoint(path)


def test_corrupt_safetensors(saved):
    _, path = saved
    blob = bytearray((path / "policy.safetensors").read_bytes())
    blob[-3] ^= 0xFF  # one flipped bit in the data region: only the checksum can see it
    (path / "policy.safetensors").write_bytes(bytes(blob))
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(path)
    (path / "policy.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{garbage header}")
    _edit_info(
        path,
        lambda info: info["checksums"].update({"policy.safetensors": _sha256(path / "policy.safetensors")}),
    )
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        load_checkpoint(path)


def test_edited_fingerprint_is_caught(saved):
    _, path = saved
    _edit_info(path, lambda info: info.update({"fingerprint": "0" * 16}))
    with pytest.raises(CheckpointError, match="fingerprint"):
        load_checkpoint(path)


def test_state_policy_round_trip_keeps_state_statistics(tiny_qwen_dir, tmp_path):  # noqa: F811
    policy = _trained_like(make_policy(tiny_qwen_dir, state_dim=3))
    policy.set_normalization(
        state_mean=torch.tensor([1.0, 2.0, -5.0]), state_std=torch.tensor([4.0, 4.0, 3.0])
    )
    save_checkpoint(policy, tmp_path / "ckpt")
    info = read_checkpoint_info(tmp_path / "ckpt")
    assert info["normalization"]["state_mean"] == [1.0, 2.0, -5.0]
    loaded = load_checkpoint(tmp_path / "ckpt")
    assert loaded.state_dim == 3 and torch.equal(loaded.state_std, policy.state_std)
    feats, window, state = vl_feats(1), sensor(1), torch.tensor([[0.5, -1.0, -6.0]])
    assert torch.equal(
        policy.predict_actions(feats, window, 0.3, robot_state=state),
        loaded.predict_actions(feats, window, 0.3, robot_state=state),
    )
