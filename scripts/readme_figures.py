#!/usr/bin/env python3
"""README.md's benchmark table, generated from a bench result file (never typed by hand).

    python scripts/readme_figures.py            # rewrite the table in README.md from the committed results
    python scripts/readme_figures.py --check    # exit 1 if README.md's table differs from what the results give

Only the text between the markers `<!-- bench-table:start -->` and `<!-- bench-table:end -->` is replaced; the
rest of README.md is left byte for byte. The result file is what `perception-fm bench suite --save` writes
(bench/results/<device>.json); sections a file does not hold are left out of the table. Standard library only,
so that it runs without the package installed.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_RESULTS = REPO / "bench" / "results" / "cpu-x86_64-2cores.json"
START = "<!-- bench-table:start -->"
END = "<!-- bench-table:end -->"


def _ms(value: float) -> str:
    """Milliseconds to the precision that means something for timings on a shared machine."""
    if value >= 100:
        return f"{value:.0f}"
    if value >= 1:
        return f"{value:.1f}"
    return f"{value:.2f}"


def _joined(values, format=_ms) -> str:
    return " / ".join(format(v) for v in values)


def _codec_rows(codec: dict) -> list[tuple[str, str]]:
    what = (f"node message path {codec['width']}x{codec['height']} (decode, 32FC1 depth, XYZRGB cloud of "
            f"{codec['points'] / 1000:.0f}k points, publish)")
    figure = f"{_ms(codec['ours_ms_mean'])} ms/frame mean, p95 {_ms(codec['ours_ms_p95'])} ms"
    if "naive_ms_mean" in codec:
        figure += (f"; {codec['speedup']:.0f}x faster than a naive per-element path "
                   f"({_ms(codec['naive_ms_mean'])} ms/frame)")
    return [(what, figure)]


def _da3_rows(rows: list, gpu: bool) -> list[tuple[str, str]]:
    groups: dict[tuple, list] = {}
    for row in rows:
        groups.setdefault((row["variant"], tuple(row["size"]), row["device"]), []).append(row)
    out = []
    for (variant, (height, width), device), group in groups.items():
        group.sort(key=lambda r: r["views"])
        views = _joined([r["views"] for r in group], str)
        weights = group[0].get("weights", "random weights")
        out.append((f"{variant} {width}x{height}, {views} view(s) "
                    f"({device}, {weights})",
                    f"{_joined([r['ours']['p50_ms'] for r in group])} ms per frame (p50); process peak RSS "
                    f"{_joined([r['peak_memory_mb'] for r in group], lambda v: f'{v:.0f}')} MB"))
    return out


def _node_rows(node: dict) -> list[tuple[str, str]]:
    latency = node["latency_at_rate"]
    return [(f"{node['node']} over DDS, {node['model']} at {node['process_res']} ({node['weights']}): peak "
             f"throughput with < 5 % drops; latency at {latency['rate_hz']:.0f} Hz input",
             f"{node['peak_throughput_hz']:g} Hz; p50 {_ms(latency['p50_ms'])} ms, p95 {_ms(latency['p95_ms'])} ms, "
             f"node overhead p50 {_ms(latency['overhead']['p50_ms'])} ms"
             + (f" ({_ms(latency['overhead_excl_queue']['p50_ms'])} ms without the wait for the busy model)"
                if "overhead_excl_queue" in latency else ""))]


def _sam3_rows(rows: list) -> list[tuple[str, str]]:
    if not rows:
        return []
    first = rows[0]
    weights = first.get("weights", "weights not recorded")
    pairs = _joined([f"{r['concepts']}x{r['objects']}" for r in rows], str)
    figure = f"{_joined([r['frame_ms'] for r in rows])} ms per frame (median)"
    most = max(rows, key=lambda r: r["objects"])
    if "retained_mb" in most:
        figure += (f"; {most['retained_mb']:.1f} MB retained after {most['after_frames']} frames with "
                   f"{most['objects']} objects")
    return [(f"SAM 3 {first['model']} architecture ({first['image_size']} px, {first['device']}, weights: "
             f"{weights}), concepts x objects {pairs}", figure)]


def _markers_rows(markers: dict) -> list[tuple[str, str]]:
    return [(f"MarkerArray of a {markers['triangles']:,}-triangle mesh: CDR bytes from numpy vs message objects "
             f"built and serialised",
             f"{_ms(markers['numpy_ms'])} ms vs {_ms(markers['objects_ms'])} ms "
             f"({markers['objects_ms'] / markers['numpy_ms']:.0f}x)")]


def _select_rows(select: dict) -> list[tuple[str, str]]:
    return [(f"colours of a {select['width']}x{select['height']} cloud: select_pixels vs numpy (H, W, 3)[mask]",
             f"{_ms(select['select_pixels_ms'])} ms vs {_ms(select['numpy_mask_ms'])} ms "
             f"({select['numpy_mask_ms'] / select['select_pixels_ms']:.1f}x)")]


def _malloc_rows(malloc: dict) -> list[tuple[str, str]]:
    default, tuned = malloc["default"], malloc["tuned"]
    return [(f"node message path, {malloc['frames']} frames in each of {malloc.get('rounds', 1)} fresh processes "
             f"per setting (median): glibc malloc defaults vs tune_malloc()",
             f"mean {_ms(default['ours_ms_mean'])} vs {_ms(tuned['ours_ms_mean'])} ms/frame, p95 "
             f"{_ms(default['ours_ms_p95'])} vs {_ms(tuned['ours_ms_p95'])} ms; page faults per frame "
             f"{default['minor_faults_per_frame']:.1f} vs {tuned['minor_faults_per_frame']:.1f}")]


def _soak_rows(soak: dict) -> list[tuple[str, str]]:
    drops = ", ".join(f"{reason} {count}" for reason, count in sorted(soak["drops"].items())) or "none"
    return [(f"soak: {soak['node']} ({soak['model']} at {soak['process_res']}) fed {soak['minutes']:g} min at "
             f"{soak['rate_hz']:g} Hz over DDS",
             f"RSS slope {soak['rss_slope_mb_per_min']:+.2f} MB/min after {soak['warmup_s']:.0f} s warm-up "
             f"(RSS {soak['rss_first_mb']:.0f} -> {soak['rss_last_mb']:.0f} MB); {soak['frames_processed']} of "
             f"{soak['frames_sent']} frames processed; drops: {drops}; latency p50 {_ms(soak['p50_ms'])} ms, "
             f"p95 {_ms(soak['p95_ms'])} ms")]


def _speech_rows(speech: dict) -> list[tuple[str, str]]:
    voices: dict[str, list] = {}
    for row in speech["rows"]:
        voices.setdefault(row["voice"], []).append(row)
    speeds = sorted({row["speed"] for row in speech["rows"]})
    seeds = sorted({row["seed"] for row in speech["rows"]})
    if "opposite" not in speech["rows"][0]:  # results of the first version of the benchmark
        per_voice = "; ".join(f"{voice} {sum(r['right'] for r in rows)}/{sum(r['utterances'] for r in rows)}"
                              for voice, rows in voices.items())
        return [(f"spoken commands right: espeak-ng voice -> speech node's VAD and listener -> {speech['model']} "
                 f"over {len(speech['phrases'])} phrases ({_joined(speeds, str)} wpm, noise seeds "
                 f"{_joined(seeds, str)})", per_voice)]
    snrs = sorted({row["snr_db"] for row in speech["rows"] if row["snr_db"] is not None})
    per_voice = "; ".join(
        f"{voice} {sum(r['right'] for r in rows)}/{sum(r['utterances'] for r in rows)} right, "
        f"{sum(r['rejected'] for r in rows)} not understood, {sum(r['opposite'] for r in rows)} opposite"
        for voice, rows in voices.items())
    return [(f"spoken commands: {speech['phrasings_used']} of {speech['corpus_phrasings']} phrasings (espeak-ng) "
             f"-> speech node's VAD and listener -> {speech['model']} over {len(speech['phrases'])} phrases "
             f"({_joined(speeds, str)} wpm, room noise {_joined(snrs, lambda v: f'{v:g}')} dB SNR)", per_voice)]


def table(results: dict, source: str) -> str:
    """The markdown for the README region: a table of (what, figure) and the line saying where it came from."""
    rows: list[tuple[str, str]] = []
    if "codec" in results:
        rows += _codec_rows(results["codec"])
    if "malloc" in results:
        rows += _malloc_rows(results["malloc"])
    if "select_pixels" in results:
        rows += _select_rows(results["select_pixels"])
    if "markers" in results:
        rows += _markers_rows(results["markers"])
    if results.get("da3"):
        rows += _da3_rows(results["da3"], results.get("gpu", False))
    if "node" in results:
        rows += _node_rows(results["node"])
    if "soak" in results:
        rows += _soak_rows(results["soak"])
    rows += _sam3_rows(results.get("sam3", []))
    if "speech" in results:
        rows += _speech_rows(results["speech"])
    lines = ["| what | figure |", "|---|---|"]
    lines += [f"| {what} | {figure} |" for what, figure in rows]
    lines.append("")
    lines.append(f"Generated by `scripts/readme_figures.py` from `{source}` ({results['device']}; suite run "
                 f"{results['date']}).")
    dates, loads = results.get("section_dates", {}), results.get("section_load_average", {})
    if dates:
        lines[-1] += " Measured separately: " + "; ".join(
            f"{section} {date}" + (f" (load average {loads[section]:g})" if section in loads else "")
            for section, date in sorted(dates.items())) + "."
    return "\n".join(lines)


def _device_table():
    """perception_fm/bench/device_table.py (standard library only), loaded by path: this script runs without the
    package installed."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("device_table", REPO / "perception_fm" / "bench" / "device_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def gpu_table(results_dir: Path) -> str:
    """The GPU figures of the device check (`perception-fm bench device`, scripts/device_check.sh): one column per
    GPU result file in `results_dir` (a device_check section with "gpu": true); with none yet, one column saying
    "not yet measured on a GPU" in every row."""
    device_table = _device_table()
    checks = []
    for path in sorted(results_dir.glob("*.json")):
        data = json.loads(path.read_text())
        if data.get("gpu") and not data.get("device_check", {}).get("dry_run", True) and "device_check" in data:
            checks.append((data["device"], path, data["device_check"]))
    columns = [dict(device_table.rows(check)) for _, _, check in checks] or [dict(device_table.rows(None))]
    whats = list(dict.fromkeys(what for column in columns for what in column))
    names = [device for device, _, _ in checks] or ["GPU"]
    lines = ["| what (GPU: device check) | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    lines += [f"| {what} | " + " | ".join(column.get(what, device_table.NOT_MEASURED) for column in columns) + " |"
              for what in whats]
    lines.append("")
    if checks:
        lines.append("GPU figures from " + ", ".join(
            f"`bench/results/{path.name}` ({check['date']})" for _, path, check in checks)
            + " (random weights, the real architectures).")
    else:
        lines.append("No GPU result file yet: `bash scripts/device_check.sh` on a lent GPU writes "
                     "bench/results/<gpu>.json (scripts/pack_device_wheels.sh makes the wheels it carries).")
    return "\n".join(lines)


