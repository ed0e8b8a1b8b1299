"""ROS-light building blocks of the nodes: parameter specs, frequency diagnostics, standard outputs."""

from __future__ import annotations

import numpy as np
import pytest

from insertion_vla_ros.ros_io.diagnostics import FrequencyMonitor, Level, TaskStatus, diagnostic_array
from insertion_vla_ros.ros_io.parameters import ParameterError, ParamSpec, declare_parameters, descriptor_for
from insertion_vla_ros.ros_io.standard_outputs import chunk_poses, step_twist, trajectory_msg, twist_msg

S = 1_000_000_000


def test_param_spec_checks_name_the_parameter():
    spec = ParamSpec("limits", [1.0, 2.0], "d", minimum=0.0, length=2)
    spec.check([0.5, 3.0])
    with pytest.raises(ParameterError, match="parameter 'limits': needs 2 values"):
        spec.check([1.0])
    with pytest.raises(ParameterError, match="'limits': -1.0 is below the minimum"):
        spec.check([-1.0, 1.0])
    with pytest.raises(ParameterError, match="'mode': 'x' is not one of a, b"):
        ParamSpec("mode", "a", "d", choices=("a", "b")).check("x")
    with pytest.raises(ParameterError, match="NaN"):
        ParamSpec("p", 1.0, "d").check(float("nan"))


def test_descriptor_carries_range_and_read_only():
    descriptor = descriptor_for(
        ParamSpec("period", 0.1, "tick period", read_only=True, minimum=0.001, maximum=10.0)
    )
    assert descriptor.read_only and descriptor.description == "tick period"
    assert descriptor.floating_point_range[0].from_value == 0.001
    assert "read-only" in descriptor.additional_constraints
    assert descriptor_for(ParamSpec("n", 5, "d", minimum=1)).integer_range[0].from_value == 1


def test_declare_rejects_out_of_range_override(ros_context):
    import rclpy
    from rclpy.parameter import Parameter

    node = rclpy.create_node(
        "param_probe", context=ros_context, parameter_overrides=[Parameter("period", value=-1.0)]
    )
    try:
        with pytest.raises(ParameterError, match="parameter 'period'"):
            declare_parameters(node, [ParamSpec("period", 0.1, "d", minimum=0.001)])
        values = declare_parameters(node, [ParamSpec("other", 2, "d", minimum=1, maximum=3)])
        assert values == {"other": 2}
        result = node.set_parameters([Parameter("other", value=7)])[0]
        assert not result.successful  # the ROS range is enforced at run time too
    finally:
        node.destroy_node()


def test_frequency_monitor_like_diagnostic_updater():
    monitor = FrequencyMonitor(10.0, tolerance=0.1, window_s=5.0)
    assert monitor.report("n: loop", 0).level == Level.ERROR
    for k in range(51):
        monitor.tick(k * S // 10)
    status = monitor.report("n: loop", 5 * S)
    assert status.level == Level.OK and status.message == "Desired frequency met"
    assert status.values["Actual frequency (Hz)"] == pytest.approx(10.0)
    assert status.values["Events since startup"] == 51
    slow = FrequencyMonitor(10.0)
    for k in range(10):
        slow.tick(k * S // 5)
    assert slow.report("n: loop", 2 * S).message == "Frequency too low."


def test_diagnostic_array_fields():
    task = TaskStatus("vlm_node: camera sync")
    task.merge(Level.WARN, "skew")
    task.merge(Level.ERROR, "view3 missing")
    task.values["skew (s)"] = 0.123456789
    array = diagnostic_array(5 * S, "rig-1", [task])
    status = array.status[0]
    assert status.level == bytes([2]) and status.message == "view3 missing"
    assert status.hardware_id == "rig-1" and status.name == "vlm_node: camera sync"
    assert status.values[0].key == "skew (s)" and status.values[0].value == "0.123457"
    assert array.header.stamp.sec == 5


def test_standard_outputs_units_and_composition():
    step = np.array([1.0, -2.0, 0.5, 0.0, 0.0, 0.01, 1.0])
    linear, angular = step_twist(step, 0.1)
    np.testing.assert_allclose(linear, [0.01, -0.02, 0.005])  # mm per 100 ms -> m/s
    np.testing.assert_allclose(angular, [0.0, 0.0, 0.1])
    msg = twist_msg(step, step_dt_s=0.1, stamp_ns=2 * S, frame_id="base")
    assert msg.twist.linear.y == pytest.approx(-0.02) and msg.header.frame_id == "base"
    chunk = np.tile(step, (8, 1))
    poses = chunk_poses(chunk)
    np.testing.assert_allclose(poses[-1, :3], 8 * step[:3])
    np.testing.assert_allclose(poses[-1, 3:6], [0, 0, 0.08], atol=1e-12)  # rotations about one axis add up
    trajectory = trajectory_msg(chunk, step_dt_s=0.1, stamp_ns=S, frame_id="base", joint_name="tip")
    assert len(trajectory.points) == 8 and trajectory.joint_names == ["tip"]
    last = trajectory.points[-1]
    assert last.transforms[0].translation.x == pytest.approx(0.008)
    assert last.time_from_start.sec == 0 and last.time_from_start.nanosec == 800_000_000
    held = trajectory_msg(np.zeros((8, 7)), step_dt_s=0.1, stamp_ns=S, frame_id="base", joint_name="tip")
    assert all(
        p.transforms[0].translation.x == 0.0 and p.transforms[0].rotation.w == 1.0 for p in held.points
    )
