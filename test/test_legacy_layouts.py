"""convert-legacy on sessions written exactly as the users' original collection code writes them.

Rotations are checked against an independent reading of the Meca500 convention: explicit elementary
rotation matrices, R = Rx(a) @ Ry(b) @ Rz(r) (mobile axes x-y'-z''), not the converter's Euler code.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from contracts.constants import NS_PER_S
from contracts.episode import Episode
from models.pose_math import rotvec_to_matrix
from training.convert_legacy import LegacyOptions, convert_legacy, find_sessions, legacy_summary
from training.legacy_fixture_layouts import (
    START_S,
    meca_pose,
    trim_v4_episode,
    view_colour,
    write_v1_session,
    write_v3_session,
    write_v4_episode,
)

h5py = pytest.importorskip("h5py")

START_NS = int(START_S * NS_PER_S)


def rx(a):
    c, s = np.cos(a), np.sin(a)
    one, zero = np.ones_like(a), np.zeros_like(a)
    return np.stack(
        [np.stack([one, zero, zero], -1), np.stack([zero, c, -s], -1), np.stack([zero, s, c], -1)], -2
    )


def ry(a):
    c, s = np.cos(a), np.sin(a)
    one, zero = np.ones_like(a), np.zeros_like(a)
    return np.stack(
        [np.stack([c, zero, s], -1), np.stack([zero, one, zero], -1), np.stack([-s, zero, c], -1)], -2
    )


def rz(a):
    c, s = np.cos(a), np.sin(a)
    one, zero = np.ones_like(a), np.zeros_like(a)
    return np.stack(
        [np.stack([c, -s, zero], -1), np.stack([s, c, zero], -1), np.stack([zero, zero, one], -1)], -2
    )


def meca500_matrix(pose):
    """The Meca500's reading of alpha, beta, gamma: rotate about x, then the new y', then the new z''."""
    a, b, r = np.deg2rad(pose[:, 3]), np.deg2rad(pose[:, 4]), np.deg2rad(pose[:, 5])
    return rx(a) @ ry(b) @ rz(r)


def angle_between(m1, m2):
    cos = (np.trace(np.swapaxes(m1, -1, -2) @ m2, axis1=-2, axis2=-1) - 1) / 2
    return np.rad2deg(np.arccos(np.clip(cos, -1, 1)))


def check_trajectory(episode: Episode, t_s: np.ndarray, rot_tol_deg: float = 1e-3, pos_tol_mm: float = 1e-3):
    """Poses equal the known Meca500 trajectory at times ``t_s``: mm, and the Meca500 rotation."""
    want = meca_pose(t_s)
    pose = np.asarray(episode.pose)
    np.testing.assert_allclose(pose[:, :3], want[:, :3], atol=pos_tol_mm)
    err = angle_between(rotvec_to_matrix(pose[:, 3:6]), meca500_matrix(want))
    assert err.max() < rot_tol_deg, err.max()


def background(frame):
    """The frame's background colour (the moving bar covers 4 of 32 columns)."""
    return np.median(frame.reshape(-1, 3), axis=0).astype(int)


def convert(root, out, **options):
    report = convert_legacy(root, out, LegacyOptions(**options), progress=False)
    return report, {e.name: e for e in report.episodes}


# --- issue 1: angles ---------------------------------------------------------------------------------


def test_v3_session_reads_the_meca500_angles_by_default(tmp_path):
    written = write_v3_session(tmp_path / "in")
    report, entries = convert(tmp_path / "in", tmp_path / "out")
    (entry,) = entries.values()
    assert entry.status == "converted", entry.skip_reason
    assert entry.repairs == [] and entry.counts["layout"] == "v3"
    episode = Episode(tmp_path / "out" / entry.name)
    stamps = np.asarray(episode.pose_stamps_ns)
    np.testing.assert_array_equal(stamps, np.round((START_S + written.pose_t) * NS_PER_S).astype(np.int64))
    check_trajectory(episode, written.pose_t)  # float32 payload: ~1e-5 mm, ~1e-5 deg
    assert episode.meta["metadata"]["euler_convention"] == "intrinsic-XYZ"
    assert "intrinsic-XYZ" in legacy_summary(report, LegacyOptions(), tmp_path / "in")


