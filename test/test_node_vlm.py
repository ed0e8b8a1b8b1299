"""vlm_node with synthetic cameras: features at the period with the right stamps; a stopped camera."""

from __future__ import annotations

import numpy as np
import pytest
from test_node_support import (  # noqa: F401
    NodeProcess,
    make_test_node,
    node_args,
    set_remote_parameters,
    spin_until,
    tiny_checkpoint,
)

S = 1_000_000_000


@pytest.mark.slow
def test_features_period_stamps_and_stopped_camera(ros_context, tiny_checkpoint, tmp_path):  # noqa: F811
    from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
    from insertion_vla_msgs.msg import ControllerStatus, VLFeatures
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import Image
    from std_msgs.msg import String

    from insertion_vla_ros.nodes.policy_loading import checkpoint_info
    from insertion_vla_ros.ros_io.msg_conversions import vl_features_from_msg
    from insertion_vla_ros.ros_io.qos import LATCHED_QOS
    from insertion_vla_ros.ros_io.time_conversions import stamp_to_ns

    info = checkpoint_info(str(tiny_checkpoint))
    period = 0.6
    rig = NodeProcess(
        "insertion_vla_ros.testing.synthetic_inputs", ["-p", "camera_rate_hz:=10.0"], tmp_path, name="rig"
    )
    vlm = NodeProcess(
        "insertion_vla_ros.nodes.vlm_node",
        node_args(
            tiny_checkpoint,
            "vlm_node",
            autostart=True,
            vlm_period_s=period,
            camera_slop_s=0.05,
            torch_threads=1,
            diagnostics_period_s=0.5,
            vision_attention="batched",  # the fast path through node parameters (same features)
            static_shapes=True,
            cuda_streams=True,  # CUDA-only: falls back on this CPU host, and says so
        ),
        tmp_path,
    )
    node = make_test_node(ros_context, "vlm_observer")
    features, camera_stamps, diagnostics, statuses = [], [], [], []
    node.create_subscription(VLFeatures, "/vla/vl_features", features.append, LATCHED_QOS)
    node.create_subscription(
        Image,
        "/cameras/view2/image_raw",
        lambda m: camera_stamps.append(stamp_to_ns(m.header.stamp)),
        qos_profile_sensor_data,
    )
    node.create_subscription(DiagnosticArray, "/diagnostics", diagnostics.append, 10)
    node.create_subscription(ControllerStatus, "/vlm_node/status", statuses.append, 10)
    instruction_pub = node.create_publisher(String, "/vla/instruction", 10)
    procs = [rig, vlm]
    try:
        assert spin_until(node, lambda: len(features) >= 1, 600.0, procs), vlm.output()[-3000:]
        first = len(features)
        assert spin_until(node, lambda: len(features) >= first + 4, 30.0, procs)
        instruction_pub.publish(String(data="Retract the needle."))
        assert spin_until(node, lambda: features[-1].instruction == "Retract the needle.", 10.0, procs)

        sequences = [f.sequence for f in features]
        assert sequences == list(range(sequences[0], sequences[0] + len(sequences)))
        for msg in features:
            stamps = [stamp_to_ns(t) for t in msg.image_stamps]
            assert list(msg.camera_names) == ["view1", "view2", "view3", "view4", "view5"]
            assert stamp_to_ns(msg.header.stamp) == max(stamps)  # t0 = newest image used
            assert max(stamps) - min(stamps) <= 0.05 * S  # within the slop
            assert stamps[1] in camera_stamps  # a real frame of view2, not a made-up stamp
            assert msg.model_fingerprint == info["fingerprint"]
            values = vl_features_from_msg(msg)
            assert (
                values.shape == (int(msg.shape[0]), int(info["vl_hidden_size"])) and np.isfinite(values).all()
            )
            assert msg.inference_time_s > 0.0
        # one inference per period: consecutive feature times are at least about one period apart
        t0 = np.array([stamp_to_ns(f.header.stamp) for f in features[first:]]) / S
        assert (np.diff(t0) > period - 0.15).all(), np.diff(t0)
        running = [s for s in statuses if s.state == ControllerStatus.STATE_RUNNING]
        assert running and running[-1].vlm_latency_s > 0 and running[-1].camera_skew_s <= 0.05
        fast = [
            {v.key: v.value for v in status.values} | {"level": status.level, "message": status.message}
            for array in diagnostics[-3:]
            for status in array.status
            if status.name == "vlm_node: vl features"
        ]
        assert fast and "vision_attention=batched" in fast[-1]["fast path"]
        assert "cuda_streams needs a CUDA device" in fast[-1]["fast path fallbacks"]
        assert fast[-1]["level"] != DiagnosticStatus.OK and "fast path fell back" in fast[-1]["message"]
        assert "fast path: cuda_streams needs a CUDA device" in vlm.output()

        # one camera stops -> no features, and diagnostics name the camera
        set_remote_parameters(node, "synthetic_inputs", stopped_cameras="view3")

        def camera_error():
            for array in diagnostics[-3:]:
                for status in array.status:
                    if status.name == "vlm_node: camera sync" and status.level == DiagnosticStatus.ERROR:
                        return "view3" in status.message
            return False

        assert spin_until(node, camera_error, 20.0, procs)
        count = len(features)
        spin_until(node, lambda: False, 3 * period, procs)
        assert len(features) == count, "features were published without camera view3"
        assert any(
            s.state == ControllerStatus.STATE_HOLD and "view3" in s.state_reason for s in statuses[-5:]
        )

        # the camera comes back -> features again
        set_remote_parameters(node, "synthetic_inputs", stopped_cameras="")
        assert spin_until(node, lambda: len(features) > count, 20.0, procs)
    finally:
        node.destroy_node()
        codes = {proc.name: proc.stop() for proc in procs}
    assert codes == {"rig": 0, "vlm_node": 0}, vlm.output()[-3000:]
    assert "Traceback" not in vlm.output()
