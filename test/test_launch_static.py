"""Static checks of launch/insertion_vla.launch.py (ros2 launch is not installable on dev machines)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
LAUNCH = REPO / "launch" / "insertion_vla.launch.py"
SETUP = (REPO / "setup.py").read_text()


def _tree() -> ast.Module:
    return ast.parse(LAUNCH.read_text(), filename=str(LAUNCH))


def _declared_arguments(tree: ast.Module) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "DeclareLaunchArgument":
            first = node.args[0]
            if isinstance(first, ast.Constant):
                names.add(first.value)
            elif isinstance(first, ast.JoinedStr):  # f"{name}_topic" over CAMERAS
                names.add("".join(v.value if isinstance(v, ast.Constant) else "{}" for v in first.values))
    return names


def _used_configurations(tree: ast.Module) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "LaunchConfiguration":
            first = node.args[0]
            if isinstance(first, ast.Constant):
                names.add(first.value)
            elif isinstance(first, ast.JoinedStr):
                names.add("".join(v.value if isinstance(v, ast.Constant) else "{}" for v in first.values))
    return names


def _constant(tree: ast.Module, name: str):
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == name for t in node.targets):
            return ast.literal_eval(node.value)
    raise AssertionError(f"{name} not defined in the launch file")


def test_parses_and_defines_generate_launch_description():
    tree = _tree()
    functions = {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}
    assert "generate_launch_description" in functions


def test_required_arguments_declared_and_every_used_one_declared():
    tree = _tree()
    declared = _declared_arguments(tree)
    for required in ("config_file", "checkpoint", "use_sim_time", "autostart", "{}_topic"):
        assert required in declared, f"launch argument {required} not declared"
    assert _used_configurations(tree) <= declared


def test_executables_are_console_scripts_of_setup_py():
    tree = _tree()
    nodes = _constant(tree, "NODES")
    assert set(nodes) == {"vlm_node", "action_expert_node"}
    package = _constant(tree, "PACKAGE")
    assert "name=PACKAGE_NAME" in SETUP and f'PACKAGE_NAME = "{package}"' in SETUP
    for node in nodes:
        match = re.search(rf'"{node} = ([\w.]+):(\w+)"', SETUP)
        assert match, f"console script {node} missing in setup.py"
        module, function = match.groups()
        source = REPO / (module.replace(".", "/") + ".py")
        assert source.is_file(), source
        assert f"def {function}(" in source.read_text()


def test_files_it_names_exist_and_are_installed():
    text = LAUNCH.read_text()
    assert '"config", "insertion_vla.yaml"' in text
    config = REPO / "config" / "insertion_vla.yaml"
    assert config.is_file()
    assert 'glob("launch/*.launch.py")' in SETUP and 'glob("config/*.yaml")' in SETUP


def test_yaml_sections_match_the_nodes_and_their_declared_parameters():
    from insertion_vla_ros.nodes.action_expert_node import PARAMETERS as AE
    from insertion_vla_ros.nodes.vlm_node import PARAMETERS as VLM

    config = yaml.safe_load((REPO / "config" / "insertion_vla.yaml").read_text())
    assert set(config) == {"/**", "vlm_node", "action_expert_node"}
    for section, specs in (("vlm_node", VLM), ("action_expert_node", AE)):
        declared = {spec.name for spec in specs} | {"use_sim_time"}
        keys = set(config[section]["ros__parameters"]) | set(config["/**"]["ros__parameters"])
        unknown = keys - declared
        assert not unknown, f"{section}: YAML keys not declared by the node: {unknown}"
        for spec in specs:
            value = config[section]["ros__parameters"].get(
                spec.name, config["/**"]["ros__parameters"].get(spec.name)
            )
            if value is not None:
                assert type(value) is type(spec.default) or isinstance(spec.default, list), (spec.name, value)
                spec.check(value)


def test_sets_the_large_data_profile_for_fast_dds_unless_set_and_installs_it():
    tree = _tree()
    assert set(_constant(tree, "PROFILE_VARIABLES")) == {
        "FASTDDS_DEFAULT_PROFILES_FILE",
        "FASTRTPS_DEFAULT_PROFILES_FILE",
    }
    profile = _constant(tree, "PROFILE_FILE")
    assert (REPO / "config" / profile).is_file()
    calls = [
        n
        for n in ast.walk(tree)
        if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "SetEnvironmentVariable"
    ]
    assert calls, "the launch file never sets the Fast DDS profile variable"
    assert "if not os.environ.get(variable)" in LAUNCH.read_text()  # a user's own profile wins
    assert 'glob("config/*.xml")' in SETUP  # installed to share/insertion_vla_ros/config


def test_camera_remaps_cover_the_compressed_transport_and_unknown_arguments_fail():
    text = LAUNCH.read_text()
    assert _constant(_tree(), "COMPRESSED_SUFFIX") == "/compressed"
    assert "camera_remappings(" in text and "camera_topic(name)" in text
    assert "_check_arguments(context, declared)" in text and "get_close_matches" in text
    # the camera list is the one of contracts, not a copy
    assert "from contracts.constants import CAMERA_NAMES" in text and "CAMERAS = (" not in text
