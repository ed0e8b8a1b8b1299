"""Message <-> array conversions: every supported encoding, and a clear ValueError for bad input."""

import io

import numpy as np
import pytest
import torch
from PIL import Image as PilImage
from sensor_msgs.msg import CompressedImage, Image

from insertion_vla_ros.ros_io import image_conversions as img
from insertion_vla_ros.ros_io import msg_conversions as conv
from insertion_vla_ros.ros_io.array_fields import bytes_field
from insertion_vla_ros.ros_io.time_conversions import ns_to_stamp, stamp_to_ns


@pytest.fixture
def rgb():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(6, 5, 3), dtype=np.uint8)


def _raw(pixels: np.ndarray, encoding: str, pad: int = 0) -> Image:
    height, width = pixels.shape[:2]
    rows = pixels.reshape(height, -1)
    padded = np.concatenate([rows, np.full((height, pad), 77, np.uint8)], axis=1)
    msg = Image(height=height, width=width, encoding=encoding, step=padded.shape[1])
    msg.data = bytes_field(padded)
    return msg


@pytest.mark.parametrize("pad", [0, 3])
def test_raw_encodings_decode_to_rgb(rgb, pad):
    assert np.array_equal(img.image_msg_to_rgb(_raw(rgb, "rgb8", pad)), rgb)
    assert np.array_equal(img.image_msg_to_rgb(_raw(rgb[:, :, ::-1].copy(), "bgr8", pad)), rgb)
    rgba = np.concatenate([rgb, np.full(rgb.shape[:2] + (1,), 255, np.uint8)], axis=2)
    assert np.array_equal(img.image_msg_to_rgb(_raw(rgba, "rgba8", pad)), rgb)
    bgra = np.concatenate([rgb[:, :, ::-1], np.zeros(rgb.shape[:2] + (1,), np.uint8)], axis=2)
    assert np.array_equal(img.image_msg_to_rgb(_raw(bgra, "bgra8", pad)), rgb)
    mono = rgb[:, :, 0].copy()
    decoded = img.image_msg_to_rgb(_raw(mono[:, :, None], "mono8", pad))
    assert decoded.shape == rgb.shape and np.array_equal(decoded[:, :, 2], mono)


@pytest.mark.parametrize("encoding", ["rgb8", "bgr8", "mono8"])
def test_rgb_to_image_msg_round_trips(rgb, encoding):
    msg = img.rgb_to_image_msg(rgb, stamp_ns=3_000_000_007, frame_id="cam", encoding=encoding)
    assert stamp_to_ns(msg.header.stamp) == 3_000_000_007 and msg.encoding == encoding
    decoded = img.image_msg_to_rgb(msg)
    if encoding == "mono8":
        assert np.array_equal(decoded[:, :, 0], np.asarray(PilImage.fromarray(rgb).convert("L")))
    else:
        assert np.array_equal(decoded, rgb)


def test_compressed_png_is_lossless_and_jpeg_close(rgb):
    png = img.rgb_to_compressed_msg(rgb, stamp_ns=1, fmt="png")
    assert np.array_equal(img.compressed_msg_to_rgb(png), rgb)
    smooth = np.tile(np.linspace(0, 255, 32, dtype=np.uint8)[None, :, None], (24, 1, 3))
    jpeg = img.rgb_to_compressed_msg(smooth, stamp_ns=1, fmt="jpeg")
    assert np.abs(img.compressed_msg_to_rgb(jpeg).astype(int) - smooth).max() < 12
    # image_transport's format string names the codec after a semicolon
    buffer = io.BytesIO()
    PilImage.fromarray(rgb).save(buffer, format="PNG")
    transport = CompressedImage(format="rgb8; png compressed rgb8")
    transport.data = bytes_field(buffer.getvalue())
    assert np.array_equal(img.any_image_msg_to_rgb(transport), rgb)


def test_image_errors_are_clear(rgb):
    with pytest.raises(ValueError, match="unsupported image encoding 'yuv422'"):
        img.image_msg_to_rgb(_raw(rgb, "yuv422"))
    bad_step = _raw(rgb, "rgb8")
    bad_step.step = 4
    with pytest.raises(ValueError, match="step 4 is smaller"):
        img.image_msg_to_rgb(bad_step)
    truncated = _raw(rgb, "rgb8")
    truncated.data = truncated.data[:-1]
    with pytest.raises(ValueError, match="needs 90"):
        img.image_msg_to_rgb(truncated)
    with pytest.raises(ValueError, match="empty"):
        img.image_msg_to_rgb(Image(encoding="rgb8"))
    with pytest.raises(ValueError, match="unsupported compressed format"):
        img.compressed_msg_to_rgb(CompressedImage(format="tiff"))
    garbage = CompressedImage(format="jpeg")
    garbage.data = bytes_field(b"not a jpeg at all")
    with pytest.raises(ValueError, match="cannot decode"):
        img.compressed_msg_to_rgb(garbage)
    with pytest.raises(ValueError, match="HxWx3 uint8"):
        img.rgb_to_image_msg(rgb.astype(np.float32), stamp_ns=0)