def test_the_old_zyz_default_is_off_by_up_to_180_degrees(tmp_path):
    """Issue 1 as reported: a=180, b=2+4t, r=30+10t read as ZYZ is far from the Meca500's rotation."""
    written = write_v3_session(tmp_path / "in")
    _, entries = convert(tmp_path / "in", tmp_path / "out", euler_convention="intrinsic-ZYZ")
    episode = Episode(tmp_path / "out" / next(iter(entries)))
    err = angle_between(
        rotvec_to_matrix(np.asarray(episode.pose)[:, 3:6]), meca500_matrix(meca_pose(written.pose_t))
    )
    assert err.max() > 150.0
    assert episode.meta["metadata"]["euler_convention"] == "intrinsic-ZYZ"


def test_extrinsic_xyz_is_what_scipy_lowercase_xyz_means(tmp_path):
    """The users' v3 loaders: Rotation.from_euler("xyz", [a, b, r]) = Rz(r) @ Ry(b) @ Rx(a)."""
    written = write_v3_session(tmp_path / "in")
    _, entries = convert(tmp_path / "in", tmp_path / "out", euler_convention="extrinsic-xyz")
    episode = Episode(tmp_path / "out" / next(iter(entries)))
    p = meca_pose(written.pose_t)
    want = rz(np.deg2rad(p[:, 5])) @ ry(np.deg2rad(p[:, 4])) @ rx(np.deg2rad(p[:, 3]))
    assert angle_between(rotvec_to_matrix(np.asarray(episode.pose)[:, 3:6]), want).max() < 1e-3
    assert episode.meta["metadata"]["euler_convention"] == "extrinsic-xyz"


@pytest.mark.parametrize("spelling", ["xyz", "XYZ", "ZYZ", "zyx"])
def test_ambiguous_euler_spellings_are_refused_with_the_choices(spelling, capsys):
    from training.cli import main

    with pytest.raises(ValueError, match="intrinsic-XYZ") as error:
        LegacyOptions(euler_convention=spelling)
    assert "extrinsic-xyz" in str(error.value)
    with pytest.raises(SystemExit) as exit_info:
        main(["convert-legacy", "in", "out", "--euler", spelling])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "ambiguous" in err and "intrinsic-XYZ" in err and "extrinsic-xyz" in err


def test_named_conventions_are_canonical():
    assert LegacyOptions(euler_convention="intrinsic-xyz").euler_convention == "intrinsic-XYZ"
    assert LegacyOptions(euler_convention="Extrinsic-XYZ").euler_convention == "extrinsic-xyz"
    with pytest.raises(ValueError, match="unknown"):
        LegacyOptions(euler_convention="intrinsic-XXY")


# --- issue 2: instruction text ---------------------------------------------------------------------------


def test_instruction_is_the_original_training_text(tmp_path):
    write_v3_session(tmp_path / "in", task="Eye_trocar")
    _, entries = convert(tmp_path / "in", tmp_path / "out")
    assert Episode(tmp_path / "out" / next(iter(entries))).instruction == "Perform Eye trocar insertion task"
    _, entries = convert(tmp_path / "in", tmp_path / "verbatim", task_verbatim=True)
    assert (
        Episode(tmp_path / "verbatim" / next(iter(entries))).instruction
        == "Perform Eye_trocar insertion task"
    )


# --- issue 3: v1 ---------------------------------------------------------------------------------------


def test_v1_recv_all_session_converts_with_the_left_zed_images(tmp_path):
    written = write_v1_session(tmp_path / "in")
    report, entries = convert(tmp_path / "in", tmp_path / "out")
    (entry,) = entries.values()
    assert entry.status == "converted", entry.skip_reason
    assert (
        entry.counts["layout"] == "v1"
        and entry.name == "White_silicone_white_circle__recv_all_20251027_170308"
    )
    episode = Episode(tmp_path / "out" / entry.name)
    assert episode.instruction == "Perform White silicone white circle insertion task"
    assert episode.cameras == ["View1", "View2", "View3", "View4", "View5"]
    for v, camera in enumerate(episode.cameras, start=1):
        stamps = np.asarray(episode.frame_stamps_ns(camera))
        np.testing.assert_array_equal(stamps, np.round((START_S + written.frame_t[camera]) * NS_PER_S))
        pixel = background(episode.load_frame(camera, 0))
        assert np.abs(pixel - view_colour(v)).max() < 8, (camera, pixel)  # the left image of the right view
    sensor = np.asarray(episode.sensor)
    assert sensor.shape == (written.sensor_t.shape[0], 1026)
    np.testing.assert_allclose(sensor[:, 0], written.forces, rtol=0, atol=1e-6)
    check_trajectory(episode, written.pose_t)
    assert episode.meta["metadata"]["layout"] == "v1"
    assert "LAYOUT   White_silicone_white_circle__recv_all_20251027_170308: v1" in legacy_summary(
        report, LegacyOptions(), tmp_path / "in"
    )


