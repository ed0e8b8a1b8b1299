"""Packaging: `pip install .` gives working ROS-free packages, and the ROS package metadata is complete."""

import ast
import os
import re
import subprocess
import sys
import sysconfig
import xml.etree.ElementTree as ET
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ROS_MODULES = (
    "rclpy",
    "rosidl_runtime_py",
    "insertion_vla_msgs",
    "sensor_msgs",
    "std_msgs",
    "geometry_msgs",
    "builtin_interfaces",
    "diagnostic_msgs",
    "trajectory_msgs",
    "lifecycle_msgs",
    "rosgraph_msgs",
)

# Installed into the fresh venv as a .pth hook: any import of a ROS module fails, as on a training cluster.
BLOCKER = f"""
import importlib.abc, sys
class _NoRos(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {ROS_MODULES!r}:
            raise ImportError(f"{{name}} is a ROS module, not available on this machine")
sys.meta_path.insert(0, _NoRos())
"""


def _console_scripts() -> dict[str, str]:
    tree = ast.parse((ROOT / "setup.py").read_text())
    scripts = {}
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and re.match(r"^\w+ = [\w.]+:\w+$", node.value)
        ):
            name, target = node.value.split(" = ")
            scripts[name] = target
    return scripts


@pytest.mark.slow
def test_pip_install_without_ros_gives_working_models_and_training(tmp_path):
    wheel_dir = tmp_path / "wheels"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(wheel_dir),
            str(ROOT),
        ],
        check=True,
        cwd=tmp_path,
    )
    wheel = next(wheel_dir.glob("insertion_vla_ros-*.whl"))
    with zipfile.ZipFile(wheel) as archive:
        metadata = next(archive.read(n).decode() for n in archive.namelist() if n.endswith("METADATA"))
        names = archive.namelist()
    requirements = [line for line in metadata.splitlines() if line.startswith("Requires-Dist")]
    assert requirements, "the wheel declares no dependencies"
    assert not [r for r in requirements if re.search(r"\bros-|rclpy", r)], requirements
    assert any(n.startswith("models/") for n in names) and any(n.startswith("training/") for n in names)

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = Path(
        subprocess.check_output(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], text=True
        ).strip()
    )
    # Without PYTHONPATH: the colcon install space on it already holds an insertion_vla_ros distribution.
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PYTHONPATH", "INSERTION_VLA_ROOT", "AMENT_PREFIX_PATH")
    }
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q", str(wheel)],
        check=True,
        env=env,
    )
    # The ROS-free dependencies come from this environment's site-packages, with every ROS module blocked.
    (site / "_no_ros.py").write_text(BLOCKER)
    (site / "zz_deps.pth").write_text("import _no_ros\n" + sysconfig.get_paths()["purelib"] + "\n")
    probe = (
        "import importlib, pkgutil, models, training, sim\n"
        "for pkg in (models, training, sim):\n"
        "    for info in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + '.'):\n"
        "        if not info.name.endswith('__main__'):\n"
        "            importlib.import_module(info.name)\n"
        "try:\n    import rclpy\nexcept ImportError:\n    pass\n"
        "else:\n    raise SystemExit('rclpy importable')\n"
        "print(models.__file__)\n"
    )
    result = subprocess.run([str(python), "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert str(venv) in result.stdout, "models was imported from the source tree, not the installed wheel"


def test_package_xml_declares_runtime_dependencies():
    package = ET.parse(ROOT / "package.xml").getroot()
    assert package.get("format") == "3" and package.findtext("name") == "insertion_vla_ros"
    depends = {element.text for element in package if element.tag.endswith("depend")}
    for required in (
        "rclpy",
        "sensor_msgs",
        "std_msgs",
        "geometry_msgs",
        "trajectory_msgs",
        "diagnostic_msgs",
        "insertion_vla_msgs",
        "launch_ros",
        "python3-numpy",
        "python3-torch",
    ):
        assert required in depends, f"package.xml lacks {required}"
    assert package.find("export/build_type").text == "ament_python"
    msgs = ET.parse(ROOT / "msg" / "package.xml").getroot()
    assert msgs.findtext("name") == "insertion_vla_msgs"
    assert msgs.findtext("member_of_group") == "rosidl_interface_packages"


def test_every_message_field_is_documented():
    for msg_file in sorted((ROOT / "msg" / "msg").glob("*.msg")):
        lines = msg_file.read_text().splitlines()
        for index, line in enumerate(lines):
            if not line.strip() or line.lstrip().startswith("#") or "=" in line:
                continue
            previous = lines[index - 1].strip() if index else ""
            assert previous.startswith("#") or "#" in line, f"{msg_file.name}: field '{line}' has no comment"


def test_console_scripts_point_at_existing_mains():
    scripts = _console_scripts()
    assert {"vlm_node", "action_expert_node", "bringup", "demo", "profile_vlm"} <= set(scripts)
    missing = []
    for name, target in scripts.items():
        module, function = target.split(":")
        path = ROOT / (module.replace(".", "/") + ".py")
        if not path.is_file() or f"def {function}(" not in path.read_text():
            missing.append(f"{name} -> {target}")
    assert not missing, f"console scripts without an implementation: {missing}"


def test_ruff_is_clean():
    """The ROS lint tests (flake8/pep257) in one tool, so `colcon test` users see the same findings."""
    result = subprocess.run(
        [sys.executable, "-m", "ruff", "check", str(ROOT)], capture_output=True, text=True, cwd=ROOT
    )
    assert result.returncode == 0, result.stdout + result.stderr
