#!/usr/bin/env bash
# The device check: every GPU figure in one call on a bare GPU machine (the device tool's nvidia-h200: Python 3.12,
# torch+CUDA, transformers, timm, torchvision, onnxruntime installed; nothing reachable). Run from the repository
# root with the wheel pack beside it (.whl/, made here by scripts/pack_device_wheels.sh and carried with the call):
#
#   bash scripts/device_check.sh                 # on the GPU machine; results in $OUT and bench/results/
#   bash scripts/device_check.sh --dry-run       # here or in CI: the same steps on the CPU, tiny models
#
# 1. installs .whl/ with `pip install --no-index --no-deps --prefix` into a directory of its own (not --target:
#    pip --target drops the ROS wheels' native libraries, which they install under <prefix>/lib) and points
#    PYTHONPATH, LD_LIBRARY_PATH and AMENT_PREFIX_PATH at it (what the ros-wheels-bootstrapper .pth does in a venv;
#    a .pth is not read off PYTHONPATH);
# 2. builds this package's ROS interfaces (msg/, srv/) and tf2_msgs for that interpreter with
#    scripts/build_interfaces.sh (their Python extensions are per interpreter version);
# 3. runs `python -m perception_fm.bench.device_bench` (perception-fm bench device): steps 1-6, each with its own
#    time budget, within what is left of DEVICE_CHECK_TOTAL_S (default 480 s = 8 minutes) after 1 and 2.
# Other arguments go to device_bench (e.g. --steps da3,sam3 or --budget nodes=0). The log is also written to
# $OUT/device_check.log when $OUT is set.
set -uo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
started=$(date +%s)
total=${DEVICE_CHECK_TOTAL_S:-480}
python=${PYTHON:-python3}
dry_run=0
for argument in "$@"; do [ "$argument" = "--dry-run" ] && dry_run=1; done
if [ -n "${OUT:-}" ]; then
  mkdir -p "$OUT"
  exec > >(tee -a "$OUT/device_check.log") 2>&1
fi
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export ROS_AUTOMATIC_DISCOVERY_RANGE=${ROS_AUTOMATIC_DISCOVERY_RANGE:-LOCALHOST}
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"

step() { printf '\n== %s (%ds elapsed)\n' "$*" "$(( $(date +%s) - started ))"; }

if [ "$dry_run" = 0 ]; then
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,memory.used,clocks.sm,driver_version \
    --format=csv
  prefix=${DEVICE_CHECK_PREFIX:-/tmp/perception_fm_device}
  step "installing $(ls .whl/*.whl 2>/dev/null | wc -l) carried wheels into $prefix"
  if ! ls .whl/*.whl >/dev/null 2>&1; then
    echo "no .whl/*.whl here: make the pack with scripts/pack_device_wheels.sh and carry .whl with the call"
  elif ! timeout 150 "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
      --no-warn-script-location --disable-pip-version-check --prefix "$prefix" .whl/*.whl; then
    echo "warning: the wheel install failed; the steps that need those packages will say so"
  fi
  # where pip put the Python packages (lib/python3.X/site-packages under the prefix; found, not assumed)
  site=$(dirname "$(find "$prefix" -maxdepth 5 -type d -name rclpy -path '*-packages/*' 2>/dev/null | head -1)")
  if [ "$site" = "." ]; then
    site=$("$python" -c "import sysconfig, sys; print(sysconfig.get_path('purelib', vars={'base': sys.argv[1], \
'platbase': sys.argv[1]}))" "$prefix")
  fi
  ros_libs=$(ls -d "$site"/ros_*.libs 2>/dev/null | paste -sd: -)
  export PYTHONPATH="$root:$site${PYTHONPATH#"$root"}"
  export LD_LIBRARY_PATH="$prefix/lib${ros_libs:+:$ros_libs}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  export AMENT_PREFIX_PATH="$prefix${AMENT_PREFIX_PATH:+:$AMENT_PREFIX_PATH}"
  export CMAKE_PREFIX_PATH="$prefix${CMAKE_PREFIX_PATH:+:$CMAKE_PREFIX_PATH}"
  export _ROS_WHEELS_BOOTSTRAP_COMPLETE=1  # the environment above is what its re-exec would set
  export PERCEPTION_FM_INTERFACES_DIR="$prefix/lib/perception_fm_interfaces/perception_fm"

  step "building the ROS interfaces for $("$python" --version 2>&1)"
  # build_interfaces.sh takes a venv-like directory: its bin/python is this interpreter (with the environment above)
  mkdir -p "$prefix/bin"
  printf '#!/bin/sh\nexec %s "$@"\n' "$(command -v "$python")" >"$prefix/bin/python"
  chmod +x "$prefix/bin/python"
  if ! timeout 180 bash scripts/build_interfaces.sh "$prefix"; then
    echo "warning: building the interfaces failed or timed out; step 6 (nodes) will say why it cannot run"
  fi
  "$python" -c "import rclpy; from perception_fm.msg import DepthInfo; print('ROS 2 and perception_fm interfaces import')" \
    || echo "warning: ROS 2 or the interfaces do not import"
fi

elapsed=$(( $(date +%s) - started ))
budget=$(( total - elapsed - 10 ))
[ "$budget" -lt 0 ] && budget=0
budget_args=()
if [ "$dry_run" = 0 ]; then
  budget_args=(--total-budget "$budget")
  step "steps 1-6 within ${budget}s"
else
  step "steps 1-6, dry run"
fi
"$python" -m perception_fm.bench.device_bench "${budget_args[@]}" "$@"
status=$?
step "device check finished (exit $status)"
exit $status
