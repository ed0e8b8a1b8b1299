"""Causal, timestamp-aligned samples on a synthetic episode with known motion."""

from __future__ import annotations

import json

import numpy as np
import pytest

from contracts.constants import GRIPPER_DEFAULT, NS_PER_S
from contracts.episode import Episode, EpisodeFormatError
from models.pose_math import pose_delta
from training.alignment import interpolate_poses, pose_at_or_before, target_chunk
from training.dataset import AlignmentConfig, GroupDataset, TickDataset, open_episodes, split_episodes
from training.fixtures import _AXIS, make_synthetic_episode, synthetic_pose
from training.sampler import BatchPlan, sample_k

START = 1_700_000_000_000_000_000
SPEED = 4.0


@pytest.fixture(scope="module")
def episode(tmp_path_factory):
    root = tmp_path_factory.mktemp("align")
    # Cameras at 10 Hz with different phases; one slower camera (5 Hz) so image choice differs per camera.
    path = make_synthetic_episode(
        root / "ep",
        speed=SPEED,
        duration_s=2.5,
        start_ns=START,
        channels=8,
        image_size=16,
        camera_offsets_s=[0.0, 0.013, 0.051, 0.077, 0.03],
    )
    cfg = AlignmentConfig(reuse=5)
    return open_episodes([path], cfg)[0]


def test_interpolation_exact_between_and_at_samples():
    stamps = START + np.arange(0, 11) * 10_000_000
    poses = synthetic_pose((stamps - START) / NS_PER_S, SPEED)
    times = START + np.array([0, 3_000_000, 10_000_000, 57_123_456, 100_000_000, 150_000_000])
    got = interpolate_poses(stamps, poses, times)
    want = synthetic_pose((np.minimum(times, stamps[-1]) - START) / NS_PER_S, SPEED)
    np.testing.assert_allclose(got, want, atol=1e-12)
    np.testing.assert_array_equal(got[2], poses[1])  # exact stamp: the recorded pose itself


def test_targets_match_known_motion(episode):
    cfg = episode.config
    dt = cfg.dt_s
    expected_step = np.concatenate(
        [[SPEED * dt, 0.4 * dt, -0.25 * dt], _AXIS * np.deg2rad(0.2 * SPEED) * dt, [GRIPPER_DEFAULT]]
    )
    for tick in range(0, episode.num_ticks - cfg.horizon - 1, 3):
        sample = episode.sample(tick, 0)
        assert sample["action_mask"].all()
        np.testing.assert_allclose(
            sample["target_actions"], np.tile(expected_step, (cfg.horizon, 1)), atol=1e-6
        )
        t = (sample["tick_ns"] - START) / NS_PER_S
        path = synthetic_pose(t + dt * np.arange(cfg.horizon + 1), SPEED)
        np.testing.assert_allclose(sample["target_actions"], pose_delta(path[:-1], path[1:]), atol=1e-6)


def test_sensor_window_is_causal_and_newest(episode):
    stamps = episode.sensor_stamps_ns
    for tick in range(episode.num_ticks):
        tick_ns = episode.timeline.tick_ns(tick)
        window = episode.sample(tick, 0)["sensor_window"]
        end = int(np.searchsorted(stamps, tick_ns, side="right"))
        assert stamps[end - 1] <= tick_ns and (end == len(stamps) or stamps[end] > tick_ns)
        np.testing.assert_array_equal(window, np.asarray(episode.sensor[end - 65 : end]))
        assert window.shape == (65, 8)


def test_images_newest_at_or_before_feature_time_and_age(episode):
    for tick in range(episode.num_ticks):
        for k in range(min(tick, episode.config.max_k) + 1):
            sample = episode.sample(tick, k)
            t0 = episode.timeline.tick_ns(tick - k)
            ref = sample["ref"]
            for camera, index, stamp in zip(ref.cameras, ref.frame_indices, ref.frame_stamps_ns):
                stamps = episode.frame_stamps_ns[camera]
                assert stamp == stamps[index] <= t0 <= sample["tick_ns"]
                assert index == len(stamps) - 1 or stamps[index + 1] > t0
            age = (sample["tick_ns"] - max(ref.frame_stamps_ns)) / NS_PER_S
            assert sample["vl_age_s"] == pytest.approx(age, abs=1e-6)
            assert sample["vl_age_s"] >= k * episode.config.dt_s - 1e-9


def test_episode_end_holds_still_with_mask(episode):
    cfg = episode.config
    last = episode.num_ticks - 1
    sample = episode.sample(last, 0)
    mask, actions = sample["action_mask"], sample["target_actions"]
    assert not mask.all() and not mask[-1]
    assert np.all(mask[:-1] >= mask[1:])  # valid steps first, then padding
    tick_ns = episode.timeline.tick_ns(last)
    valid_end = tick_ns + (np.arange(cfg.horizon) + 1) * cfg.dt_ns <= episode.pose_stamps_ns[-1]
    np.testing.assert_array_equal(mask, valid_end)
    first_pad_start = int(np.argmin(mask)) + 1  # steps starting after the last pose are exactly still
    np.testing.assert_array_equal(actions[first_pad_start:, :6], 0.0)
    # And the raw helper agrees for a tick past every pose.
    actions, mask = target_chunk(
        episode.pose_stamps_ns, episode.pose, int(episode.pose_stamps_ns[-1]), 8, cfg.dt_ns
    )
    assert not mask.any()
    np.testing.assert_array_equal(actions[:, :6], 0.0)


