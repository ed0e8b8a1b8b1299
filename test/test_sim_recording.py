"""Sim demonstrations written as training episodes and as rosbag2 MCAP, read back independently."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from rosbags.highlevel import AnyReader
from rosbags.interfaces import QosDurability

from contracts import topics
from contracts.constants import CAMERA_NAMES
from contracts.episode import Episode, list_episodes
from models.pose_math import quaternion_to_rotvec
from sim.demos import episode_seed, generate_demonstrations

WIDTH, HEIGHT = 96, 64


@pytest.fixture(scope="module")
def demos(tmp_path_factory):
    root = tmp_path_factory.mktemp("sim_demos")
    summaries = generate_demonstrations(
        root / "episodes", 1, seed=5, image_size=(WIDTH, HEIGHT), camera_rate_hz=20.0, bag_dir=root / "bags",
        targets=["Yellow"], progress=False,
    )  # fmt: skip
    return root, summaries


def test_demonstration_episode_reads_back_without_problems(demos):
    root, summaries = demos
    assert len(summaries) == 1 and summaries[0]["success"]
    (path,) = list_episodes(root / "episodes")
    episode = Episode(path)
    assert episode.problems() == []
    assert episode.instruction == "Perform Yellow_point insertion task"
    assert episode.cameras == list(CAMERA_NAMES)
    meta = episode.meta["metadata"]
    assert meta["target"] == "Yellow" and meta["seed"] == 5 and meta["episode_seed"] == episode_seed(5, 0)
    assert meta["result"]["success"] and abs(meta["result"]["depth_error_mm"]) < 0.75
    assert episode.meta["source"] == "sim" and episode.sensor.shape[1] == 1026

    sensor_dt = np.diff(episode.sensor_stamps_ns) / 1e9
    assert sensor_dt == pytest.approx(1 / 650, abs=2e-9)
    assert np.diff(episode.pose_stamps_ns) == pytest.approx(10_000_000)
    frames = episode.frame_stamps_ns("view1")
    assert np.diff(frames) == pytest.approx(50_000_000)  # 20 Hz cameras
    assert frames[0] == episode.pose_stamps_ns[0] == episode.sensor_stamps_ns[0] > 0
    duration_s = (episode.pose_stamps_ns[-1] - episode.pose_stamps_ns[0]) / 1e9
    assert duration_s == pytest.approx(summaries[0]["time_s"])
    assert episode.sensor.shape[0] == int(duration_s * 650) + 1
    frame = episode.load_frame("view5", len(frames) - 1)
    assert frame.shape == (HEIGHT, WIDTH, 3)
    # The expert ends over the target at depth: the last pose matches the ground-truth result.
    assert -episode.pose[-1, 2] == pytest.approx(meta["result"]["tip_depth_mm"])
    # Force went through punctures: peak above the noise, and it stayed under the limit.
    assert 0.5 < episode.sensor[:, 0].max() < meta["result"]["force_limit_n"]


def test_bag_has_the_real_topic_layout_and_the_same_values(demos):
    root, summaries = demos
    episode = Episode(list_episodes(root / "episodes")[0])
    bag = Path(summaries[0]["paths"][1])
    assert (bag / "metadata.yaml").is_file() and list(bag.glob("*.mcap"))
    frames = len(episode.frame_stamps_ns("view1"))
    samples = episode.sensor.shape[0]
    with AnyReader([bag]) as reader:
        found = {c.topic: (c.msgtype, c.msgcount) for c in reader.connections}
        expected = {topics.camera_topic(name): (topics.IMAGE_TYPE, frames) for name in CAMERA_NAMES}
        expected[topics.SENSOR_TOPIC] = (topics.SENSOR_TYPE, -(-samples // topics.SENSOR_SAMPLES_PER_MESSAGE))
        expected[topics.POSE_TOPIC] = (topics.POSE_TYPE, episode.pose.shape[0])
        expected[topics.INSTRUCTION_TOPIC] = (topics.INSTRUCTION_TYPE, 1)
        assert found == expected
        (instruction_conn,) = [c for c in reader.connections if c.topic == topics.INSTRUCTION_TOPIC]
        qos = instruction_conn.ext.offered_qos_profiles
        assert qos and qos[0].durability == QosDurability.TRANSIENT_LOCAL

        sensor, sensor_stamps, poses, pose_stamps, images = [], [], [], [], {}
        for conn, log_time, raw in reader.messages():
            msg = reader.deserialize(raw, conn.msgtype)
            if conn.topic == topics.SENSOR_TOPIC:
                assert msg.sample_rate_hz == 650.0 and msg.num_channels == 1026
                assert 1 <= msg.num_samples <= topics.SENSOR_SAMPLES_PER_MESSAGE
                sensor.append(msg.data.reshape(msg.num_samples, msg.num_channels))
                sensor_stamps.append(msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec)
                assert log_time == sensor_stamps[-1]
            elif conn.topic == topics.POSE_TOPIC:
                assert msg.header.frame_id == topics.POSE_FRAME_ID
                p, q = msg.pose.position, msg.pose.orientation
                rotvec = quaternion_to_rotvec(np.array([q.x, q.y, q.z, q.w]))
                poses.append(np.concatenate([[p.x, p.y, p.z], rotvec]))
                pose_stamps.append(msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec)
            elif conn.topic == topics.INSTRUCTION_TOPIC:
                assert msg.data == episode.instruction
            else:
                name = topics.camera_name_from_topic(conn.topic)
                assert msg.encoding == "rgb8" and msg.step == WIDTH * 3
                assert (msg.height, msg.width) == (HEIGHT, WIDTH)
                images.setdefault(name, []).append(msg.data.reshape(HEIGHT, WIDTH, 3))

    np.testing.assert_array_equal(np.concatenate(sensor), episode.sensor)
    batch = topics.SENSOR_SAMPLES_PER_MESSAGE
    np.testing.assert_array_equal(sensor_stamps, episode.sensor_stamps_ns[::batch])
    poses = np.asarray(poses)
    np.testing.assert_allclose(poses[:, :3] * 1000.0, episode.pose[:, :3], atol=1e-9)  # metres in the bag
    np.testing.assert_allclose(poses[:, 3:6], episode.pose[:, 3:6], atol=1e-9)
    np.testing.assert_array_equal(pose_stamps, episode.pose_stamps_ns)
    # Bag frames are the raw renders; the episode holds them as JPEG.
    for name in CAMERA_NAMES:
        assert len(images[name]) == frames
        decoded = episode.load_frame(name, frames // 2).astype(float)
        assert np.abs(images[name][frames // 2].astype(float) - decoded).mean() < 4.0


def test_bag_converts_back_through_the_training_converter(demos, tmp_path):
    from training.convert_bag import convert_bags

    root, summaries = demos
    report = convert_bags(root / "bags", tmp_path, progress=False)
    assert len(report.converted) == 1, report.summary()
    converted = Episode(list_episodes(tmp_path)[0])
    original = Episode(list_episodes(root / "episodes")[0])
    assert converted.problems() == [] and converted.instruction == original.instruction
    # The converter rebuilds sample stamps from each message's first stamp and the rate: within 1 ns.
    np.testing.assert_allclose(converted.sensor_stamps_ns, original.sensor_stamps_ns, rtol=0, atol=1)
    np.testing.assert_allclose(converted.sensor, original.sensor)
    np.testing.assert_allclose(converted.pose[:, :6], original.pose[:, :6], atol=1e-6)
    assert len(converted.frame_stamps_ns("view3")) == len(original.frame_stamps_ns("view3"))


def test_topic_helpers():
    assert topics.camera_topic("view2") == "/cameras/view2/image_raw"
    assert topics.camera_name_from_topic("/cameras/view2/image_raw") == "view2"
    assert topics.camera_name_from_topic("/cameras/view2/image_raw/compressed") is None
    assert topics.camera_name_from_topic(topics.SENSOR_TOPIC) is None


def test_a_start_wait_lets_the_first_moves_train_on_features_as_old_as_the_nodes(tmp_path):
    """The node holds until the VLM's first result (1.5 s), so its first moves use 1.5-3.2 s old features.

    Demonstrations that move at once can never show those ages before the needle is aligned: a Stage 1
    policy trained on them descended wherever it was (lateral error 4-7 mm, the target never reached).
    """
    from models.config import load_model_config
    from training.age_recipe import age_plan
    from training.dataset import AlignmentConfig, TickDataset, open_episodes

    plan = age_plan("matched", load_model_config("tiny_sim"), latency_s=1.5, period_s=1.7)
    cfg = AlignmentConfig(reuse=plan.reuse, age_weights=plan.age_weights, group_offset=plan.first_k)
    sideways_reach = {}
    for wait in (0.0, 3.2):
        root = tmp_path / f"wait_{wait}"
        (summary,) = generate_demonstrations(
            root, 1, seed=5, image_size=(32, 32), targets=["Blue"], progress=False, start_wait_s=wait
        )
        assert summary["success"]
        (path,) = list_episodes(root)
        episode = Episode(path)
        assert episode.problems() == []
        ep = open_episodes([path], cfg)[0]
        if wait:
            start = episode.action_start_ns
            assert start == episode.pose_stamps_ns[0] + 32 * 100_000_000
            at_rest = episode.pose[episode.pose_stamps_ns <= start]
            np.testing.assert_array_equal(at_rest, np.broadcast_to(at_rest[0], at_rest.shape))
            assert ep.timeline.first_tick_ns == start
        else:
            assert episode.action_start_ns is None
        ticks = TickDataset([ep], cfg)
        sideways = [
            t for t in range(ep.num_ticks) if np.linalg.norm(ep.sample(t, 0)["target_actions"][0, :2]) > 0.3
        ]
        assert sideways, "the expert starts away from the target"
        sideways_reach[wait] = ticks.max_k()[sideways]
    oldest = cfg.max_k  # k of the oldest age the matched recipe draws (3.1 s)
    assert sideways_reach[0.0].min() < plan.first_k  # the first moves cannot even reach the youngest age
    assert np.all(sideways_reach[3.2] == oldest)  # every sideways move trains at every deployed age
