"""The GPU figures of the device check (perception-fm bench device) as (what, figure) rows: for the check's own
markdown table and for README.md's benchmark table (scripts/readme_figures.py loads this file by path).

Standard library only, and no perception_fm import: scripts/readme_figures.py runs without the package installed.
A row whose figure the results do not hold says so ("not yet measured on a GPU", or the step's skip reason):
never a guess.
"""
from __future__ import annotations

NOT_MEASURED = "not yet measured on a GPU"
PEAK_BF16_TFLOPS = 790.0  # bf16 dense matrix rate measured on this workplace's H200 (device README, KINDS.md)
STEP_TITLES = {
    "tests": "1. CUDA tests",
    "da3": "2. DA3",
    "sam3": "3. SAM 3",
    "body": "4. SAM 3D Body",
    "together": "5. all models in one process",
    "nodes": "6. nodes over DDS",
}
STEPS = tuple(STEP_TITLES)
# What each step measures, for the rows of a GPU not measured yet.
STEP_DESCRIPTIONS = {
    "tests": "1. CUDA tests: pytest of the CUDA-only tests, bf16/fp16 autocast, device placement, no host syncs",
    "da3": "2. DA3 small/base/large/giant, 504 px, 1/4/8 views, bf16: ms p50/p95, peak VRAM, TFLOP/s of 790, "
           "vs upstream inference()",
    "sam3": "3. SAM 3 full size, 1008 px, 1/4/16 concepts x 1/10/50/100 objects: ms per frame, ours vs "
            "transformers' video path",
    "body": "4. SAM 3D Body through the real adapter: ms per person, peak VRAM",
    "together": "5. all models loaded in one process: VRAM each and together",
    "nodes": "6. depth_node and concept_node over DDS: peak throughput (< 5 % drops), latency at 30 Hz, node "
             "overhead",
}


def _ms(value) -> str:
    if value is None or value != value:
        return "n/a"
    if value >= 100:
        return f"{value:.0f}"
    if value >= 1:
        return f"{value:.1f}"
    return f"{value:.2f}"


def _mb(value) -> str:
    return "n/a" if value is None else f"{value:,.0f} MB"


def _step_note(step: dict | None) -> str:
    """Why a step's figures are missing or incomplete, or '' when it completed."""
    if not step:
        return NOT_MEASURED
    status = step.get("status")
    if status == "skipped":
        return f"skipped: {step.get('reason', 'no reason recorded')}"
    if status in ("failed", "stopped"):
        return f"{status}: {step.get('reason', 'no reason recorded')}"
    return ""


def _tests_rows(step: dict) -> list[tuple[str, str]]:
    figures = step.get("figures", {})
    counts = figures.get("counts")
    if not counts:
        return [("1. CUDA tests: pytest, with the CUDA variants of the DA3 / SAM 3 plugin tests", _step_note(step) or
                 "no counts recorded")]
    figure = ", ".join(f"{counts[k]} {k}" for k in ("passed", "failed", "errors", "skipped") if counts.get(k))
    failed = [t["test"] for t in figures.get("tests", []) if t["outcome"] in ("failed", "error")]
    if failed:
        figure += "; failing: " + ", ".join(failed[:6]) + (" ..." if len(failed) > 6 else "")
    return [("1. CUDA tests: pytest, with the CUDA variants of the DA3 / SAM 3 plugin tests", figure or "none ran")]


def _da3_rows(step: dict, title: str) -> list[tuple[str, str]]:
    rows = step.get("figures", {}).get("rows", [])
    out = []
    groups: dict[tuple, list] = {}
    for row in rows:
        groups.setdefault((row["variant"], tuple(row["size"]), row["precision"]), []).append(row)
    for (variant, (height, width), precision), group in groups.items():
        group.sort(key=lambda r: r["views"])
        parts = []
        for row in group:
            text = f"{row['views']} view(s): {_ms(row['ours']['p50_ms'])} / {_ms(row['ours']['p95_ms'])} ms"
            if row.get("tflops") is not None:
                text += f", {row['tflops']:.3g} TFLOP/s ({100 * row['tflops'] / PEAK_BF16_TFLOPS:.2g} % of " \
                        f"{PEAK_BF16_TFLOPS:.0f})"
            text += f", peak {_mb(row.get('peak_mb'))}"
            upstream = row.get("upstream", {})
            if "p50_ms" in upstream:
                text += f", upstream {_ms(upstream['p50_ms'])} ms (x{upstream['p50_ms'] / row['ours']['p50_ms']:.2f})"
            parts.append(text)
        out.append((f"{title} {variant} {width}x{height} {precision} (random weights): p50 / p95 per frame",
                     "; ".join(parts)))
    onnx = step.get("figures", {}).get("onnx", [])
    for row in onnx:
        out.append((f"{title} {row['variant']} through ONNX Runtime ({', '.join(row.get('providers', []))}) "
                    f"{row['size'][1]}x{row['size'][0]}, {row['views']} view(s)",
                    f"{_ms(row['ours']['p50_ms'])} / {_ms(row['ours']['p95_ms'])} ms p50 / p95"
                    + (f" (PyTorch {_ms(row['torch_p50_ms'])} ms)" if row.get("torch_p50_ms") else "")))
    return out