def test_datasets_ticks_and_groups(episode):
    cfg = episode.config
    ticks = TickDataset([episode], cfg)
    assert len(ticks) == episode.num_ticks
    assert ticks.max_k().max() == cfg.reuse - 1 and ticks.max_k()[0] == 0
    groups = GroupDataset([episode], cfg)
    assert len(groups) == episode.num_ticks - cfg.reuse + 1
    group = groups[(3, 0)]
    assert group["sensor_window"].shape == (cfg.reuse, 65, 8)
    np.testing.assert_array_equal(group["k"], np.arange(cfg.reuse))
    assert len(group["images"]) == 5 and group["images"][0].shape == (16, 16, 3)
    ages = group["vl_age_s"]
    assert np.all(np.diff(ages) == pytest.approx(cfg.dt_s, abs=1e-6))  # one feature, R ticks growing older


def test_sampler_deterministic_and_k_in_range():
    max_k = np.array([0, 1, 2, 16, 16, 16, 16, 3] * 8)
    plan = BatchPlan(max_k, global_batch=8, seed=3)
    again = BatchPlan(max_k, global_batch=8, seed=3)
    for step in range(plan.steps_per_epoch):
        items = plan.global_items(1, step)
        assert items == again.global_items(1, step)
        assert all(0 <= k <= max_k[i] for i, k in items)
    assert plan.global_items(0, 0) != plan.global_items(1, 0)
    # Micro-batches of all ranks together are exactly the global batch.
    union = [x for r in range(2) for mb in plan.micro_batches(0, 2, r, world=2, accum=2) for x in mb]
    assert sorted(union) == sorted(plan.global_items(0, 2))
    # A configured age distribution is honoured (k=0 never drawn when its weight is 0).
    ks = sample_k(np.random.default_rng(0), np.full(2000, 4), [0.0, 1.0, 1.0, 0.0, 2.0])
    assert set(np.unique(ks)) == {1, 2, 4}
    assert abs(np.mean(ks == 4) - 0.5) < 0.05


def test_split_is_by_episode(tmp_path):
    paths = [tmp_path / f"ep{i}" for i in range(10)]
    train, val = split_episodes(paths, 0.2, seed=0)
    assert len(val) == 2 and not set(train) & set(val) and sorted(train + val) == sorted(paths)
    assert split_episodes(paths, 0.2, seed=0) == (train, val)


def test_robot_state_is_the_newest_pose_at_or_before_the_tick(episode):
    for tick in (0, 5, episode.num_ticks - 1):
        sample = episode.sample(tick, 0)
        tick_ns = sample["tick_ns"]
        before = episode.pose_stamps_ns <= tick_ns
        newest = int(np.flatnonzero(before)[-1])
        np.testing.assert_array_equal(sample["robot_state"], episode.pose[newest].astype(np.float32))
        # Never a pose after the tick: shifting the tick 1 ns before that pose's stamp changes the answer.
        if episode.pose_stamps_ns[newest] == tick_ns and newest > 0:
            earlier = pose_at_or_before(episode.pose_stamps_ns, episode.pose, tick_ns - 1)
            np.testing.assert_array_equal(earlier, episode.pose[newest - 1].astype(np.float32))


def test_motion_since_capture_is_the_pose_change_from_the_newest_image_to_the_tick(episode):
    for tick, k in ((10, 0), (12, 3), (episode.num_ticks - 1, 4)):
        sample = episode.sample(tick, k)
        capture = sample["ref"].newest_stamp_ns
        then = synthetic_pose(
            (episode.pose_stamps_ns[episode.pose_stamps_ns <= capture][-1] - START) / NS_PER_S, SPEED
        )
        now = synthetic_pose(
            (episode.pose_stamps_ns[episode.pose_stamps_ns <= sample["tick_ns"]][-1] - START) / NS_PER_S,
            SPEED,
        )
        np.testing.assert_allclose(sample["motion"], pose_delta(then, now)[:6], atol=1e-5)
        # the translation part is the distance travelled (4 mm/s along x) over the poses' time apart
        assert sample["motion"][0] == pytest.approx(SPEED * (sample["vl_age_s"]), abs=SPEED * 0.011)
    # nothing from after the tick: poses later than it would change neither the state nor the motion
    sample = episode.sample(20, 2)
    cut = episode.pose_stamps_ns <= sample["tick_ns"]
    from training.alignment import motion_since

    again = motion_since(
        episode.pose_stamps_ns[cut], episode.pose[cut], sample["ref"].newest_stamp_ns, sample["robot_state"]
    )
    np.testing.assert_array_equal(again, sample["motion"])


