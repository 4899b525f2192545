#!/usr/bin/env bash
# Builds the ROS interfaces of this package (msg/, srv/) into a venv that holds the ros-kilted-* wheels,
# and tf2_msgs where that venv has none. Usage: scripts/build_interfaces.sh VENV
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=$(cd "${1:?usage: build_interfaces.sh VENV}" && pwd)
py="$venv/bin/python"
build="$root/build"
export AMENT_PREFIX_PATH="$venv${AMENT_PREFIX_PATH:+:$AMENT_PREFIX_PATH}"
export CMAKE_PREFIX_PATH="$venv${CMAKE_PREFIX_PATH:+:$CMAKE_PREFIX_PATH}"

# The wheels' exported CMake targets name the build farm's interpreter include directories
# (/opt/python/cp3XX-cp3XX/...). Point them at this venv's interpreter and numpy, once.
py_include=$("$py" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
np_include=$("$py" -c 'import numpy; print(numpy.get_include())')
{ grep -rlE '/opt/python/cp3[0-9]+-cp3[0-9]+/' "$venv"/share/*/cmake/ 2>/dev/null || true; } | while read -r f; do
  sed -i -E \
    -e "s#/opt/python/cp3[0-9]+-cp3[0-9]+/include/python3\.[0-9]+#$py_include#g" \
    -e "s#/opt/python/cp3[0-9]+-cp3[0-9]+/lib/python3\.[0-9]+/site-packages/numpy/_core/include#$np_include#g" \
    "$f"
done

generator=()
command -v ninja >/dev/null && generator=(-G Ninja)

build_package() {  # source-dir build-dir extra-cmake-args...
  local src=$1 dir=$2; shift 2
  cmake -S "$src" -B "$dir" "${generator[@]}" -Wno-dev \
    -DCMAKE_BUILD_TYPE=Release -DBUILD_TESTING=OFF \
    -DCMAKE_INSTALL_PREFIX="$venv" -DPython3_EXECUTABLE="$py" "$@" >"$dir.configure.log" 2>&1 \
    || { cat "$dir.configure.log"; return 1; }
  cmake --build "$dir" --parallel >"$dir.build.log" 2>&1 || { tail -50 "$dir.build.log"; return 1; }
  cmake --install "$dir" >/dev/null
}
mkdir -p "$build"

# tf2_msgs is not on PyPI: build the one-field TFMessage interface where it is missing.
if ! "$py" -c 'import tf2_msgs.msg' 2>/dev/null; then
  echo "building tf2_msgs (not installed)"
  build_package "$root/scripts/fallback_interfaces/tf2_msgs" "$build/tf2_msgs"
fi

# Our interfaces. The generated Python package (perception_fm/msg, perception_fm/srv) goes to a directory
# of its own, off sys.path: there it cannot shadow the perception_fm package installed by pip, whose
# __init__.py adds it to its search path.
echo "building perception_fm interfaces"
build_package "$root" "$build/interfaces" -DPERCEPTION_FM_INTERFACES_ONLY=ON \
  -DPYTHON_INSTALL_DIR=lib/perception_fm_interfaces
# rosidl also writes an egg-info for the generated package; pip would take it for an installed
# "perception_fm" distribution and uninstall the generated files on the next `pip install`.
rm -rf "$venv"/lib/perception_fm_interfaces/*.egg-info