def _sam3_rows(step: dict, title: str) -> list[tuple[str, str]]:
    figures = step.get("figures", {})
    out = []
    ours = figures.get("ours", [])
    if ours:
        first = ours[0]
        out.append((f"{title} {first['model']} ({first['image_size']} px, {first.get('precision', '')}, "
                    f"{first['weights']}) our streaming session, ms per frame (median) by concepts x objects",
                    "; ".join(f"{r['concepts']}x{r['objects']}: {_ms(r['frame_ms'])}" for r in ours)
                    + " (Meta: 30 ms per image with 100+ objects on an H200)"))
    reference = figures.get("reference", [])
    if reference:
        out.append((f"{title} transformers' reference video path (Sam3VideoModel streaming), ms per frame by "
                    f"concepts (objects it tracked)",
                    "; ".join(f"{r['concepts']} concept(s): {_ms(r['frame_ms'])} ({r['objects_mean']:.0f} objects)"
                              if "frame_ms" in r else f"{r['concepts']} concept(s): {r.get('error', 'n/a')}"
                              for r in reference)))
    syncs = figures.get("host_syncs")
    if syncs:
        out.append((f"{title} host synchronisations per frame by operation",
                    ", ".join(f"{k} {v}" for k, v in syncs.items())))
    return out


def _body_rows(step: dict, title: str) -> list[tuple[str, str]]:
    rows = step.get("figures", {}).get("rows", [])
    return [(f"{title} ({row.get('people', '?')} people)",
             f"{_ms(row.get('person_ms'))} ms per person ({_ms(row.get('image_ms'))} ms per image), peak "
             f"{_mb(row.get('peak_gpu_mb'))}")
            for row in rows]


def _together_rows(step: dict, title: str) -> list[tuple[str, str]]:
    figures = step.get("figures", {})
    models = figures.get("models", [])
    if not models:
        return []
    parts = [f"{m['model']} {_mb(m.get('weights_mb'))} weights, {_mb(m.get('frame_peak_mb'))} peak in a frame"
             for m in models]
    total = figures.get("total", {})
    return [(f"{title}: {' + '.join(m['model'] for m in models)}",
             "; ".join(parts) + f"; together: allocated {_mb(total.get('allocated_mb'))}, peak "
             f"{_mb(total.get('peak_mb'))}, device memory in use {_mb(total.get('device_used_mb'))}")]


def _nodes_rows(step: dict, title: str) -> list[tuple[str, str]]:
    out = []
    for result in step.get("figures", {}).get("nodes", []):
        latency = result.get("latency_at_rate", {})
        figure = f"peak {result.get('peak_throughput_hz', 0):g} Hz with < 5 % drops"
        if latency:
            figure += (f"; at {latency['rate_hz']:g} Hz: latency p50 {_ms(latency['p50_ms'])} ms, p95 "
                       f"{_ms(latency['p95_ms'])} ms, node overhead p50 {_ms(latency['overhead']['p50_ms'])} ms, "
                       f"drops {100 * latency['drop_ratio']:.0f} %")
        out.append((f"{title}: {result['node']} ({result['model']} at {result['process_res']} px)", figure))
    return out


ROW_MAKERS = {"da3": _da3_rows, "sam3": _sam3_rows, "body": _body_rows, "together": _together_rows,
              "nodes": _nodes_rows}


def rows(check: dict | None) -> list[tuple[str, str]]:
    """(what, figure) for every step of a device check result ({"steps": {...}}), in step order. A step without
    figures gives one row with why; None (no GPU result yet) gives every step's row as NOT_MEASURED."""
    steps = (check or {}).get("steps", {})
    out: list[tuple[str, str]] = []
    for name, title in STEP_TITLES.items():
        step = steps.get(name)
        if name == "tests":
            made = _tests_rows(step) if step else []
        else:
            made = ROW_MAKERS[name](step, title) if step else []
        note = _step_note(step)
        if not made:
            out.append((STEP_DESCRIPTIONS[name] if check is None else title, note or "completed without figures"))
            continue
        if note:  # partial figures, and why the rest is missing
            made.append((f"{title} (rest)", note))
        for skip in (step or {}).get("skipped", [])[:8]:
            made.append((f"{title}: {skip['what']}", f"skipped: {skip['reason']}"))
        out += made
    return out


def markdown(results: dict, source: str = "") -> str:
    """The check's table: | what | figure | with a header line naming the device and run."""
    check = results.get("device_check", results)
    header = (f"Device check on {results.get('device', check.get('device', '?'))} "
              f"({check.get('date', '?')}{', DRY RUN: tiny models on the CPU' if check.get('dry_run') else ''}; "
              f"{check.get('wall_s', 0):.0f} s wall)")
    if source:
        header += f", from `{source}`"
    lines = [header, "", "| what | figure |", "|---|---|"]
    lines += [f"| {what} | {figure} |" for what, figure in rows(check)]
    return "\n".join(lines) + "\n"