def replace_region(text: str, region: str) -> str:
    """`text` with what lies between the markers replaced by `region`; ValueError unless each marker occurs
    exactly once, start before end."""
    if text.count(START) != 1 or text.count(END) != 1:
        raise ValueError(f"README must hold {START} and {END} exactly once each")
    head, rest = text.split(START)
    _, tail = rest.split(END)
    if END in head:
        raise ValueError(f"{END} comes before {START}")
    return f"{head}{START}\n{region}\n{END}{tail}"


def generate(readme_text: str, results_path: Path) -> str:
    results = json.loads(results_path.read_text())
    try:
        source = results_path.resolve().relative_to(REPO).as_posix()
    except ValueError:
        source = results_path.name
    region = table(results, source) + "\n\n" + gpu_table(results_path.parent)
    return replace_region(readme_text, region)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=DEFAULT_RESULTS, help="a bench suite result file")
    parser.add_argument("--readme", type=Path, default=REPO / "README.md")
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if the table is stale")
    args = parser.parse_args(argv)
    current = args.readme.read_text()
    wanted = generate(current, args.results)
    if args.check:
        if wanted != current:
            print(f"{args.readme}: the benchmark table differs from {args.results}; run scripts/readme_figures.py",
                  file=sys.stderr)
            return 1
        return 0
    if wanted != current:
        args.readme.write_text(wanted)
        print(f"rewrote the benchmark table in {args.readme}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
