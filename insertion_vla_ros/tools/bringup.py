"""``bringup``: start vlm_node and action_expert_node, each in its own process, from one YAML.

The same nodes and parameters as ``launch/insertion_vla.launch.py``, for hosts without ros2 launch::

    bringup --checkpoint DIR [--params-file config/insertion_vla.yaml] [--use-sim-time] [--autostart]
            [--remap /cameras/view1/image_raw:=/rig/cam1 ...] [--vlm-param vlm_period_s:=1.0]

SIGINT/SIGTERM are forwarded to both nodes (started in their own sessions, so a terminal's Ctrl-C reaches
them once, through here); bringup exits 0 when both stopped cleanly. A node that dies is reported and the
other keeps running (the action expert HOLDs on stale features, as with separate processes); with
``--respawn`` (like launch's ``respawn``) the dead node is started again after ``--respawn-delay`` s.
bringup then exits 1 at the end, naming every node that died.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

NODES = ("vlm_node", "action_expert_node")
STOP_TIMEOUT_S = 20.0


def default_params_file() -> Path:
    """Return the package's config/insertion_vla.yaml (installed share folder, else this source tree)."""
    try:
        from ament_index_python.packages import get_package_share_directory

        installed = Path(get_package_share_directory("insertion_vla_ros")) / "config" / "insertion_vla.yaml"
        if installed.is_file():
            return installed
    except (ImportError, LookupError, ValueError):
        pass
    return Path(__file__).resolve().parent.parent / "config" / "insertion_vla.yaml"


def node_command(node: str, args: argparse.Namespace) -> list[str]:
    """Command line of one node process (``python -m insertion_vla_ros.<node> --ros-args ...``)."""
    command = [
        sys.executable,
        "-m",
        f"insertion_vla_ros.nodes.{node}",
        "--ros-args",
        "--params-file",
        str(args.params_file),
    ]
    # "-p node:name:=value": a plain "-p name:=value" loses against the YAML's node section
    overrides = list(args.vlm_param if node == "vlm_node" else args.action_expert_param)
    if args.checkpoint:
        overrides.append(f"checkpoint:={args.checkpoint}")
    if args.use_sim_time:
        overrides.append("use_sim_time:=true")
    if args.autostart:
        overrides.append("autostart:=true")
    for override in overrides:
        command += ["-p", f"{node}:{override}"]
    for remap in args.remap:
        source, target = remap.split(":=", 1)
        # vlm_node subscribes <topic>/compressed with camera_transport: compressed: remap both transports
        command += ["-r", remap, "-r", f"{source}/compressed:={target}/compressed"]
    return command


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line arguments (the same as the launch file's)."""
    parser = argparse.ArgumentParser(prog="bringup", description=__doc__.splitlines()[0])
    parser.add_argument("--params-file", type=Path, default=None, help="node parameters YAML")
    parser.add_argument("--checkpoint", default="", help="policy checkpoint directory (overrides the YAML)")
    parser.add_argument("--use-sim-time", action="store_true", help="follow /clock (bag replay, simulation)")
    parser.add_argument("--autostart", action="store_true", help="configure and activate both nodes")
    parser.add_argument(
        "--remap", action="append", default=[], metavar="FROM:=TO", help="topic remap, both nodes"
    )
    parser.add_argument(
        "--vlm-param", action="append", default=[], metavar="NAME:=VALUE", help="parameter override, vlm_node"
    )
    parser.add_argument(
        "--action-expert-param",
        action="append",
        default=[],
        metavar="NAME:=VALUE",
        help="parameter override, action_expert_node",
    )
    parser.add_argument(
        "--respawn", action="store_true", help="restart a node that dies (like launch's respawn=True)"
    )
    parser.add_argument(
        "--respawn-delay", type=float, default=2.0, help="seconds before a dead node is restarted (default 2)"
    )
    args = parser.parse_args(argv)
    if args.params_file is None:
        args.params_file = default_params_file()
    if not args.params_file.is_file():
        parser.error(f"--params-file {args.params_file} does not exist")
    options = (
        ("--remap", args.remap),
        ("--vlm-param", args.vlm_param),
        ("--action-expert-param", args.action_expert_param),
    )
    for option, values in options:
        for value in values:
            if ":=" not in value:
                parser.error(f"{option} {value!r} must look like NAME:=VALUE")
    return args


def _stop(processes: dict[str, subprocess.Popen]) -> dict[str, int]:
    """SIGINT every running node, then SIGTERM/SIGKILL what does not stop in time; return exit codes."""
    for process in processes.values():
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    codes: dict[str, int] = {}
    for name, process in processes.items():
        try:
            codes[name] = process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            print(f"bringup: {name} did not stop after SIGINT; terminating", file=sys.stderr)
            process.terminate()
            try:
                codes[name] = process.wait(timeout=5.0)
            except subprocess.TimeoutExpired:
                process.kill()
                codes[name] = process.wait()
    return codes


def main(argv: list[str] | None = None) -> None:
    """Run both nodes until SIGINT/SIGTERM; report (and with ``--respawn`` restart) a node that dies."""
    args = parse_args(argv)
    stop_requested = False

    def request_stop(signum: int, frame: object) -> None:
        nonlocal stop_requested
        stop_requested = True

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    processes: dict[str, subprocess.Popen] = {}

    def start(node: str) -> None:
        command = node_command(node, args)
        print(f"bringup: starting {node}: {' '.join(command)}", file=sys.stderr, flush=True)
        processes[node] = subprocess.Popen(command, start_new_session=True, env=os.environ.copy())

    for node in NODES:
        start(node)
    deaths: dict[str, list[int]] = {}
    restart_at: dict[str, float] = {}
    while not stop_requested:
        for name, process in list(processes.items()):
            code = process.poll()
            if code is None or name in restart_at:
                continue
            deaths.setdefault(name, []).append(code)
            others = ", ".join(n for n, p in processes.items() if n != name and p.poll() is None) or "none"
            plan = f"restarting it in {args.respawn_delay:g} s" if args.respawn else "not restarting it"
            print(
                f"bringup: {name} exited with code {code}; {plan} (still running: {others})",
                file=sys.stderr,
                flush=True,
            )
            if args.respawn:
                restart_at[name] = time.monotonic() + args.respawn_delay
        for name, when in list(restart_at.items()):
            if time.monotonic() >= when:
                del restart_at[name]
                start(name)
        if not args.respawn and all(p.poll() is not None for p in processes.values()):
            break
        time.sleep(0.1)
    codes = _stop({n: p for n, p in processes.items() if p.poll() is None})
    bad = {name: code for name, code in codes.items() if code != 0}
    if deaths:
        report = ", ".join(f"{name} ({len(c)}x, last code {c[-1]})" for name, c in deaths.items())
        print(f"bringup: nodes that died: {report}", file=sys.stderr)
        raise SystemExit(1)
    if bad:
        print(f"bringup: nodes exited with errors: {bad}", file=sys.stderr)
        raise SystemExit(1)
    raise SystemExit(0)


if __name__ == "__main__":
    main()