def test_the_matched_recipe_draws_the_ages_the_node_sees(episode):
    from models.config import load_model_config
    from training.age_recipe import age_plan, staleness_config

    model = load_model_config("tiny")
    plan = age_plan("matched", model, latency_s=0.3, period_s=0.5)
    assert (plan.first_k, plan.reuse) == (3, 5) and plan.age_weights == (0, 0, 0, 1, 1, 1, 1, 1)
    recorded = staleness_config(plan)
    assert (recorded.recipe, recorded.min_age_s, recorded.max_age_s) == (
        "matched",
        pytest.approx(0.3),
        pytest.approx(0.7),
    )
    cfg = AlignmentConfig(reuse=plan.reuse, age_weights=plan.age_weights, group_offset=plan.first_k)
    ticks = TickDataset([episode], cfg)
    plan_batches = BatchPlan(ticks.max_k(), global_batch=8, seed=1, age_weights=cfg.age_weights)
    ages = np.array(
        [
            ticks[item]["vl_age_s"]
            for step in range(plan_batches.steps_per_epoch)
            for item in plan_batches.global_items(0, step)
        ]
    )
    late = ages[ages > 0.25]  # ticks early in the episode cannot reach back 0.3 s: they take the oldest frame
    assert late.size > 0.7 * ages.size
    assert late.min() >= 0.3 - 0.09 and late.max() <= 0.7 + 0.06  # + the camera phase against the tick
    # uniform over the five reuse steps
    ks = sample_k(np.random.default_rng(0), np.full(5000, 20), cfg.age_weights)
    counts = np.bincount(ks, minlength=10)
    assert counts[:3].sum() == 0 and counts[8:].sum() == 0 and counts[3:8].min() > 900, counts
    # Stage 2 groups: one feature, the R ticks k = 3..7 after it, each with its own window and target
    groups = GroupDataset([episode], cfg)
    group = groups[(0, 0)]
    assert list(group["k"]) == [3, 4, 5, 6, 7] and len({a.tobytes() for a in group["sensor_window"]}) == 5
    assert age_plan("fresh", model).age_weights == (1.0,) and age_plan("reuse", model).age_weights is None
    with pytest.raises(ValueError, match="age recipe"):
        age_plan("stale", model)


def test_ticks_start_at_the_action_start_and_features_reach_back_into_the_rest_before_it(tmp_path):
    # A recording that starts at rest: ticks (targets) begin at action_start_ns, while the frames before
    # it can still be the feature of a later tick, so the first moves get the old features the node has.
    path = make_synthetic_episode(
        tmp_path / "ep", duration_s=2.5, start_ns=START, channels=8, image_size=16, action_start_s=1.0
    )
    cfg = AlignmentConfig(reuse=5, age_weights=(0.0,) * 8 + (1.0,) * 5, group_offset=8)  # 0.8-1.2 s
    ep = open_episodes([path], cfg)[0]
    assert ep.episode.action_start_ns == START + NS_PER_S
    assert ep.timeline.first_tick_ns == START + NS_PER_S
    last_first_frame = max(int(ep.frame_stamps_ns[c][0]) for c in ep.cameras)
    assert ep.context_ticks == (START + NS_PER_S - last_first_frame) // cfg.dt_ns == 9
    ticks = TickDataset([ep], cfg)
    assert ticks.max_k()[0] == 9 and ticks.max_k()[3] == cfg.max_k == 12
    first = ep.sample(0, 9)
    assert first["tick_ns"] == START + NS_PER_S
    assert first["ref"].newest_stamp_ns < START + NS_PER_S - 8 * cfg.dt_ns
    assert first["vl_age_s"] >= 0.8
    with pytest.raises(IndexError):
        ep.sample(0, 10)
    groups = GroupDataset([ep], cfg)
    assert groups.index[0, 1] == -8  # the first group's feature is a context time; its first tick is tick 0
    group = groups[(0, 0)]
    assert int(group["tick_ns"][0]) == START + NS_PER_S and np.all(group["vl_age_s"] >= 0.8 - 0.06)
    from training.trainer import all_feature_refs

    refs = all_feature_refs([ep])
    assert min(r.newest_stamp_ns for r in refs) < START + NS_PER_S - 8 * cfg.dt_ns


def test_an_action_start_outside_the_recording_is_reported(tmp_path):
    path = make_synthetic_episode(tmp_path / "ep", duration_s=1.0, channels=8, image_size=16)
    meta = json.loads((path / "meta.json").read_text())
    meta["action_start_ns"] = meta.get("action_start_ns", 0) + 1
    (path / "meta.json").write_text(json.dumps(meta))
    problems = Episode(path).problems()
    assert any("action_start_ns" in p and "outside the pose stream" in p for p in problems), problems
    meta["action_start_ns"] = 1.5e18  # a float stamp: not an integer count of ns
    (path / "meta.json").write_text(json.dumps(meta))
    problems = Episode(path).problems()
    assert any("must be an integer stamp" in p for p in problems), problems
    with pytest.raises(EpisodeFormatError, match="action_start_ns"):
        open_episodes([path], AlignmentConfig(reuse=5))