def test_vl_features_all_dtypes_round_trip():
    rng = np.random.default_rng(1)
    common = dict(
        stamp_ns=10,
        sequence=4,
        camera_names=["v1"],
        image_stamps_ns=[9],
        instruction="x",
        model_fingerprint="fp",
        inference_time_s=0.5,
    )
    f32 = rng.standard_normal((7, 9), dtype=np.float32)
    assert np.array_equal(conv.vl_features_from_msg(conv.vl_features_to_msg(f32, **common)), f32)
    f16 = f32.astype(np.float16)
    decoded16 = conv.vl_features_from_msg(conv.vl_features_to_msg(f16, **common))
    assert decoded16.dtype == np.float16 and np.array_equal(decoded16, f16)
    bf16 = torch.from_numpy(f32).to(torch.bfloat16)
    msg = conv.vl_features_to_msg(bf16, **common)
    assert msg.dtype == "bfloat16" and len(msg.data) == 7 * 9 * 2
    assert torch.equal(torch.from_numpy(conv.vl_features_from_msg(msg).copy()), bf16.float())
    assert torch.equal(
        torch.from_numpy(
            conv.vl_features_from_msg(conv.vl_features_to_msg(torch.from_numpy(f32), **common)).copy()
        ),
        torch.from_numpy(f32),
    )


def test_vl_features_mismatches_raise():
    common = dict(
        stamp_ns=10,
        sequence=4,
        camera_names=["v1"],
        image_stamps_ns=[9],
        instruction="x",
        model_fingerprint="fp",
        inference_time_s=0.5,
    )
    msg = conv.vl_features_to_msg(np.zeros((4, 3), np.float32), **common)
    msg.shape = [4, 4]
    with pytest.raises(ValueError, match="needs 64"):
        conv.vl_features_from_msg(msg)
    msg.shape = [4, 3]
    msg.dtype = "float64"
    with pytest.raises(ValueError, match="dtype 'float64'"):
        conv.vl_features_from_msg(msg)
    with pytest.raises(ValueError, match="float32, float16 or bfloat16"):
        conv.vl_features_to_msg(np.zeros((2, 2), np.float64), **common)
    with pytest.raises(ValueError, match="1 camera names but 2 image stamps"):
        conv.vl_features_to_msg(np.zeros((2, 2), np.float32), **{**common, "image_stamps_ns": [1, 2]})


def test_action_chunk_and_sensor_samples_round_trip_and_validate():
    actions = np.arange(56, dtype=np.float32).reshape(8, 7)
    msg = conv.action_chunk_to_msg(
        actions,
        stamp_ns=5,
        sequence=1,
        vl_sequence=2,
        vl_age_s=0.3,
        inference_time_s=0.01,
        step_dt_s=0.1,
        action_names=list("abcdefg"),
        status=0,
    )
    assert msg.horizon == 8 and np.array_equal(conv.action_chunk_from_msg(msg), actions)
    msg.horizon = 7
    with pytest.raises(ValueError, match="horizon 7 x 7 needs 49"):
        conv.action_chunk_from_msg(msg)
    with pytest.raises(ValueError, match="do not match 6 action names"):
        conv.action_chunk_to_msg(
            actions,
            stamp_ns=5,
            sequence=1,
            vl_sequence=2,
            vl_age_s=0.3,
            inference_time_s=0.0,
            step_dt_s=0.1,
            action_names=list("abcdef"),
            status=0,
        )

    samples = np.random.default_rng(2).standard_normal((13, 1026)).astype(np.float32)
    sensor = conv.sensor_samples_to_msg(samples, first_stamp_ns=1_000_000_000, sample_rate_hz=650.0)
    stamps, decoded = conv.sensor_samples_from_msg(sensor)
    assert np.array_equal(decoded, samples)
    assert (
        stamps[0] == 1_000_000_000
        and stamps[1] - stamps[0] == 1538462
        and stamps[-1] == 1_000_000_000 + 18461538
    )
    sensor.num_samples = 14
    with pytest.raises(ValueError, match="14 x 1026"):
        conv.sensor_samples_from_msg(sensor)
    sensor.num_samples, sensor.sample_rate_hz = 13, 0.0
    with pytest.raises(ValueError, match="sample_rate_hz must be positive"):
        conv.sensor_samples_from_msg(sensor)
    with pytest.raises(ValueError, match=r"\[n >= 1, channels\]"):
        conv.sensor_samples_to_msg(np.zeros((0, 3)), first_stamp_ns=0, sample_rate_hz=650.0)


def test_controller_status_and_time():
    msg = conv.controller_status_to_msg(2_500_000_000, "node", missed_ticks=3, vl_feature_age_s=0.25)
    assert msg.missed_ticks == 3 and msg.vl_feature_age_s == 0.25 and np.isnan(msg.vlm_period_s)
    assert stamp_to_ns(msg.header.stamp) == 2_500_000_000
    with pytest.raises(ValueError, match="no field 'bogus'"):
        conv.controller_status_to_msg(0, "node", bogus=1)
    assert stamp_to_ns(ns_to_stamp(123_456_789_012)) == 123_456_789_012
    with pytest.raises(ValueError, match="negative"):
        ns_to_stamp(-1)
