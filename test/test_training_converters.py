"""rosbag2 (real bags written with rosbags) and legacy-layout converters, including every bad-data case."""

from __future__ import annotations

import numpy as np
import pytest

from contracts.constants import NS_PER_S
from contracts.episode import Episode
from training.bag_fixture import make_bag
from training.convert_bag import BagOptions, convert_bags
from training.convert_legacy import LegacyOptions, convert_legacy
from training.fixtures import synthetic_frame, synthetic_pose
from training.legacy_fixture import DEFECTS, make_legacy_session

START = 1_700_000_000_000_000_000


def _check_motion(episode: Episode, start_ns: int) -> None:
    t = (np.asarray(episode.pose_stamps_ns) - start_ns) / NS_PER_S
    np.testing.assert_allclose(episode.pose, synthetic_pose(t, 5.0), atol=1e-6)
    assert episode.problems() == []


@pytest.fixture(scope="module")
def bag_report(tmp_path_factory):
    root = tmp_path_factory.mktemp("bags")
    make_bag(root / "in" / "clean_mcap", "mcap", duration_s=1.5)
    make_bag(root / "in" / "clean_sqlite", "sqlite3", compressed=True, duration_s=1.5)
    for defect in DEFECTS:
        make_bag(root / "in" / defect, "mcap", defect=defect, duration_s=1.5, channels=4)
    make_bag(
        root / "in" / "unreadable_compressed",
        "sqlite3",
        compressed=True,
        defect="unreadable_frame",
        duration_s=1.5,
        channels=4,
    )
    make_bag(root / "in" / "no_instruction", "mcap", instruction=None, duration_s=1.5, channels=4)
    report = convert_bags(root / "in", root / "out", BagOptions(), progress=False)
    return root, {e.name: e for e in report.episodes}, report


def test_bag_clean_sqlite3_and_mcap(bag_report):
    root, entries, _ = bag_report
    for name in ("clean_mcap", "clean_sqlite"):
        assert entries[name].status == "converted" and entries[name].repairs == []
        episode = Episode(root / "out" / name)
        _check_motion(episode, START)
        assert episode.instruction == "Perform Red_point insertion task"
        assert episode.cameras == ["view1", "view2", "view3", "view4", "view5"]
        assert episode.sensor.shape == (975, 1026)
        np.testing.assert_allclose(episode.sensor[:, 0], 0.5)
        stamps = np.asarray(episode.sensor_stamps_ns)
        assert np.all(np.diff(stamps) > 0) and stamps[0] == START
        np.testing.assert_allclose(np.diff(stamps), NS_PER_S / 650, atol=1)
        # view2 was recorded as bgr8 (raw bag): colours must come back as RGB.
        frame = episode.load_frame("view2", 0).astype(int)
        want = synthetic_frame(5.0, 0, 32).astype(int)
        assert np.abs(frame[:, 20:] - want[:, 20:]).mean() < 4


def test_bag_bad_data_reported(bag_report):
    root, entries, report = bag_report
    assert entries["missing_camera"].status == "skipped" and "view3" in entries["missing_camera"].skip_reason
    assert entries["too_short"].status == "skipped" and "too short" in entries["too_short"].skip_reason
    assert (
        entries["no_instruction"].status == "skipped"
        and "instruction" in entries["no_instruction"].skip_reason
    )
    for name in ("unreadable_frame", "unreadable_compressed"):
        assert entries[name].status == "converted"
        assert any("view2: 1 unreadable frames dropped" in r for r in entries[name].repairs), entries[
            name
        ].repairs
        assert len(Episode(root / "out" / name).frame_stamps_ns("view2")) == 14
    nan = entries["nan_sensor"]
    assert nan.status == "converted" and any("1 non-finite rows dropped" in r for r in nan.repairs)
    assert np.isfinite(Episode(root / "out" / "nan_sensor").sensor).all()
    mono = entries["non_monotonic"]
    assert mono.status == "converted" and any("not strictly increasing" in r for r in mono.repairs)
    assert np.all(np.diff(np.asarray(Episode(root / "out" / "non_monotonic").sensor_stamps_ns)) > 0)
    summary = report.summary()
    assert "SKIPPED  missing_camera" in summary and "REPAIRED nan_sensor" in summary
    assert (root / "out" / "conversion_report.json").is_file()
    assert not (root / "out" / "missing_camera").exists()


def test_bag_instruction_override_and_auto_cameras(tmp_path):
    make_bag(tmp_path / "bag", "mcap", instruction=None, duration_s=1.2, channels=4, cameras=("b", "a"))
    options = BagOptions(cameras=None, instruction="Perform Blue insertion task")
    report = convert_bags(tmp_path / "bag", tmp_path / "out", options, progress=False)
    assert report.converted and Episode(tmp_path / "out" / "bag").cameras == ["a", "b"]
    assert Episode(tmp_path / "out" / "bag").instruction == "Perform Blue insertion task"


@pytest.fixture(scope="module")
def legacy_report(tmp_path_factory):
    root = tmp_path_factory.mktemp("legacy")
    make_legacy_session(root / "in", stamp="clean", aline_channels=1025)
    for defect in DEFECTS:
        make_legacy_session(root / "in", task="Blue_point", stamp=defect, defect=defect, aline_channels=8)
    report = convert_legacy(root / "in", root / "out", LegacyOptions(), progress=False)
    return root, {e.name.split("data_collection_")[1]: e for e in report.episodes}, report