def test_v1_right_images_on_request(tmp_path):
    write_v1_session(tmp_path / "in")
    _, entries = convert(tmp_path / "in", tmp_path / "out", zed_side="right")
    episode = Episode(tmp_path / "out" / next(iter(entries)))
    pixel = background(episode.load_frame("View2", 0))
    assert np.abs(pixel - (255 - np.array(view_colour(2)))).max() < 8
    assert episode.meta["metadata"]["zed_side"] == "right"


def test_no_session_found_is_said_not_silent(tmp_path, capsys):
    from training.cli import main

    (tmp_path / "in" / "Blue_point" / "something_else").mkdir(parents=True)
    assert main(["convert-legacy", str(tmp_path / "in"), str(tmp_path / "out")]) == 1
    out = capsys.readouterr().out
    assert "0 episodes read" in out and "no sessions found" in out and "recv_all_" in out


# --- issue 4: v4 -----------------------------------------------------------------------------------------


def v4_tree(root):
    """Their disk layout: collected_data/<Task>/<Task>/<date>/<operator>/episode_<ts>.h5."""
    return root / "Eye_trocar" / "Eye_trocar" / "260106" / "2_JYT"


def test_v4_h5_episode_converts_with_rebuilt_stamps(tmp_path):
    written = write_v4_episode(v4_tree(tmp_path / "in"))
    report, entries = convert(tmp_path / "in", tmp_path / "out")
    (entry,) = entries.values()
    assert entry.status == "converted", entry.skip_reason
    assert entry.name == "Eye_trocar__episode_20260106_134625" and entry.counts["layout"] == "v4"
    episode = Episode(tmp_path / "out" / entry.name)
    assert episode.instruction == "Perform Eye trocar insertion task"
    assert episode.cameras == ["camera1", "camera2", "camera3"]
    n = written.pose_t.shape[0]
    sensor = np.asarray(episode.sensor)
    assert sensor.shape == (written.sensor_t.shape[0], 1026)
    np.testing.assert_allclose(sensor[:, 0], written.forces, atol=1e-6)  # float16 as stored
    sensor_stamps = np.asarray(episode.sensor_stamps_ns)
    np.testing.assert_allclose(np.diff(sensor_stamps), NS_PER_S / 650, atol=1)
    # float32 stamps (128 s resolution) rebuilt: relative to the recording start within 3 ms of the truth
    rel = (np.asarray(episode.pose_stamps_ns) - sensor_stamps[0]) / NS_PER_S
    assert rel.shape == (n,)
    np.testing.assert_allclose(rel, written.pose_t, atol=3e-3)
    check_trajectory(episode, rel, pos_tol_mm=1e-3 + 5 * 3e-3, rot_tol_deg=0.05)
    for camera in episode.cameras:
        assert len(episode.frame_stamps_ns(camera)) == n
        c = int(camera[-1])
        assert np.abs(background(episode.load_frame(camera, 0)) - view_colour(c)).max() < 8
    assert any("steps: timestamp stored as float32" in r for r in entry.repairs), entry.repairs
    assert any("sensor: timestamp stored as float32" in r for r in entry.repairs), entry.repairs
    assert episode.meta["metadata"]["repairs"] == entry.repairs
    saved = json.loads((tmp_path / "out" / "conversion_report.json").read_text())
    assert saved["episodes"][0]["counts"]["layout"] == "v4"


def test_v4_a_wrong_sensor_rate_is_flagged(tmp_path):
    """At 700 Hz the 650 Hz recording looks shorter: steps would come faster than the recorder's 15 Hz cap."""
    write_v4_episode(v4_tree(tmp_path / "in"))
    _, entries = convert(tmp_path / "in", tmp_path / "out", sensor_rate_hz=700.0)
    (entry,) = entries.values()
    assert any("faster than the recorder's 15 Hz loop" in r for r in entry.repairs), entry.repairs
    assert Episode(tmp_path / "out" / entry.name).meta["sensor_rate_hz"] == 700.0


