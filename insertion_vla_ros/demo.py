"""``make demo``: the main job on the embedded default.

Interim version: the closed-loop simulated-rig demo (issue 6) is not built yet, so this runs what exists:
every custom message round-trips between two processes over real DDS, bit-exact.
"""

from __future__ import annotations

import sys

from insertion_vla_ros.message_roundtrip import main as message_roundtrip_main


def main(argv: list[str] | None = None) -> int:
    """Run the interim demo and say what is not built yet."""
    print("insertion_vla_ros demo: message round trip between two processes (real DDS)")
    status = message_roundtrip_main(["--count", "3"])
    print("Not built yet: simulated rig closed loop through vlm_node + action_expert_node (issue 6).")
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
