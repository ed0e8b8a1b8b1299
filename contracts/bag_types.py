"""The message types of this system's rosbag2 files, for the ``rosbags`` library (writers and readers alike).

One typestore: the standard ROS 2 messages plus ``insertion_vla_msgs`` registered from its ``.msg`` files
(the repository's ``msg/msg``, else the first ament prefix that installs them). Readers prefer the
definitions a bag stores itself (``AnyReader``); this store covers bags that store none.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

MSG_PACKAGE = "insertion_vla_msgs"


def find_msg_dir() -> Path:
    """Folder holding the ``insertion_vla_msgs`` ``.msg`` files (source tree first, then ament prefixes)."""
    candidates = [Path(__file__).resolve().parents[1] / "msg" / "msg"]
    for prefix in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep):
        if prefix:
            candidates.append(Path(prefix) / "share" / MSG_PACKAGE / "msg")
    for candidate in candidates:
        if candidate.is_dir() and any(candidate.glob("*.msg")):
            return candidate
    raise FileNotFoundError(f"no {MSG_PACKAGE} .msg files in {[str(c) for c in candidates]}")


def build_typestore(msg_dir: Path | None = None) -> Any:
    """A ROS 2 Kilted typestore with every ``insertion_vla_msgs`` message registered."""
    from rosbags.typesys import Stores, get_types_from_msg, get_typestore

    typestore = get_typestore(Stores.ROS2_KILTED)
    types: dict[str, Any] = {}
    for file in sorted((msg_dir or find_msg_dir()).glob("*.msg")):
        types.update(get_types_from_msg(file.read_text(), f"{MSG_PACKAGE}/msg/{file.stem}"))
    typestore.register(types)
    return typestore
