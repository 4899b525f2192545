#!/usr/bin/env bash
# The main job on the bundled sample (README: "Run"): write the synthetic sample bag (deterministic), then
# replay it offline through config/sample.yaml into an output bag (MCAP) with a report.
#
#   scripts/run_sample.sh                      random-weight DA3-Small (no weights needed; says so loudly)
#   scripts/run_sample.sh --weights DIR_OR_HUB real weights: a local directory or a hub id (e.g.
#                                              depth-anything/DA3-SMALL, downloaded once with `hf download`)
# Outputs go to out/ (OUT=... to change): out/sample_bag (input), out/sample_depth (output bag + replay report),
# out/sample_report.html (metrics against the sample's ground truth, plots, sample frames) + sample_metrics.json.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
py="${PERCEPTION_FM_VENV:-$root/.venv}/bin/python"
out="${OUT:-$root/out}"
weights=""
if [ "${1:-}" = "--weights" ]; then weights="${2:?--weights needs a directory or hub id}"; fi

mkdir -p "$out"
# always rewritten (deterministic, seconds): a bag left by an older version would be a different scene
"$py" -m perception_fm.cli sample "$out/sample_bag" --force
rm -rf "$out/sample_depth"
config="$root/config/sample.yaml"
if [ -n "$weights" ]; then
  # same graph, weights from the user
  config="$out/sample_with_weights.yaml"
  "$py" - "$root/config/sample.yaml" "$weights" "$config" <<'PY'
import sys, yaml
graph = yaml.safe_load(open(sys.argv[1]))
for node in graph["nodes"].values():
    node.setdefault("parameters", {})["weights"] = sys.argv[2]
yaml.safe_dump(graph, open(sys.argv[3], "w"), sort_keys=False)
PY
  "$py" -m perception_fm.cli replay "$out/sample_bag" --config "$config" --out "$out/sample_depth"
else
  echo "NOTE: no --weights given: running DA3-Small with RANDOM weights. Depth and poses are not meaningful;" \
       "this checks the whole path (decode, model, chaining, clouds, TF, bag). Outputs are labelled random-init."
  "$py" -m perception_fm.cli replay "$out/sample_bag" --config "$config" --out "$out/sample_depth" --random-weights
fi
"$py" -m perception_fm.cli eval "$out/sample_depth" --report "$out/sample_report.html" --json "$out/sample_metrics.json"
