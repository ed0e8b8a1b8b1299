import dataclasses

import numpy as np
import pytest
import torch
from models_fixtures import make_policy, one_torch_thread, sensor, tiny_config, tiny_qwen_dir, views, vl_feats  # noqa: F401

from models.policy import AsyncVLAPolicy, EncodedVL

HEADS = ["regression", "flow"]


@pytest.mark.parametrize("head", HEADS)
def test_predict_shapes_dtypes_and_unbatched_inputs(tiny_qwen_dir, head):  # noqa: F811
    policy = make_policy(tiny_qwen_dir, head=head)
    feats, window = vl_feats(3), sensor(3)
    out = policy.predict_actions(feats, window, torch.tensor([0.0, 0.5, 1.0]))
    assert out.shape == (3, 8, 7) and out.dtype == torch.float32 and torch.isfinite(out).all()
    single = policy.predict_actions(feats[0], window[0], 0.0)
    assert single.shape == (8, 7)
    from_numpy = policy.predict_actions(feats[0].numpy(), window[0].numpy(), np.float32(0.0))
    assert torch.equal(single, from_numpy)
    assert torch.allclose(single, out[0], atol=1e-5)
    shared = policy.predict_actions(feats[:1], window, 0.5)  # one feature set reused by every window
    assert shared.shape == (3, 8, 7)
    assert policy.action_names == ("dx", "dy", "dz", "drx", "dry", "drz", "gripper")
    assert policy.vl_hidden_size == 64


@pytest.mark.parametrize("head", HEADS)
def test_batch_of_one_matches_batch_of_n(tiny_qwen_dir, head):  # noqa: F811
    policy = make_policy(tiny_qwen_dir, head=head)
    feats, window, age = vl_feats(4), sensor(4), torch.tensor([0.0, 0.3, 0.9, 1.6])
    batched = policy.predict_actions(feats, window, age)
    for i in range(4):
        one = policy.predict_actions(feats[i : i + 1], window[i : i + 1], age[i : i + 1])
        assert torch.allclose(one[0], batched[i], atol=1e-5)


@pytest.mark.parametrize("head", HEADS)
def test_predict_is_deterministic_in_eval_even_when_left_in_train_mode(tiny_qwen_dir, head):  # noqa: F811
    cfg = tiny_config(tiny_qwen_dir, head=head, dropout=0.3)
    torch.manual_seed(0)
    policy = AsyncVLAPolicy(cfg).train()
    feats, window = vl_feats(2), sensor(2)
    first = policy.predict_actions(feats, window, 0.2)
    torch.manual_seed(123)  # a different global RNG state must not matter (fixed flow noise)
    second = policy.predict_actions(feats, window, 0.2)
    assert torch.equal(first, second)
    assert policy.training and policy.action_expert.training  # caller's mode restored


@pytest.mark.parametrize("head", HEADS)
def test_predict_uses_only_its_inputs(tiny_qwen_dir, head):  # noqa: F811
    policy = make_policy(tiny_qwen_dir, head=head)
    stream = sensor(1, window=200)[0]  # a longer sensor stream; the tick sees the 65 newest samples
    feats = vl_feats(2)
    tick = 120
    window = stream[tick - 65 : tick]
    before = policy.predict_actions(feats[0], window, 0.4)
    future = stream.clone()
    future[tick:] += 100.0  # samples after the tick
    assert torch.equal(policy.predict_actions(feats[0], future[tick - 65 : tick], 0.4), before)
    # a training step's targets reach nothing predict uses
    targets = torch.randn(1, 8, 7) * 50
    policy(
        {
            "sensor_window": window[None],
            "vl_age_s": torch.tensor([0.4]),
            "target_actions": targets,
            "action_mask": torch.ones(1, 8, dtype=torch.bool),
            "vl_features": feats[:1],
        }
    )
    assert torch.equal(policy.predict_actions(feats[0], window, 0.4), before)
    # ...and it does depend on each input it is given
    changed_window = window.clone()
    changed_window[-1, 0] += 5.0
    assert not torch.allclose(policy.predict_actions(feats[0], changed_window, 0.4), before)
    assert not torch.allclose(policy.predict_actions(feats[1], window, 0.4), before)
    assert not torch.allclose(policy.predict_actions(feats[0], window, 1.5), before)


