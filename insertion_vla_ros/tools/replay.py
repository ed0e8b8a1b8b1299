"""``replay``: play a rosbag2 (sqlite3 or MCAP) onto the graph with /clock, like ``ros2 bag play --clock``.

Messages go out in log-time order as their stored CDR bytes (no re-encoding), paced by ``--rate``; /clock
carries the playback time at ``--clock`` Hz (default 200, so 10 Hz ROS timers of nodes running with
``use_sim_time`` tick on clean 100 ms steps; 0 disables it). Topics recorded with a transient-local offered
QoS (latched, e.g. the instruction) are re-published transient-local; everything else reliable (which also
reaches best-effort subscribers)::

    replay BAG [--rate 1.0] [--clock 200] [--loop] [--remap /old:=/new ...] [--topics /a /b] [--delay 1.0]
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from contracts import topics as topic_names
from contracts.constants import NS_PER_S


def message_class(msgtype: str) -> type:
    """The rclpy message class of ``pkg/msg/Name``."""
    package, _, name = msgtype.split("/")
    return getattr(importlib.import_module(f"{package}.msg"), name)


def parse_remaps(items: Sequence[str]) -> dict[str, str]:
    """``["/a:=/b"]`` -> ``{"/a": "/b"}``; raises ``ValueError`` on a malformed item."""
    remaps = {}
    for item in items:
        source, sep, target = item.partition(":=")
        if not sep or not source or not target:
            raise ValueError(f"remap {item!r} must look like FROM:=TO")
        remaps[source] = target
    return remaps


def is_latched(connection: Any) -> bool:
    """Whether a bag connection was offered transient-local (latched)."""
    from rosbags.interfaces import QosDurability

    profiles = getattr(connection.ext, "offered_qos_profiles", None) or []
    return any(getattr(p, "durability", None) == QosDurability.TRANSIENT_LOCAL for p in profiles)


class BagPlayer:
    """Publishers for a bag's topics plus the paced playback loop."""

    def __init__(
        self, node: Any, bag: Path, remaps: dict[str, str] | None = None, topics: Sequence[str] | None = None
    ) -> None:
        from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
        from rosbags.highlevel import AnyReader
        from rosgraph_msgs.msg import Clock

        self.node = node
        self.bag = Path(bag)
        self.remaps = remaps or {}
        self.reader = AnyReader([self.bag])
        self.reader.open()
        wanted = set(topics) if topics else None
        self.connections = [c for c in self.reader.connections if wanted is None or c.topic in wanted]
        if not self.connections:
            raise ValueError(f"{bag}: no topics to play (asked for {sorted(wanted or [])})")
        self.publishers: dict[int, Any] = {}
        for connection in self.connections:
            latched = is_latched(connection)
            qos = QoSProfile(
                depth=1 if latched else 100,
                history=HistoryPolicy.KEEP_LAST,
                reliability=ReliabilityPolicy.RELIABLE,
                durability=DurabilityPolicy.TRANSIENT_LOCAL if latched else DurabilityPolicy.VOLATILE,
            )
            topic = self.remaps.get(connection.topic, connection.topic)
            self.publishers[connection.id] = node.create_publisher(
                message_class(connection.msgtype), topic, qos
            )
        self.clock_pub = node.create_publisher(Clock, topic_names.CLOCK_TOPIC, 10)
        self.start_ns = self.reader.start_time
        self.end_ns = self.reader.end_time
        self.published = 0

    def messages(self) -> Iterator[tuple[int, int, bytes]]:
        """``(log time ns, connection id, CDR bytes)`` in time order."""
        for connection, timestamp, rawdata in self.reader.messages(connections=self.connections):
            yield timestamp, connection.id, bytes(rawdata)

    def publish_clock(self, t_ns: int) -> None:
        """Publish one /clock message."""
        from rosgraph_msgs.msg import Clock

        from insertion_vla_ros.ros_io.time_conversions import ns_to_stamp

        self.clock_pub.publish(Clock(clock=ns_to_stamp(int(t_ns))))

    def play(self, rate: float = 1.0, clock_hz: float = 200.0, should_stop: Any = lambda: False) -> int:
        """Play the bag once; returns the number of messages published."""
        if rate <= 0:
            raise ValueError(f"rate must be positive, got {rate}")
        clock_step_ns = int(NS_PER_S / clock_hz) if clock_hz > 0 else 0
        wall0 = time.monotonic()
        next_clock = self.start_ns
        count = 0

        def wait_until(t_ns: int) -> None:
            nonlocal next_clock
            while not should_stop():
                if clock_step_ns:
                    while next_clock <= t_ns and next_clock <= self.playback_ns(wall0, rate):
                        self.publish_clock(next_clock)
                        next_clock += clock_step_ns
                delay = wall0 + (t_ns - self.start_ns) / NS_PER_S / rate - time.monotonic()
                if delay <= 0:
                    return
                if clock_step_ns:
                    delay = min(
                        delay,
                        max(0.0, wall0 + (next_clock - self.start_ns) / NS_PER_S / rate - time.monotonic()),
                    )
                time.sleep(max(delay, 0.0005))

        for timestamp, connection_id, raw in self.messages():
            wait_until(timestamp)
            if should_stop():
                break
            if clock_step_ns and next_clock <= timestamp:  # the clock reaches a message's time first
                self.publish_clock(timestamp)
                next_clock = timestamp + clock_step_ns
            self.publishers[connection_id].publish(raw)
            count += 1
        if clock_step_ns and not should_stop():
            self.publish_clock(self.end_ns)
        self.published += count
        return count

    def playback_ns(self, wall0: float, rate: float) -> int:
        """The bag time the wall clock has reached."""
        return self.start_ns + int((time.monotonic() - wall0) * rate * NS_PER_S)

    def close(self) -> None:
        """Close the bag."""
        self.reader.close()


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(prog="replay", description=__doc__.splitlines()[0])
    p.add_argument("bag", type=Path, help="rosbag2 folder (or .mcap/.db3 file)")
    p.add_argument("--rate", type=float, default=1.0, help="playback speed factor (default 1.0)")
    p.add_argument(
        "--clock", type=float, default=200.0, help="/clock rate in Hz, 0 = no /clock (default 200)"
    )
    p.add_argument("--loop", action="store_true", help="play again and again until Ctrl-C")
    p.add_argument("--remap", nargs="*", default=[], metavar="FROM:=TO", help="topic remapping")
    p.add_argument("--topics", nargs="*", default=None, help="play only these topics")
    p.add_argument(
        "--delay", type=float, default=1.0, help="wall seconds to wait for discovery first (default 1)"
    )
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Console script ``replay``."""
    args = parse_args(argv)
    import rclpy
    from rclpy.executors import SingleThreadedExecutor

    rclpy.init()
    node = rclpy.create_node("bag_replay")
    try:
        try:
            player = BagPlayer(node, args.bag, parse_remaps(args.remap), args.topics)
        except (ValueError, FileNotFoundError) as error:
            print(f"replay: error: {error}", file=sys.stderr)
            return 1
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        end = time.monotonic() + args.delay
        while time.monotonic() < end:
            executor.spin_once(timeout_sec=0.05)
        duration = (player.end_ns - player.start_ns) / NS_PER_S
        print(
            f"replay: {args.bag} ({duration:.1f} s, {len(player.connections)} topics) at x{args.rate}, "
            f"/clock {args.clock:g} Hz",
            flush=True,
        )
        while True:
            count = player.play(args.rate, args.clock, should_stop=lambda: not rclpy.ok())
            print(f"replay: published {count} messages", flush=True)
            if not args.loop or not rclpy.ok():
                break
        executor.spin_once(timeout_sec=0.2)  # let transient-local samples reach late subscribers
        player.close()
    except KeyboardInterrupt:
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
