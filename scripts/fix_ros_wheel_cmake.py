"""Point the ROS 2 wheels' CMake exports at this machine's Python and numpy include directories.

The Kilted wheels were built on a machine whose Python lived under /opt/python/cp311-cp311; their
exported CMake targets still name that machine's include directories, so building an interface package
against them fails until those paths are rewritten. Usage: python fix_ros_wheel_cmake.py VENV
"""

import sys
import sysconfig
from pathlib import Path

import numpy

BUILD_MACHINE_PYTHON_INCLUDE = "/opt/python/cp311-cp311/include/python3.11"
BUILD_MACHINE_NUMPY_INCLUDE = "/opt/python/cp311-cp311/lib/python3.11/site-packages/numpy/_core/include"


def main(venv: str) -> int:
    """Rewrite every share/*/cmake/*.cmake file under VENV that names a build-machine path."""
    replacements = {
        BUILD_MACHINE_NUMPY_INCLUDE: numpy.get_include(),
        BUILD_MACHINE_PYTHON_INCLUDE: sysconfig.get_paths()["include"],
    }
    changed = 0
    for cmake_file in Path(venv, "share").glob("*/cmake/*.cmake"):
        text = cmake_file.read_text()
        new_text = text
        for old, new in replacements.items():  # numpy first: it contains the Python prefix
            new_text = new_text.replace(old, new)
        if new_text != text:
            cmake_file.write_text(new_text)
            changed += 1
    print(f"fixed {changed} CMake export files", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