def test_outputs_are_independent_of_other_samples_and_masked_tokens(tiny_qwen_dir):  # noqa: F811
    policy = make_policy(tiny_qwen_dir)
    feats, window = vl_feats(2), sensor(2)
    mask = torch.ones(2, 80, dtype=torch.bool)
    mask[0, 60:] = False
    base = policy.predict_actions(feats, window, 0.1, vl_mask=mask)
    other = feats.clone()
    other[1] += torch.randn_like(other[1])  # another sample's features (not a constant: LayerNorm removes it)
    other[0, 60:] = 99.0  # padded tokens of this sample
    changed = policy.predict_actions(other, window, 0.1, vl_mask=mask)
    assert torch.allclose(changed[0], base[0], atol=1e-5)
    assert not torch.allclose(changed[1], base[1])
    trimmed = policy.predict_actions(feats[0, :60], window[0], 0.1)
    assert torch.allclose(trimmed, base[0], atol=1e-5)


def test_encoded_features_are_reused_and_invalidated(tiny_qwen_dir):  # noqa: F811
    policy = make_policy(tiny_qwen_dir)
    feats, window = vl_feats(1), sensor(1)
    encoded = policy.encode_vl_features(feats)
    assert isinstance(encoded, EncodedVL) and encoded.latents.shape == (1, 8, 32)
    direct = policy.predict_actions(feats, window, 0.3)
    assert torch.equal(policy.predict_actions(encoded, window, 0.3), direct)
    feats.mul_(2.0)  # in-place edit of the same tensor object must not hit a stale cache
    assert not torch.allclose(policy.predict_actions(feats, window, 0.3), direct)
    with torch.no_grad():
        for p in policy.action_expert.resampler.parameters():
            p.add_(0.1)  # new weights must not hit a stale cache either
    assert not torch.allclose(
        policy.predict_actions(feats, window, 0.3), policy.predict_actions(encoded, window, 0.3)
    )


@pytest.mark.parametrize(
    "feats, window, age, message",
    [
        (vl_feats(1, hidden=32), sensor(1), 0.0, "vl_features"),
        (vl_feats(1), sensor(1, window=64), 0.0, "sensor_window"),
        (vl_feats(1), sensor(1, channels=1025), 0.0, "sensor_window"),
        (vl_feats(2), sensor(3), 0.0, "VL feature sets"),
        (vl_feats(1), sensor(1), torch.tensor([0.0, 1.0]), "vl_age_s"),
        (vl_feats(1), sensor(1), float("nan"), "vl_age_s"),
        (vl_feats(1), sensor(1) * float("nan"), 0.0, "non-finite"),
        (vl_feats(1) * float("inf"), sensor(1), 0.0, "non-finite"),
        ([1, 2], sensor(1), 0.0, "vl_features"),
    ],
)
def test_bad_predict_inputs_raise(tiny_qwen_dir, feats, window, age, message):  # noqa: F811
    policy = make_policy(tiny_qwen_dir)
    with pytest.raises(ValueError, match=message):
        policy.predict_actions(feats, window, age)


def test_action_normalisation_gives_physical_units(tiny_qwen_dir):  # noqa: F811
    policy = make_policy(tiny_qwen_dir)
    feats, window = vl_feats(2), sensor(2)
    raw = policy.predict_actions(feats, window, 0.0)
    mean, std = torch.arange(7.0), torch.full((7,), 2.5)
    policy.set_normalization(action_mean=mean, action_std=std)
    assert torch.allclose(policy.predict_actions(feats, window, 0.0), raw * std + mean, atol=1e-5)
    sensor_mean = torch.zeros(1026)
    sensor_mean[0] = 4.0
    policy.set_normalization(sensor_mean=sensor_mean)
    shifted = window.clone()
    shifted[..., 0] += 4.0  # same normalised input
    policy2 = make_policy(tiny_qwen_dir)
    policy2.load_state_dict(policy.state_dict())
    policy2.set_normalization(sensor_mean=torch.zeros(1026))
    assert torch.allclose(
        policy.predict_actions(feats, shifted, 0.0), policy2.predict_actions(feats, window, 0.0), atol=1e-5
    )
    with pytest.raises(ValueError, match="action_std"):
        policy.set_normalization(action_std=torch.ones(6))