def test_legacy_clean(legacy_report):
    root, entries, _ = legacy_report
    assert entries["clean"].status == "converted" and entries["clean"].repairs == []
    episode = Episode(root / "out" / "Red_point__data_collection_clean")
    _check_motion(episode, int(1_700_000_000 * NS_PER_S))
    assert episode.instruction == "Perform Red point insertion task"
    assert episode.sensor.shape[1] == 1026 and episode.cameras == [
        "View1",
        "View2",
        "View3",
        "View4",
        "View5",
    ]
    assert episode.meta["metadata"]["euler_convention"] == "intrinsic-XYZ"  # the Meca500's, by default
    assert episode.meta["metadata"]["layout"] == "v3"


def test_legacy_bad_data_reported(legacy_report):
    root, entries, report = legacy_report
    assert entries["missing_camera"].status == "skipped" and "View3" in entries["missing_camera"].skip_reason
    assert entries["too_short"].status == "skipped" and "too short" in entries["too_short"].skip_reason
    assert any("View2: 1 unreadable frames dropped" in r for r in entries["unreadable_frame"].repairs)
    assert any("3 non-finite rows dropped" in r for r in entries["nan_sensor"].repairs)
    assert any("1 duplicate stamps dropped" in r for r in entries["non_monotonic"].repairs)
    for name in ("unreadable_frame", "nan_sensor", "non_monotonic"):
        assert entries[name].status == "converted"
        episode = Episode(root / "out" / f"Blue_point__data_collection_{name}")
        assert episode.problems() == [] and episode.instruction == "Perform Blue point insertion task"
        assert episode.meta["metadata"]["repairs"] == entries[name].repairs
    assert "3 skipped" not in report.summary() and "2 skipped" in report.summary()


def test_legacy_euler_convention_is_an_option(legacy_report, tmp_path):
    root, _, _ = legacy_report
    session = root / "in" / "Red_point" / "data_collection_clean"
    convert_legacy(session, tmp_path, LegacyOptions(euler_convention="intrinsic-ZYZ"), progress=False)
    episode = Episode(tmp_path / "Red_point__data_collection_clean")
    assert episode.meta["metadata"]["euler_convention"] == "intrinsic-ZYZ"
    assert not np.allclose(episode.pose[:, 3:6], Episode(root / "out" / episode.name).pose[:, 3:6])


def test_legacy_too_many_nan_rows_skips(tmp_path):
    from training.episode_builder import CleaningPolicy

    make_legacy_session(tmp_path / "in", stamp="nan", defect="nan_sensor", aline_channels=4)
    report = convert_legacy(
        tmp_path / "in", tmp_path / "out", policy=CleaningPolicy(max_nan_fraction=0.001), progress=False
    )
    assert report.skipped and "non-finite" in report.skipped[0].skip_reason


def test_cli_converters(tmp_path, capsys):
    from training.cli import main

    make_bag(tmp_path / "bags" / "b1", "sqlite3", duration_s=1.2, channels=4, instruction=None)
    code = main(
        ["convert-bag", str(tmp_path / "bags"), str(tmp_path / "eps"), "--instruction", "Perform X task"]
    )
    assert code == 0 and "1 converted" in capsys.readouterr().out
    assert Episode(tmp_path / "eps" / "b1").instruction == "Perform X task"
    make_legacy_session(tmp_path / "legacy", stamp="s1", aline_channels=4, duration_s=1.5)
    code = main(
        ["convert-legacy", str(tmp_path / "legacy"), str(tmp_path / "eps"), "--min-duration-s", "2.0"]
    )
    out = capsys.readouterr().out
    assert code == 1 and "too short" in out and "SKIPPED" in out
    code = main(
        ["convert-legacy", str(tmp_path / "legacy"), str(tmp_path / "eps"), "--euler", "intrinsic-ZYX"]
    )
    assert (
        code == 0
        and Episode(tmp_path / "eps" / "Red_point__data_collection_s1").meta["metadata"]["euler_convention"]
        == "intrinsic-ZYX"
    )
    assert "intrinsic-ZYX" in capsys.readouterr().out


@pytest.mark.parametrize("storage", ["sqlite3", "mcap"])
def test_bag_every_raw_encoding_decodes_to_the_frame_that_was_recorded(tmp_path, storage):
    from training.bag_fixture import decoded_reference

    encodings = ("rgb8", "bgr8", "rgba8", "bgra8", "mono8")
    make_bag(tmp_path / "in" / "enc", storage, duration_s=1.2, channels=4, encodings=encodings)
    report = convert_bags(tmp_path / "in", tmp_path / "out", BagOptions(), progress=False)
    (entry,) = report.episodes
    assert entry.status == "converted", entry.skip_reason
    episode = Episode(tmp_path / "out" / "enc")
    for c, camera in enumerate(episode.cameras):
        frame = episode.load_frame(camera, 3)
        expected = decoded_reference(synthetic_frame(5.0, 3, 32), encodings[c])
        # JPEG in the episode: close, not bit-exact; a swapped channel order would be off by ~100
        assert np.abs(frame.astype(int) - expected.astype(int)).mean() < 6, (camera, encodings[c])
    assert entry.counts["frames_written"] == entry.counts["frames_read"]
