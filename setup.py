"""pip/venv installation of perception_fm.

On a robot the package is built by colcon through CMakeLists.txt (interfaces + Python package). Here, pip
installs the Python package and scripts/setup.sh builds the interfaces; see README.md.
"""
from setuptools import find_packages, setup

# Python dependencies of the core. ROS itself (rclpy, message packages) comes from apt on a robot and
# from the ros-kilted-* wheels in a venv (extra "ros-wheels"), so it is not an install requirement.
CORE = ["numpy>=1.24", "pluggy>=1.3", "PyYAML>=6", "scipy>=1.10", "rosbags>=0.10", "mcap>=1.1", "opencv-python-headless>=4.8"]
# Depth Anything 3: the network needs these; the depth-anything-3 package itself is installed with
# --no-deps by scripts/setup.sh because its declared requirements are far wider than the network's.
DA3 = ["torch>=2.2", "omegaconf>=2.3", "addict>=2.4", "einops>=0.7", "safetensors>=0.4", "huggingface_hub>=0.23",
       "evo>=1.28"]  # evo: imported by DA3-Giant's Gaussian head module (and the reference for trajectory metrics)
ROS_WHEELS = [
    f"ros-kilted-{name}"
    for name in (
        "rclpy", "rmw-fastrtps-cpp", "std-msgs", "std-srvs", "sensor-msgs", "geometry-msgs", "nav-msgs",
        "visualization-msgs", "shape-msgs", "diagnostic-msgs", "builtin-interfaces", "rosgraph-msgs",
        "lifecycle-msgs",  # managed nodes (rclpy.lifecycle) and their lifecycle_msgs services
    )
]
# What building the interfaces in msg/ needs in a venv (CMake and a C compiler come from the system).
ROS_BUILD_WHEELS = [
    "catkin-pkg>=1.0",
    "ros-kilted-ament-package",
    "ros-kilted-rosidl-default-generators",
    "ros-kilted-rosidl-core-generators",
] + [
    f"ros-kilted-ament-cmake{suffix}"
    for suffix in (
        "", "-core", "-export-definitions", "-export-dependencies", "-export-include-directories",
        "-export-interfaces", "-export-libraries", "-export-link-flags", "-export-targets",
        "-gen-version-h", "-include-directories", "-libraries", "-python", "-ros", "-ros-core",
        "-target-dependencies", "-test", "-version",
    )
]
# SAM 3 (and Whisper) through Hugging Face transformers; torchvision is never needed (our preprocessing).
SAM3 = ["transformers>=5.20", "tokenizers>=0.21"]
# Speech: PocketSphinx (ships an English model, offline); Whisper runs through transformers (SAM3 extra).
# sounddevice is for the microphone source (needs the system's PortAudio, libportaudio2).
SPEECH = ["pocketsphinx>=5.0", "sounddevice>=0.4"]
# Object and body meshes: decimation (quadric, fast-simplification) and GLB/PLY/OBJ export (trimesh).
MESH = ["trimesh>=4", "fast-simplification>=0.1"]
# Evaluation: the report's plots; the reference tools the tests compare our metrics with (trackeval is
# installed with --no-deps by scripts/setup.sh: its requirements pull opencv-python over the headless one).
EVAL = ["matplotlib>=3.7", "evo>=1.28"]
# Many bags at once (perception-fm batch): Ray with Ray Client (grpcio), for ray://HOST addresses; local
# clusters need only ray itself. Not ray[default]: its dashboard and metrics stack (~40 packages) go unused.
BATCH = ["ray[client]>=2.40"]
# DA3 exported to ONNX and run by ONNX Runtime (model da3-*-onnx): the dynamo exporter needs onnxscript. On a
# GPU install onnxruntime-gpu instead of onnxruntime for the CUDA and TensorRT execution providers.
ONNX = ["onnx>=1.16", "onnxruntime>=1.18", "onnxscript>=0.3"]
# scikit-image: its bundled photos (skimage.data) are the real images of the ONNX fidelity test.
DEV = ["pytest>=7", "pytest-timeout>=2", "pycocotools>=2.0.7", "tabulate>=0.9", "scikit-image>=0.22"]

setup(
    name="perception_fm",
    version="0.1.0",
    description="Plugin-based ROS 2 perception with foundation models (Depth Anything 3, SAM 3, SAM 3D)",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["perception_fm", "perception_fm.*"]),
    include_package_data=True,
    install_requires=CORE,
    extras_require={
        "da3": DA3,
        "sam3": SAM3,
        "eval": EVAL,
        "batch": BATCH,
        "speech": SPEECH,
        "mesh": MESH,
        "ros-wheels": ROS_WHEELS + ROS_BUILD_WHEELS,
        "onnx": ONNX,
        "dev": DEV,
    },
    entry_points={
        "console_scripts": ["perception-fm = perception_fm.cli:main",
                            "perception_fm_container = perception_fm.runtime.container:main"],
        # Third-party plugins register under this group (see perception_fm/hookspecs.py).
        "perception_fm": [],
    },
)
