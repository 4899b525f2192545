"""perception-fm bench suite: every benchmark, one summary table, one result file.

On a GPU the model benchmarks use full-size architectures (random weights give real timings); on a CPU they
scale down (DA3-Small at small resolutions, the tiny SAM 3 architecture) and the table says so. SAM 3D needs
CUDA and its weights: where it cannot run, the table says why. `--save` writes
bench/results/<device>.json (commit it with the device name), so runs on different machines sit side by side.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path


def _rows(module_main, argv: list[str]) -> list | dict:
    with tempfile.NamedTemporaryFile(suffix=".json") as handle:
        module_main(argv + ["--json", handle.name])
        return json.loads(Path(handle.name).read_text() or "[]")


def run(quick: bool = False) -> dict:
    from perception_fm.bench import codec_bench, da3_bench, node_bench, sam3_bench, sam3d_bench
    from perception_fm.bench.common import device_name

    device, gpu = device_name()
    results = {"device": device, "gpu": gpu, "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
               "scaled_down_for_cpu": not gpu}
    started = time.perf_counter()
    print(f"== codec ({device})", flush=True)
    results["codec"] = codec_bench.run(frames=20 if quick else 50)
    results["markers"] = codec_bench.run_markers(repeats=2 if quick else 5)
    results["select_pixels"] = codec_bench.run_select()
    if not quick:
        results["malloc"] = codec_bench.run_malloc()
    print("== da3", flush=True)
    da3_args = ["--iterations", "2" if quick else ("20" if gpu else "3")]
    if not gpu:
        da3_args += ["--variants", "da3-small", "--resolutions", "280" if quick else "280,504", "--views", "1,4"]
    results["da3"] = _rows(da3_bench.main, da3_args)
    print("== sam3", flush=True)
    results["sam3"] = _rows(sam3_bench.main, ["--iterations", "3"] if quick else [])
    print("== sam3d", flush=True)
    results["sam3d"] = _rows(sam3d_bench.main, [])
    print("== node (depth_node over DDS)", flush=True)
    rates = "1,2,5" if quick else ("5,10,15,20,30,60" if gpu else "1,2,5,10")
    results["node"] = node_bench.run(process_res=504 if gpu else 280, rates=[float(r) for r in rates.split(",")],
                                     seconds=3.0 if quick else 5.0)
    results["wall_s"] = time.perf_counter() - started
    return results


def table(results: dict) -> str:
    lines = [f"perception_fm benchmarks on {results['device']} ({results['date']})"
             + ("  [CPU: scaled-down models]" if results["scaled_down_for_cpu"] else "")]
    add = lines.append
    add(f"{'what':<44} {'p50 ms':>9} {'p95 ms':>9} {'fps':>8} {'vs upstream':>12} {'peak MB':>9}")
    codec = results["codec"]
    add(f"{'codec path 640x480 (decode+depth+cloud+publish)':<44} {codec['ours_ms_mean']:>9.2f} "
        f"{codec['ours_ms_p95']:>9.2f} {1000 / codec['ours_ms_mean']:>8.0f} {'x%.0f naive' % codec['speedup']:>12}")
    for row in results["da3"]:
        ours = row["ours"]
        ratio = f"x{row['speedup']:.2f}" if "speedup" in row else "n/a"
        add(f"{'%s %dx%d %d view(s)' % (row['variant'], row['size'][1], row['size'][0], row['views']):<44} "
            f"{ours['p50_ms']:>9.1f} {ours['p95_ms']:>9.1f} {ours['fps']:>8.2f} {ratio:>12} {row['peak_memory_mb']:>9.0f}")
    markers = results.get("markers")
    if markers:
        add(f"{'MarkerArray %d-triangle mesh from numpy' % markers['triangles']:<44} {markers['numpy_ms']:>9.2f} "
            f"{'':>9} {'':>8} {'x%.0f objects' % (markers['objects_ms'] / markers['numpy_ms']):>12}")
    select = results.get("select_pixels")
    if select:
        add(f"{'select_pixels %dx%d' % (select['width'], select['height']):<44} {select['select_pixels_ms']:>9.2f} "
            f"{'':>9} {'':>8} {'x%.1f numpy' % (select['numpy_mask_ms'] / select['select_pixels_ms']):>12}")
    if results["sam3"]:
        add(f"sam3 weights: {results['sam3'][0].get('weights', 'not recorded')}")
    for row in results["sam3"]:
        label = f"sam3 {row['model']} {row['image_size']}px {row['concepts']} concepts {row['objects']} objects"
        add(f"{label:<44} {row['frame_ms']:>9.1f} {'':>9} {1000 / row['frame_ms']:>8.1f} {'':>12} "
            f"{row['process_peak_rss_mb']:>9.0f}")
    for row in results["sam3d"]:
        add(f"{str(row.get('model', 'sam3d'))[:44]:<44} {row.get('p50_ms', float('nan')):>9.1f}")
    if not results["sam3d"]:
        add(f"{'sam3d objects/body':<44} not run: needs CUDA, Meta's code and weights (bench sam3d says what)")
    node = results["node"]
    latency = node["latency_at_rate"]
    add(f"{'depth_node peak throughput (< 5 % drops)':<44} {'':>9} {'':>9} {node['peak_throughput_hz']:>8.1f}")
    add(f"{'depth_node latency at %.0f Hz input' % latency['rate_hz']:<44} {latency['p50_ms']:>9.1f} "
        f"{latency['p95_ms']:>9.1f}")
    add(f"{'depth_node overhead per frame (not model)':<44} {latency['overhead']['p50_ms']:>9.1f} "
        f"{latency['overhead']['p95_ms']:>9.1f}")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="perception-fm bench suite", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer iterations and rates (a smoke run)")
    parser.add_argument("--save", action="store_true", help="write bench/results/<device>.json")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)
    results = run(args.quick)
    print()
    print(table(results))
    paths = [args.json] if args.json else []
    if args.save:
        from perception_fm.bench.common import results_path

        paths.append(str(results_path(results["device"])))
    for path in paths:
        if Path(path).exists():  # keep what was measured separately and this run did not measure (bench soak)
            previous = json.loads(Path(path).read_text())
            for section, date in previous.get("section_dates", {}).items():
                if section not in results:
                    results[section] = previous[section]
                    results.setdefault("section_dates", {})[section] = date
                    if section in previous.get("section_load_average", {}):
                        results.setdefault("section_load_average", {})[section] = \
                            previous["section_load_average"][section]
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(results, indent=2))
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
