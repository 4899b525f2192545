#!/usr/bin/env bash
# The one set-up command for a machine without a ROS distro (README: "Set up").
# Creates .venv, installs ROS 2 Kilted from PyPI wheels, torch, Depth Anything 3 (network deps only),
# this package (editable) and builds the ROS interfaces in msg/ and srv/ into the venv.
# Re-running it is safe. A robot with a ROS 2 distro uses `colcon build` instead (README).
#
#   TORCH_SPEC   torch requirement (default torch==2.13.0: the CPU wheel here; on a GPU machine use e.g.
#                TORCH_SPEC="torch --index-url https://download.pytorch.org/whl/cu128")
#   PYTHON       interpreter for the venv (default python3)
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv="${PERCEPTION_FM_VENV:-$root/.venv}"
python="${PYTHON:-python3}"
torch_spec="${TORCH_SPEC:-torch==2.13.0}"

step() { printf '\n== %s\n' "$*"; }

if [ ! -x "$venv/bin/python" ]; then
  step "creating $venv"
  "$python" -m venv "$venv"
fi
py="$venv/bin/python"
pip() { "$py" -m pip --disable-pip-version-check "$@"; }

# System packages (espeak-ng speaks commands for the speech end-to-end test; PortAudio lets the speech node
# use a microphone). Only where apt is usable (root); elsewhere the tests that need them say what is missing.
if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  missing=()
  for package in espeak-ng libportaudio2; do
    dpkg -s "$package" >/dev/null 2>&1 || missing+=("$package")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    step "installing system packages: ${missing[*]}"
    apt-get install -y -q "${missing[@]}" >/dev/null 2>&1 \
      || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q "${missing[@]}" >/dev/null 2>&1; } \
      || echo "warning: could not install ${missing[*]}; the tests that need them will say so"
  fi
fi

step "installing torch ($torch_spec)"
# shellcheck disable=SC2086  # TORCH_SPEC may carry pip options
pip install -q $torch_spec

step "installing perception_fm with the ROS 2 Kilted wheels"
pip install -q -e "$root[da3,sam3,eval,batch,speech,mesh,onnx,ros-wheels,dev]"
pip install -q --no-deps "trackeval==1.3.0"  # HOTA reference for the tests; its requirements replace opencv
pip install -q --no-deps "open-clip-torch==3.3.0"  # only its CLIP BPE vocabulary (offline SAM 3 tokenizer in tests)

# Last, and without its declared requirements (a GUI/app stack, numpy<2): the network needs only what the da3
# extra above installed. pip checks an installed package's requirements whenever a later install touches one of
# them and then prints its "dependency resolver" ERROR block; installed last with --no-deps, nothing does.
step "installing Depth Anything 3 (network code only)"
pip install -q --no-deps "depth-anything-3==0.1.1"
echo "note: depth-anything-3 is installed without its declared app requirements on purpose; \`pip check\` lists them"

step "building ROS interfaces"
bash "$root/scripts/build_interfaces.sh" "$venv"

step "checking the installation"
"$py" - <<'PY'
import rclpy, numpy, torch
from perception_fm.msg import DepthInfo
from tf2_msgs.msg import TFMessage
import perception_fm.plugins  # noqa: F401
print(f"ok: rclpy, torch {torch.__version__}, numpy {numpy.__version__}, perception_fm interfaces, tf2_msgs")
PY
echo "set-up done: use $venv/bin/python or 'source $venv/bin/activate'"