def _batch(n, vl=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    batch = {
        "sensor_window": torch.randn(n, 65, 1026, generator=g),
        "vl_age_s": torch.rand(n, generator=g),
        "target_actions": torch.randn(n, 8, 7, generator=g),
        "action_mask": torch.ones(n, 8, dtype=torch.bool),
    }
    if vl is not None:
        batch["vl_features"] = vl
    return batch


def _snapshot(module):
    return {n: p.detach().clone() for n, p in module.named_parameters()}


def _changed(before, module):
    return {n for n, p in module.named_parameters() if not torch.equal(before[n], p.detach())}


def test_stage1_moves_only_sensor_encoder_and_action_expert(tiny_qwen_dir):  # noqa: F811
    policy = make_policy(tiny_qwen_dir, load_vlm=True)
    policy.set_stage(1)
    groups = policy.parameter_groups()
    assert groups["lora"] == [] and groups["sensor_encoder"] and groups["action_expert"]
    vlm_before = _snapshot(policy.vlm_model)
    sensor_before, expert_before = _snapshot(policy.sensor_encoder), _snapshot(policy.action_expert)
    opt = torch.optim.SGD([p for p in policy.parameters() if p.requires_grad], lr=0.1)
    out = policy(_batch(4, vl_feats(4)))
    out.loss.backward()
    opt.step()
    assert not _changed(vlm_before, policy.vlm_model)
    assert _changed(sensor_before, policy.sensor_encoder) and _changed(expert_before, policy.action_expert)
    report = policy.trainable_parameter_report()
    assert report["vlm"]["trainable"] == 0 and report["action_expert"]["trainable"] > 0


def test_stage2_moves_lora_and_leaves_base_vlm_bit_identical(tiny_qwen_dir):  # noqa: F811
    policy = make_policy(tiny_qwen_dir, load_vlm=True)
    policy.set_stage(2)
    groups = policy.parameter_groups()
    assert len(groups["lora"]) == 16
    opt = torch.optim.AdamW(
        [
            {"params": groups["sensor_encoder"] + groups["action_expert"], "lr": 1e-3},
            {"params": groups["lora"], "lr": 1e-2},
        ]
    )
    vlm_before = _snapshot(policy.vlm_model)
    fp_before = policy.fingerprint
    g, r = 2, 3
    batch = _batch(g * r)
    batch.update(images=[views(0), views(1)], instructions=["insert", "insert the needle"], group_size=r)
    calls = []
    hook = policy.vlm_model.get_base_model().model.visual.register_forward_hook(lambda *a: calls.append(1))
    for _ in range(2):
        opt.zero_grad()
        out = policy(batch)
        out.loss.backward()
        opt.step()
    hook.remove()
    assert len(calls) == 2  # one (batched) VLM forward per step for all G groups x R windows
    changed = _changed(vlm_before, policy.vlm_model)
    assert changed and all(".lora_" in n for n in changed)
    assert policy.fingerprint != fp_before  # LoRA moved, so the features changed
    with pytest.raises(ValueError, match="group_size"):
        bad = dict(batch, group_size=2)
        policy(bad)


def test_stage2_without_vlm_is_refused(tiny_qwen_dir):  # noqa: F811
    with pytest.raises(RuntimeError, match="VLM"):
        make_policy(tiny_qwen_dir).set_stage(2)


def _synthetic_batch(n, g, channels=9):
    """Targets are a function of the force level (sensor) and the sign of a VL feature direction."""
    window = torch.randn(n, 65, channels, generator=g) * 0.1
    force = torch.rand(n, generator=g) * 4 - 2
    window[..., 0] += force[:, None]
    sign = torch.randint(0, 2, (n,), generator=g).float() * 2 - 1
    vl = torch.randn(n, 20, 64, generator=g) * 0.1
    vl[..., 0] += sign[:, None]
    steps = torch.arange(1, 9).float() / 8
    target = torch.zeros(n, 8, 7)
    target[..., 0] = force[:, None] * steps
    target[..., 1] = sign[:, None]
    target[..., 6] = (force > 0).float()[:, None]
    age = torch.rand(n, generator=g) * 1.7
    return {
        "sensor_window": window,
        "vl_age_s": age,
        "target_actions": target,
        "action_mask": torch.ones(n, 8, dtype=torch.bool),
        "vl_features": vl,
    }


@pytest.mark.parametrize("head, steps", [("regression", 150), ("flow", 250)])
def test_training_drives_loss_well_below_start(tiny_qwen_dir, head, steps):  # noqa: F811
    torch.manual_seed(0)
    cfg = tiny_config(tiny_qwen_dir, head=head)
    cfg.sensor.channels = 9  # 1 force + 8 A-line depths: the learning is under test, not the width
    policy = AsyncVLAPolicy(cfg).train()
    policy.set_stage(1)
    opt = torch.optim.AdamW(policy.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(steps):
        out = policy(_synthetic_batch(16, g))
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(out.loss.item())
    start, end = np.mean(losses[:10]), np.mean(losses[-10:])
    assert end < 0.25 * start, (start, end)
    test = _synthetic_batch(64, torch.Generator().manual_seed(99))
    pred = policy.predict_actions(test["vl_features"], test["sensor_window"], test["vl_age_s"])
    baseline = (test["target_actions"] - test["target_actions"].mean(0)).abs().mean()
    assert (pred - test["target_actions"]).abs().mean() < 0.5 * baseline


def test_padded_action_steps_do_not_contribute(tiny_qwen_dir):  # noqa: F811
    policy = make_policy(tiny_qwen_dir)
    batch = _batch(2, vl_feats(2))
    batch["action_mask"][:, 5:] = False
    loss = policy(batch).loss
    batch["target_actions"][:, 5:] = 1e6
    assert torch.allclose(policy(batch).loss, loss)


def test_fingerprint_tracks_vlm_lora_and_layout_only(tiny_qwen_dir):  # noqa: F811
    a = make_policy(tiny_qwen_dir, seed=0)
    b = make_policy(tiny_qwen_dir, seed=1)  # different action-expert weights
    assert a.fingerprint == b.fingerprint and len(a.fingerprint) == 16
    with torch.no_grad():
        for p in b.action_expert.parameters():
            p.add_(1.0)
    assert a.fingerprint == b.fingerprint
    assert make_policy(tiny_qwen_dir, head="flow").fingerprint == a.fingerprint
    for section, changes in [
        ("vlm", {"token_selection": "all"}),
        ("vlm", {"feature_dtype": "float16"}),
        ("vlm", {"max_pixels": 224 * 224}),
        ("vlm", {"num_views": 4}),
    ]:
        cfg = tiny_config(tiny_qwen_dir)
        setattr(cfg, section, dataclasses.replace(getattr(cfg, section), **changes))
        assert AsyncVLAPolicy(cfg).fingerprint != a.fingerprint, changes
    with_vlm = make_policy(tiny_qwen_dir, load_vlm=True)
    assert with_vlm.lora_hash == "none" and with_vlm.fingerprint == a.fingerprint  # fresh adapter is a no-op
    with torch.no_grad():
        for name, p in with_vlm.vlm_model.named_parameters():
            if "lora_B" in name:
                p.fill_(0.01)
    first = with_vlm.fingerprint
    assert first != a.fingerprint
    with torch.no_grad():
        next(p for n, p in with_vlm.vlm_model.named_parameters() if "lora_B" in n).add_(0.01)
    assert with_vlm.fingerprint not in (first, a.fingerprint)
    before_merge = with_vlm.fingerprint
    feats_before = with_vlm.extract_vl_features(views(0), "go")
    with_vlm.merge_lora_for_inference()
    assert with_vlm.fingerprint == before_merge
    assert torch.allclose(with_vlm.extract_vl_features(views(0), "go"), feats_before, atol=1e-4)


def test_extract_vl_features_api(tiny_qwen_dir):  # noqa: F811
    policy = make_policy(tiny_qwen_dir, load_vlm=True)
    feats = policy.extract_vl_features(views(0), "insert")
    assert feats.shape == (80, policy.vl_hidden_size)
    assert policy.last_vl_meta.tokens_per_view == [16] * 5
    batch = policy.extract_vl_features_batch([views(0), views(1)], ["insert", "insert"])
    assert torch.allclose(batch[0], feats, atol=1e-4)
    assert policy.predict_actions(feats, sensor(1)[0], 0.0).shape == (8, 7)
    with pytest.raises(RuntimeError, match="not loaded"):
        make_policy(tiny_qwen_dir).extract_vl_features(views(0), "insert")


# ------------------------------------------------------------------------------ robot-state input
def test_robot_state_is_an_input_of_a_state_policy(tiny_qwen_dir):  # noqa: F811
    policy = make_policy(tiny_qwen_dir, state_dim=3)
    feats, window = vl_feats(2), sensor(2)
    pose = np.array([1.0, -2.0, -4.0, 0.0, 0.0, 0.0, 1.0], np.float32)
    full = policy.predict_actions(feats, window, 0.2, robot_state=pose)
    position_only = policy.predict_actions(feats, window, 0.2, robot_state=pose[:3])
    assert torch.equal(full, position_only)  # trailing pose values are not used by state_dim 3
    deeper = pose.copy()
    deeper[2] = -7.0
    assert not torch.allclose(policy.predict_actions(feats, window, 0.2, robot_state=deeper), full)
    batched = policy.predict_actions(feats, window, 0.2, robot_state=np.stack([pose, deeper]))
    assert torch.allclose(batched[0], full[0], atol=1e-6)
    assert not torch.allclose(batched[1], full[1])
    with pytest.raises(ValueError, match="needs robot_state"):
        policy.predict_actions(feats, window, 0.2)
    with pytest.raises(ValueError, match="non-finite"):
        policy.predict_actions(feats, window, 0.2, robot_state=np.array([0.0, np.nan, 0.0]))
    with pytest.raises(ValueError, match="robot_state must be"):
        policy.predict_actions(feats, window, 0.2, robot_state=np.zeros(2))


def test_state_normalisation_and_state_free_policies(tiny_qwen_dir):  # noqa: F811
    policy = make_policy(tiny_qwen_dir, state_dim=3)
    feats, window = vl_feats(1), sensor(1)
    before = policy.predict_actions(feats, window, 0.0, robot_state=np.array([2.0, 2.0, 2.0]))
    # Whole-pose statistics (7 values) keep the first state_dim; centring on the pose makes it all-zero.
    policy.set_normalization(state_mean=np.array([2.0, 2.0, 2.0, 9, 9, 9, 9]), state_std=np.full(7, 3.0))
    assert torch.equal(policy.state_mean, torch.full((3,), 2.0))
    centred = policy.predict_actions(feats, window, 0.0, robot_state=np.array([2.0, 2.0, 2.0]))
    policy.set_normalization(state_mean=np.zeros(3), state_std=np.ones(3))
    assert torch.allclose(centred, policy.predict_actions(feats, window, 0.0, robot_state=np.zeros(3)))
    assert not torch.allclose(centred, before)
    free = make_policy(tiny_qwen_dir)  # state_dim 0: no extra keys, a given state is not used
    assert free.state_dim == 0 and "state_mean" not in free.state_dict()
    free.set_normalization(state_mean=np.ones(7), state_std=np.ones(7))
    assert torch.equal(
        free.predict_actions(feats, window, 0.0),
        free.predict_actions(feats, window, 0.0, robot_state=np.ones(7)),
    )


def test_state_policy_trains_from_batches_with_robot_state(tiny_qwen_dir):  # noqa: F811
    policy = make_policy(tiny_qwen_dir, state_dim=3)
    batch = {
        "vl_features": vl_feats(4),
        "sensor_window": sensor(4),
        "vl_age_s": torch.zeros(4),
        "target_actions": torch.randn(4, 8, 7),
        "robot_state": torch.randn(4, 7),
    }
    out = policy(batch)
    out.loss.backward()
    assert policy.action_expert.state_embed[0].weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="needs robot_state"):
        policy({k: v for k, v in batch.items() if k != "robot_state"})


def test_predict_restores_a_mixed_train_eval_state_module_by_module(tiny_qwen_dir):  # noqa: F811
    policy = AsyncVLAPolicy(tiny_config(tiny_qwen_dir, dropout=0.3)).train()
    policy.sensor_encoder.eval()  # e.g. a frozen part kept in eval mode by its trainer
    before = {name: m.training for name, m in policy.named_modules()}
    policy.predict_actions(vl_feats(1), sensor(1), 0.2)
    assert {name: m.training for name, m in policy.named_modules()} == before
    assert not policy.sensor_encoder.training and policy.action_expert.training