def test_v4_black_placeholder_frames_are_dropped(tmp_path):
    write_v4_episode(v4_tree(tmp_path / "in"), black_frame=(2, 7))
    _, entries = convert(tmp_path / "in", tmp_path / "out")
    (entry,) = entries.values()
    assert entry.status == "converted"
    assert any("camera camera2: 1 unreadable frames dropped (black placeholder" in r for r in entry.repairs)
    assert entry.counts["frames_written"]["camera2"] == entry.counts["frames_written"]["camera1"] - 1


def test_v4_raw_rgb_images_decode(tmp_path):
    write_v4_episode(v4_tree(tmp_path / "in"), image_format="raw")
    _, entries = convert(tmp_path / "in", tmp_path / "out")
    (entry,) = entries.values()
    assert entry.status == "converted", entry.skip_reason
    frame = Episode(tmp_path / "out" / entry.name).load_frame("camera3", 4)
    assert np.abs(background(frame) - view_colour(3)).max() < 8  # RGB order kept


def test_v4_first_version_without_sensor_and_trimmed_files_are_skipped_with_reasons(tmp_path):
    folder = v4_tree(tmp_path / "in")
    write_v4_episode(folder, stamp="20251222_230000", sensor=False, stamp_dtype="float64", image_format="raw")
    full = write_v4_episode(folder, stamp="20260106_134625")
    trim_v4_episode(full.path, 2, 25)
    _, entries = convert(tmp_path / "in", tmp_path / "out")
    assert entries["Eye_trocar__episode_20260106_134625"].status == "converted"
    early = entries["Eye_trocar__episode_20251222_230000"]
    assert early.status == "skipped" and "no observations/sensor group" in early.skip_reason
    trimmed = entries["Eye_trocar__episode_20260106_134625_trimmed_2_25"]
    assert trimmed.status == "skipped" and "Trim_dataset.py" in trimmed.skip_reason


def test_v4_sensor_names_in_an_npz_are_read(tmp_path):
    written = write_v3_session(tmp_path / "in", sensor_keys="v4")
    _, entries = convert(tmp_path / "in", tmp_path / "out")
    (entry,) = entries.values()
    assert entry.status == "converted", entry.skip_reason
    sensor = np.asarray(Episode(tmp_path / "out" / entry.name).sensor)
    np.testing.assert_allclose(sensor[:, 0], written.forces, atol=1e-6)


# --- issue 5: robot_rt_*.csv -------------------------------------------------------------------------------


def test_robot_sender_csv_is_a_pose_stream(tmp_path):
    written = write_v3_session(tmp_path / "in", pose_file="robot_rt")
    _, entries = convert(tmp_path / "in", tmp_path / "out")
    (entry,) = entries.values()
    assert entry.status == "converted", entry.skip_reason
    assert entry.counts["pose_format"] == "robot-sender" and entry.counts["pose_file"].startswith("robot_rt_")
    episode = Episode(tmp_path / "out" / entry.name)
    assert episode.pose.shape[0] == written.pose_t.shape[0]
    rel = (np.asarray(episode.pose_stamps_ns) - START_NS) / NS_PER_S
    np.testing.assert_allclose(rel, written.pose_t, atol=1e-6)
    check_trajectory(episode, written.pose_t, pos_tol_mm=1e-9, rot_tol_deg=1e-5)  # full doubles


# --- layouts chosen per session -------------------------------------------------------------------------


def test_layout_is_chosen_per_session_and_can_be_forced(tmp_path, capsys):
    from training.cli import main

    root = tmp_path / "in"
    write_v1_session(root)
    write_v3_session(root)
    write_v4_episode(v4_tree(root))
    assert [p.name for p in find_sessions(root, "v4")] == ["episode_20260106_134625.h5"]
    _, entries = convert(root, tmp_path / "out")
    assert sorted(e.counts["layout"] for e in entries.values()) == ["v1", "v3", "v4"]
    assert all(e.status == "converted" for e in entries.values()), [e.skip_reason for e in entries.values()]
    code = main(
        ["convert-legacy", str(root), str(tmp_path / "cli"), "--layout", "v3", "--euler", "intrinsic-XYZ"]
    )
    out = capsys.readouterr().out
    assert code == 0 and "2 episodes read, 1 converted, 1 skipped" in out
    assert (
        "SKIPPED  White_silicone_white_circle__recv_all_20251027_170308" in out
    )  # v1 read as v3: no View1/*.jpg
    assert "LAYOUT" in out and ": v3 (" in out and "intrinsic-XYZ" in out
