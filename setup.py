"""Build script of the ament_python package insertion_vla_ros (also a plain pip package).

`pip install .` on a machine without ROS gives working `models`, `training` and `sim` packages: only the
ROS-free dependencies are required here. The ROS 2 layer (`insertion_vla_ros`) imports rclpy lazily and
needs a ROS 2 environment (a distribution, or the Kilted wheels that scripts/bootstrap installs).
"""

from glob import glob

from setuptools import find_packages, setup

PACKAGE_NAME = "insertion_vla_ros"

setup(
    name=PACKAGE_NAME,
    version="0.1.0",
    packages=find_packages(include=["insertion_vla_ros*", "models*", "training*", "sim*", "contracts*"]),
    # The embedded default VLM (Stage 0, ``builtin:tiny-sim``): weights, tokenizer, processor, head, card.
    package_data={"models": ["builtin/*/*"]},
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE_NAME}"]),
        (f"share/{PACKAGE_NAME}", ["package.xml"]),
        (f"share/{PACKAGE_NAME}/launch", glob("launch/*.launch.py")),
        (f"share/{PACKAGE_NAME}/config", glob("config/*.yaml") + glob("config/*.xml")),
        (f"share/{PACKAGE_NAME}/config/models", glob("config/models/*.yaml")),
    ],
    python_requires=">=3.10",
    install_requires=[
        "numpy>=1.24",
        "torch>=2.1",
        "transformers>=4.50",
        "peft>=0.13",
        "safetensors>=0.4",
        "pyyaml>=6",
        "pillow>=9",
        "tqdm>=4.60",
        "matplotlib>=3.6",
        "tensorboard>=2.14",
        "rosbags>=0.10",
        "h5py>=3.8",
    ],
    extras_require={"test": ["pytest>=7", "pytest-timeout>=2", "ruff>=0.5"]},
    zip_safe=False,  # from_pretrained reads the shipped model folder from disk
    maintainer="insertion_vla_ros developers",
    maintainer_email="insertion-vla@example.com",
    description="Asynchronous VLA controller for robotic needle insertion (ROS 2).",
    license="Apache-2.0",
    entry_points={
        "console_scripts": [
            # ROS 2 nodes and tools (need rclpy + insertion_vla_msgs)
            "vlm_node = insertion_vla_ros.nodes.vlm_node:main",
            "action_expert_node = insertion_vla_ros.nodes.action_expert_node:main",
            "sim_node = insertion_vla_ros.nodes.sim_node:main",
            "bringup = insertion_vla_ros.tools.bringup:main",
            "replay = insertion_vla_ros.tools.replay:main",
            "evaluate = insertion_vla_ros.tools.evaluate:main",
            "record = insertion_vla_ros.tools.record:main",
            "demo = insertion_vla_ros.tools.demo:main",
            "message_roundtrip = insertion_vla_ros.testing.message_roundtrip:main",
            # ROS-free tools (training clusters, workstations)
            "profile_vlm = models.profile_vlm:main",
            "insertion_vla_train = training.cli:main",
        ],
    },
)
