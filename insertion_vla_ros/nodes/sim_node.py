"""sim_node: the simulated rig on the ROS graph (cameras, 650 Hz sensor, pose, instruction, /clock).

It advances the rig in 10 ms control ticks in its own thread and publishes, per the layout of
:mod:`contracts.topics`: five ``sensor_msgs/Image`` (rgb8) at ``camera_rate_hz``, batched
``SensorSamples`` (13 samples per message at 650 Hz = 50 Hz), ``PoseStamped`` (metres + quaternion) at
``pose_rate_hz``, the instruction (latched ``std_msgs/String``), and with ``publish_clock`` the sim time
on ``/clock`` (run the other nodes with ``use_sim_time``; ``rate`` scales it against wall time). It
follows ``ActionChunk``s receding-horizon with
:class:`insertion_vla_ros.runtime.chunk_executor.ChunkExecutor` (HOLD/WAITING/stale -> hold still) and
runs ``num_episodes`` seeded episodes, each reset to a new scene and target, reporting every result on
``result_topic`` (latched JSON ``String``), in the log and in ``results_file`` (JSON).

Before the first episode it idles (robot still, clock running) until an action expert publishes chunks and
a VLFeatures publisher exists, so slow model loading never eats into an episode. ``lockstep_timeout_s``
> 0 makes the sim wait (wall time) for each due chunk before advancing past its tick: closed-loop results
then do not depend on how loaded the machine is; the VLM still runs asynchronously.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from insertion_vla_ros.ros_io.ros_imports import MissingInterfacesError, import_interfaces

try:
    interfaces = import_interfaces()
    _INTERFACES_ERROR: MissingInterfacesError | None = None
except MissingInterfacesError as _error:
    interfaces = None
    _INTERFACES_ERROR = _error

import rclpy  # noqa: E402
from geometry_msgs.msg import PoseStamped  # noqa: E402
from rclpy.node import Node  # noqa: E402
from rosgraph_msgs.msg import Clock  # noqa: E402
from std_msgs.msg import String  # noqa: E402

from contracts import topics  # noqa: E402
from contracts.constants import ACTION_PERIOD_S, CAMERA_NAMES, NS_PER_S  # noqa: E402
from insertion_vla_ros.ros_io.image_conversions import rgb_to_image_msg  # noqa: E402
from insertion_vla_ros.ros_io.msg_conversions import action_chunk_from_msg, sensor_samples_to_msg  # noqa: E402
from insertion_vla_ros.ros_io.parameters import ParamSpec, declare_parameters  # noqa: E402
from insertion_vla_ros.ros_io.qos import LATCHED_QOS, LATCHED_RESULTS_QOS, RELIABLE_QOS, STREAM_QOS  # noqa: E402
from insertion_vla_ros.ros_io.time_conversions import ns_to_stamp, stamp_to_ns  # noqa: E402
from insertion_vla_ros.runtime.chunk_executor import (  # noqa: E402
    DEFAULT_MAX_EPISODE_S,
    Chunk,
    ChunkExecutor,
    EndRule,
    control_piece,
    hold_action,
)
from sim.bag import pose_to_ros  # noqa: E402
from sim.config import TARGET_COLOURS, RigConfig  # noqa: E402
from sim.demos import episode_seed  # noqa: E402
from sim.rig import InsertionRig  # noqa: E402

NODE_NAME = "sim_node"
CLOCK_START_NS = NS_PER_S

PARAMETERS: list[ParamSpec] = [
    ParamSpec(
        "seed",
        0,
        "Seed of the episode sequence (episode i uses sim.demos.episode_seed(seed, i)).",
        read_only=True,
        minimum=0,
        maximum=2**31 - 1,
    ),
    ParamSpec("num_episodes", 3, "Episodes to run (0: forever).", read_only=True, minimum=0, maximum=100000),
    ParamSpec("targets", [""], "Target colours to cycle through ([''] : drawn per episode).", read_only=True),
    ParamSpec("image_width", 112, "Camera image width, px.", read_only=True, minimum=16, maximum=4096),
    ParamSpec("image_height", 112, "Camera image height, px.", read_only=True, minimum=16, maximum=4096),
    ParamSpec(
        "camera_rate_hz",
        10.0,
        "Camera frame rate (must divide 100 Hz).",
        read_only=True,
        minimum=1.0,
        maximum=100.0,
    ),
    ParamSpec(
        "sensor_samples_per_message",
        13,
        "Sensor samples per SensorSamples message.",
        read_only=True,
        minimum=1,
        maximum=650,
    ),
    ParamSpec(
        "pose_rate_hz",
        100.0,
        "PoseStamped rate (must divide 100 Hz).",
        read_only=True,
        minimum=1.0,
        maximum=100.0,
    ),
    ParamSpec(
        "publish_clock",
        True,
        "Publish the sim time on /clock (run the other nodes with use_sim_time).",
        read_only=True,
    ),
    ParamSpec(
        "rate",
        1.0,
        "Sim time per wall time with publish_clock (0: as fast as possible).",
        read_only=True,
        minimum=0.0,
        maximum=100.0,
    ),
    ParamSpec(
        "lockstep_timeout_s",
        0.0,
        "Wait up to this wall time for each due chunk (0: never wait).",
        read_only=True,
        minimum=0.0,
        maximum=60.0,
    ),
    ParamSpec(
        "wait_for_controller_s",
        120.0,
        "Wall seconds to wait for the controller before episode 1.",
        read_only=True,
        minimum=0.0,
        maximum=3600.0,
    ),
    ParamSpec(
        "max_chunk_age_s",
        0.3,
        "A chunk older than this is stale: hold still.",
        read_only=True,
        minimum=0.01,
        maximum=10.0,
    ),
    ParamSpec(
        "max_episode_s",
        DEFAULT_MAX_EPISODE_S,
        "Episode time limit (sim s).",
        read_only=True,
        minimum=0.5,
        maximum=3600.0,
    ),
    ParamSpec(
        "settle_window_s",
        1.0,
        "An inserted needle still for this long ends the episode, s.",
        read_only=True,
        minimum=0.1,
        maximum=60.0,
    ),
    ParamSpec("chunk_topic", topics.CHUNK_TOPIC, "ActionChunk input topic.", read_only=True),
    ParamSpec(
        "results_file", "", "Write every episode result here as a JSON list ('' : do not).", read_only=True
    ),
    ParamSpec("exit_when_done", False, "Shut the node down after the last episode.", read_only=True),
    ParamSpec(
        "status_period_s", 0.5, "Wall period of /sim/status.", read_only=True, minimum=0.05, maximum=60.0
    ),
]


class SimNode(Node):
    """The rig, its publishers and the chunk follower (see the module docstring)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(NODE_NAME, **kwargs)
        self.params = p = declare_parameters(self, PARAMETERS)
        targets = [t for t in p["targets"] if t]
        unknown = [t for t in targets if t not in TARGET_COLOURS]
        if unknown:
            raise ValueError(f"parameter 'targets': unknown {unknown}; use {list(TARGET_COLOURS)}")
        self.targets = targets
        self.config = RigConfig().with_image_size(p["image_width"], p["image_height"])
        control = self.config.robot.control_rate_hz
        self.tick_ns = NS_PER_S // control
        self.camera_every = _ticks_per(control, p["camera_rate_hz"], "camera_rate_hz")
        self.pose_every = _ticks_per(control, p["pose_rate_hz"], "pose_rate_hz")
        self.sensor_rate_hz = float(self.config.sensor.rate_hz)
        self.rig = InsertionRig(self.config, seed=int(p["seed"]))
        self.executor_ = ChunkExecutor(max_chunk_age_s=p["max_chunk_age_s"])
        self.end_rule = EndRule(max_episode_s=p["max_episode_s"], settle_window_s=p["settle_window_s"])
        self.results: list[dict[str, Any]] = []
        self.episode = -1  # -1 = warming up (waiting for the controller)
        self.state = "warmup"
        self.done = threading.Event()
        self._stop = threading.Event()
        self._chunk_event = threading.Condition()
        self._last_chunk_stamp_ns: int | None = None
        self._chunk_period_ns = 0
        self.chunks_received = 0
        self.wall_started = time.monotonic()
        self.real_time_factor = float("nan")
        self._sensor_pending: list[tuple[np.ndarray, np.ndarray]] = []
        self._sensor_pending_count = 0
        self._status: dict[str, Any] = {}

        self.camera_pubs = {
            name: self.create_publisher(interfaces_image(), topics.camera_topic(name), STREAM_QOS)
            for name in CAMERA_NAMES
        }
        self.sensor_pub = self.create_publisher(interfaces.SensorSamples, topics.SENSOR_TOPIC, STREAM_QOS)
        self.pose_pub = self.create_publisher(PoseStamped, topics.POSE_TOPIC, RELIABLE_QOS)
        self.instruction_pub = self.create_publisher(String, topics.INSTRUCTION_TOPIC, LATCHED_QOS)
        self.clock_pub = self.create_publisher(Clock, topics.CLOCK_TOPIC, 10) if p["publish_clock"] else None
        self.status_pub = self.create_publisher(String, topics.SIM_STATUS_TOPIC, 10)
        self.result_pub = self.create_publisher(String, topics.SIM_RESULT_TOPIC, LATCHED_RESULTS_QOS)
        self.create_subscription(interfaces.ActionChunk, p["chunk_topic"], self._on_chunk, RELIABLE_QOS)
        self.create_timer(p["status_period_s"], self._publish_status)
        self._reset_rig(CLOCK_START_NS if p["publish_clock"] else time.time_ns(), episode=-1)
        self._thread = threading.Thread(target=self._run, name="sim_loop", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------------------------------- inputs
    def _on_chunk(self, msg: Any) -> None:
        try:
            actions = action_chunk_from_msg(msg)
        except ValueError as error:
            self.get_logger().error(f"bad ActionChunk: {error}", throttle_duration_sec=5.0)
            return
        chunk = Chunk(
            stamp_to_ns(msg.header.stamp),
            actions,
            int(msg.status),
            float(msg.step_dt_s),
            float(msg.vl_age_s),
            int(msg.sequence),
        )
        self.executor_.offer(chunk)
        with self._chunk_event:
            self._chunk_period_ns = int(round(chunk.step_dt_s * NS_PER_S))  # the controller's tick period
            self._last_chunk_stamp_ns = max(chunk.stamp_ns, self._last_chunk_stamp_ns or 0)
            self.chunks_received += 1
            self._chunk_event.notify_all()

    # ------------------------------------------------------------------------------------------- episodes
    def _reset_rig(self, start_ns: int, episode: int) -> None:
        index = max(episode, 0)
        target = self.targets[index % len(self.targets)] if self.targets else None
        seed = episode_seed(int(self.params["seed"]), index)
        self._flush_sensor()  # a message never spans two episodes (its stamps are first + i / rate)
        self.rig.reset(target=target, seed=seed, render=False, start_ns=start_ns)
        self._trace = {k: [] for k in ("t_s", "tip_mm", "force_n", "chunk_status", "vl_age_s", "robot")}
        self._last_force_n = 0.0
        self.executor_.reset(start_ns)
        self.end_rule.reset()
        self.episode_started_wall = time.monotonic()
        self.instruction_pub.publish(String(data=self.rig.instruction))
        self._publish_streams(force_camera=True)

    def _controller_ready(self) -> bool:
        return self.chunks_received > 0 and self.count_publishers(topics.FEATURES_TOPIC) > 0

    def _finish_episode(self, reason: str) -> None:
        result = self.rig.evaluate()
        stats = self.executor_.stats
        result.update(
            episode=self.episode,
            end_reason=reason,
            instruction=self.rig.instruction,
            moving_ticks=stats.moving_ticks,
            hold_ticks=stats.hold_ticks,
            hold_reasons=dict(stats.hold_reasons),
            chunks_received=stats.received,
            wall_s=time.monotonic() - self.episode_started_wall,
            targets_xy_mm={name: [float(v) for v in xy] for name, xy in self.rig.scene.targets_xy_mm.items()},
            trace=self._trace,
        )
        self.results.append(result)
        self.get_logger().info(
            f"episode {self.episode} {'SUCCESS' if result['success'] else 'FAILURE'} ({reason}): "
            f"target {result['target']}, depth error {result['depth_error_mm']:+.2f} mm, lateral error "
            f"{result['lateral_error_mm']:.2f} mm, max force {result['max_force_n']:.2f} N, "
            f"{result['time_s']:.1f} s"
        )
        self.result_pub.publish(String(data=json.dumps(result)))
        path = self.params["results_file"]
        if path:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            Path(path).write_text(json.dumps(self.results, indent=1))

    # ------------------------------------------------------------------------------------------- loop
    def _run(self) -> None:
        try:
            self._loop()
        except Exception as error:  # noqa: BLE001 - report and stop instead of a silent dead thread
            if self._stop.is_set() or not self.context.ok():
                return  # shutting down (SIGINT/SIGTERM invalidated the context under the loop)
            self.get_logger().error(f"sim loop failed: {error!r}")
            self.state = "failed"
            self.done.set()

    def _loop(self) -> None:
        p = self.params
        paced = not p["publish_clock"] or p["rate"] > 0
        rate = float(p["rate"]) if p["publish_clock"] else 1.0
        wall0, sim0 = time.monotonic(), self.rig.stamp_ns
        warmup_deadline = time.monotonic() + float(p["wait_for_controller_s"])
        lockstep = float(p["lockstep_timeout_s"]) if p["publish_clock"] else 0.0
        num = int(p["num_episodes"])
        while not self._stop.is_set():
            if self.episode < 0 and (self._controller_ready() or time.monotonic() > warmup_deadline):
                if not self._controller_ready():
                    self.get_logger().warning("no controller seen; starting the episodes anyway")
                self.episode, self.state = 0, "running"
                self._reset_rig(self.rig.stamp_ns + self.tick_ns, 0)
                wall0, sim0 = time.monotonic(), self.rig.stamp_ns
            if lockstep and self.state == "running":
                self._wait_for_due_chunk(lockstep)
            self._control_tick()
            if self.state == "running":
                reason = self.end_rule.update(
                    self.rig.time_s,
                    self.rig.pose()[0:3],
                    self.rig.tip_depth_mm(),
                    self.rig.sensor.max_force_n,
                    self.config.task.force_limit_n,
                )
                if reason:
                    self._finish_episode(reason)
                    if num and self.episode + 1 >= num:
                        self.state = "done"
                        self.done.set()
                        if p["exit_when_done"]:
                            return
                    else:
                        self.episode += 1
                        self._reset_rig(self.rig.stamp_ns + self.tick_ns, self.episode)
                        wall0, sim0 = time.monotonic(), self.rig.stamp_ns
            if paced:
                target = wall0 + (self.rig.stamp_ns - sim0) / NS_PER_S / rate
                delay = target - time.monotonic()
                if delay > 0:
                    self._stop.wait(delay)
                elif delay < -0.2:  # fell behind: slow the sim down instead of bursting
                    wall0, sim0 = time.monotonic(), self.rig.stamp_ns
            elapsed = time.monotonic() - self.episode_started_wall
            if elapsed > 0.5:
                self.real_time_factor = self.rig.time_s / elapsed
            if round(self.rig.time_s * 100) % 10 == 0:
                self._status = self.status()  # snapshot in this thread; the timer only publishes it

    def _wait_for_due_chunk(self, timeout_s: float) -> None:
        now = self.rig.stamp_ns
        deadline = time.monotonic() + timeout_s
        with self._chunk_event:
            while not self._stop.is_set():
                last, period = self._last_chunk_stamp_ns, self._chunk_period_ns
                if last is None or period <= 0 or now < last + period:
                    return
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return
                self._chunk_event.wait(min(remaining, 0.05))

    def _control_tick(self) -> None:
        rig = self.rig
        action, _ = self.executor_.step_at(rig.stamp_ns)
        if self.state != "running":
            action = None  # warm-up and after the last episode: the robot is never commanded
        if action is None:
            action = hold_action(rig.pose()[6])
            step_s = ACTION_PERIOD_S
        else:
            chunk = self.executor_.newest
            step_s = chunk.step_dt_s if chunk is not None else 0.1
        rig.apply_action(control_piece(action, (self.tick_ns / NS_PER_S) / step_s), self.tick_ns / NS_PER_S)
        self._publish_streams()
        if self.state == "running" and round(rig.time_s * 100) % 10 == 0:
            self._record_trace()

    def _record_trace(self) -> None:
        """One 100 ms sample of what happened (for the demo's plots; ground truth, after the fact)."""
        chunk = self.executor_.newest
        trace = self._trace
        trace["t_s"].append(round(self.rig.time_s, 3))
        trace["tip_mm"].append([round(float(v), 4) for v in self.rig.pose()[0:3]])
        trace["force_n"].append(round(self._last_force_n, 4))
        trace["chunk_status"].append(-1 if chunk is None else int(chunk.status))
        trace["vl_age_s"].append(None if chunk is None else round(float(chunk.vl_age_s), 3))
        trace["robot"].append(self.executor_.last_reason or "moving")

    def _publish_streams(self, force_camera: bool = False) -> None:
        rig = self.rig
        tick = round(rig.time_s * self.config.robot.control_rate_hz)
        stamps, samples = rig.sensor_samples_until()
        if stamps.size:
            self._last_force_n = float(samples[-1, 0])
            self._sensor_pending.append((stamps, samples))
            self._sensor_pending_count += stamps.size
        if self._sensor_pending_count >= int(self.params["sensor_samples_per_message"]) or force_camera:
            self._flush_sensor()
        pose_stamps, poses = rig.pose_samples_until()
        for stamp, pose in zip(pose_stamps, poses):
            if round((stamp - rig.start_ns) / self.tick_ns) % self.pose_every == 0:
                self._publish_pose(int(stamp), pose)
        if force_camera or tick % self.camera_every == 0:
            for name, rgb in rig.render_cameras().items():
                self.camera_pubs[name].publish(
                    rgb_to_image_msg(rgb, stamp_ns=rig.stamp_ns, frame_id=f"{name}_optical_frame")
                )
        if self.clock_pub is not None:
            self.clock_pub.publish(Clock(clock=ns_to_stamp(rig.stamp_ns)))

    def _flush_sensor(self) -> None:
        if not self._sensor_pending:
            return
        stamps = np.concatenate([s for s, _ in self._sensor_pending])
        samples = np.concatenate([x for _, x in self._sensor_pending])
        self._sensor_pending, self._sensor_pending_count = [], 0
        batch = int(self.params["sensor_samples_per_message"])
        for start in range(0, stamps.size, batch):
            self.sensor_pub.publish(
                sensor_samples_to_msg(
                    samples[start : start + batch],
                    first_stamp_ns=int(stamps[start]),
                    sample_rate_hz=self.sensor_rate_hz,
                )
            )

    def _publish_pose(self, stamp_ns: int, pose: np.ndarray) -> None:
        position, quaternion = pose_to_ros(pose)
        msg = PoseStamped()
        msg.header.stamp = ns_to_stamp(stamp_ns)
        msg.header.frame_id = topics.POSE_FRAME_ID
        msg.pose.position.x, msg.pose.position.y, msg.pose.position.z = (float(v) for v in position)
        o = msg.pose.orientation
        o.x, o.y, o.z, o.w = (float(v) for v in quaternion)
        self.pose_pub.publish(msg)

    # ------------------------------------------------------------------------------------------- status
    def status(self) -> dict[str, Any]:
        """The live state published on /sim/status (JSON); call from the sim loop thread."""
        rig = self.rig
        stats = self.executor_.stats
        result = rig.evaluate()
        return {
            "state": self.state,
            "episode": self.episode,
            "episodes_done": len(self.results),
            "successes": sum(bool(r["success"]) for r in self.results),
            "sim_time_s": rig.stamp_ns / NS_PER_S,
            "episode_time_s": rig.time_s,
            "target": result["target"],
            "depth_mm": result["tip_depth_mm"],
            "depth_error_mm": result["depth_error_mm"],
            "lateral_error_mm": result["lateral_error_mm"],
            "max_force_n": result["max_force_n"],
            "moving_ticks": stats.moving_ticks,
            "hold_ticks": stats.hold_ticks,
            "hold_reason": self.executor_.last_reason,
            "chunks_received": self.chunks_received,
            "real_time_factor": self.real_time_factor,
        }

    def _publish_status(self) -> None:
        if self._status:
            self.status_pub.publish(String(data=json.dumps(self._status)))

    def stop(self) -> None:
        """Stop the sim loop thread."""
        self._stop.set()
        with self._chunk_event:
            self._chunk_event.notify_all()
        self._thread.join(timeout=5.0)


def interfaces_image() -> type:
    """``sensor_msgs/Image`` (imported lazily so this module's import stays cheap)."""
    from sensor_msgs.msg import Image

    return Image


def _ticks_per(control_hz: int, rate_hz: float, name: str) -> int:
    ticks = control_hz / rate_hz
    if abs(ticks - round(ticks)) > 1e-9:
        raise ValueError(f"parameter '{name}': {rate_hz} Hz must divide the {control_hz} Hz control rate")
    return int(round(ticks))


def main(args: list[str] | None = None) -> None:
    """Console script ``sim_node``: spin until SIGINT (or the last episode with ``exit_when_done``)."""
    if _INTERFACES_ERROR is not None:
        raise SystemExit(f"sim_node: error: {_INTERFACES_ERROR}")
    from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor

    rclpy.init(args=args)
    node = None
    code = 0
    try:
        try:
            node = SimNode()
        except ValueError as error:
            print(f"sim_node: error: {error}", flush=True)
            code = 1
            return
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        while rclpy.ok():
            executor.spin_once(timeout_sec=0.1)
            if node.done.is_set() and node.params["exit_when_done"]:
                executor.spin_once(timeout_sec=0.5)  # let the last result go out
                break
        code = 1 if node.state == "failed" else 0
    except (KeyboardInterrupt, ExternalShutdownException):
        code = 0
    finally:
        if node is not None:
            node.stop()
            node.destroy_node()
        rclpy.try_shutdown()
        raise SystemExit(code)


if __name__ == "__main__":
    main()
