"""The batch's summary: one row per bag with its headline metrics (the rows the evaluator marks primary), their
mean over the bags that have them and per sequence, failed bags with their errors; written as summary.json,
summary.csv (one row per bag, for plotting), sequences.csv (one row per sequence and one for all) and index.html
(a row per bag linking to its own report). Rows are in the bags' name order, whatever order they finished in, so
the same inputs give the same files."""
from __future__ import annotations

import csv
import html
import io
import json
import math
from pathlib import Path

from perception_fm.batch.engine import Outcome
from perception_fm.batch.jobs import write_atomic
from perception_fm.eval.result import format_value

SUMMARY_JSON = "summary.json"
SUMMARY_CSV = "summary.csv"
SEQUENCES_CSV = "sequences.csv"
INDEX_HTML = "index.html"


def metric_key(row: dict) -> str:
    return f"{row['group']}: {row['name']}" + (f" [{row['variant']}]" if row.get("variant") else "")


def headline_metrics(record: dict) -> dict[str, dict]:
    """key -> {"value", "unit", "frames", "lower_is_better"} of a bag's primary metric rows."""
    out = {}
    for row in (record.get("result") or {}).get("metrics", []):
        if row.get("primary"):
            out[metric_key(row)] = {"value": row.get("value"), "unit": row.get("unit", ""),
                                    "frames": row.get("frames", 0), "lower_is_better": row.get("lower_is_better")}
    return out


def _mean(values: list) -> float | None:
    finite = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    return sum(finite) / len(finite) if finite else None


def summarise(outcomes: list[Outcome]) -> dict:
    bags, columns, units = [], [], {}
    for outcome in sorted(outcomes, key=lambda o: o.job.name):
        metrics = headline_metrics(outcome.record) if outcome.record else {}
        for key, entry in metrics.items():
            if key not in units:
                columns.append(key)
                units[key] = {"unit": entry["unit"], "lower_is_better": entry["lower_is_better"]}
        bags.append({"bag": outcome.job.name, "sequence": outcome.job.sequence, "input_bag": outcome.job.input_bag,
                     "status": outcome.status, "error": outcome.error, "frames": outcome.frames,
                     "report": f"bags/{outcome.job.name}/report.html" if outcome.record else None,
                     "metrics": {key: entry["value"] for key, entry in metrics.items()}})
    evaluated = [b for b in bags if b["status"] != "failed"]

    def means(rows):
        return {key: _mean([r["metrics"].get(key) for r in rows]) for key in columns}

    sequences = {}
    for sequence in sorted({b["sequence"] for b in evaluated}):
        rows = [b for b in evaluated if b["sequence"] == sequence]
        sequences[sequence] = {"bags": len(rows), "frames": sum(r["frames"] for r in rows), "mean": means(rows)}
    return {"columns": columns, "units": units, "bags": bags,
            "mean": {"bags": len(evaluated), "frames": sum(b["frames"] for b in evaluated),
                     "metrics": means(evaluated)},
            "sequences": sequences,
            "failed": [{"bag": b["bag"], "input_bag": b["input_bag"], "error": b["error"]}
                       for b in bags if b["status"] == "failed"]}


def write_summary(summary: dict, results_dir: Path) -> dict[str, Path]:
    results_dir = Path(results_dir)
    paths = {name: results_dir / name for name in (SUMMARY_JSON, SUMMARY_CSV, SEQUENCES_CSV, INDEX_HTML)}
    write_atomic(paths[SUMMARY_JSON], json.dumps(summary, indent=1, allow_nan=False))
    columns = summary["columns"]
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["bag", "sequence", "status", "frames", *columns, "error"])
    for bag in summary["bags"]:
        writer.writerow([bag["bag"], bag["sequence"], bag["status"], bag["frames"],
                         *[_csv(bag["metrics"].get(c)) for c in columns], bag["error"] or ""])
    write_atomic(paths[SUMMARY_CSV], buffer.getvalue())
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["sequence", "bags", "frames", *columns])
    for sequence, entry in summary["sequences"].items():
        writer.writerow([sequence, entry["bags"], entry["frames"], *[_csv(entry["mean"].get(c)) for c in columns]])
    writer.writerow(["(all)", summary["mean"]["bags"], summary["mean"]["frames"],
                     *[_csv(summary["mean"]["metrics"].get(c)) for c in columns]])
    write_atomic(paths[SEQUENCES_CSV], buffer.getvalue())
    write_atomic(paths[INDEX_HTML], render_index(summary))
    return paths


def _csv(value) -> str:
    return "" if value is None else repr(float(value))


def render_index(summary: dict) -> str:
    columns, units = summary["columns"], summary["units"]
    esc = html.escape

    def cell(key, value):
        return f"<td class=n>{esc(format_value(value if value is not None else float('nan'), units[key]['unit']))}</td>"

    def arrow(key):
        better = units[key]["lower_is_better"]
        return "" if better is None else (" ↓" if better else " ↑")

    head = "".join(f"<th>{esc(c)}{arrow(c)}</th>" for c in columns)
    rows = []
    for bag in summary["bags"]:
        name = esc(bag["bag"])
        link = f"<a href=\"{esc(bag['report'])}\">{name}</a>" if bag["report"] else name
        if bag["status"] == "failed":
            rows.append(f"<tr class=bad><td>{link}</td><td>{esc(bag['sequence'])}</td><td>failed</td><td></td>"
                        f"<td colspan={max(len(columns), 1)}>{esc(bag['error'] or '')}</td></tr>")
            continue
        rows.append(f"<tr><td>{link}</td><td>{esc(bag['sequence'])}</td><td>{esc(bag['status'])}</td>"
                    f"<td class=n>{bag['frames']}</td>" + "".join(cell(c, bag["metrics"].get(c)) for c in columns)
                    + "</tr>")
    aggregate = [f"<tr class=agg><td>mean over {summary['mean']['bags']} bag(s)</td><td></td><td></td>"
                 f"<td class=n>{summary['mean']['frames']}</td>"
                 + "".join(cell(c, summary["mean"]["metrics"].get(c)) for c in columns) + "</tr>"]
    for sequence, entry in summary["sequences"].items():
        aggregate.append(f"<tr><td>{esc(sequence)}</td><td>{entry['bags']} bag(s)</td><td></td>"
                         f"<td class=n>{entry['frames']}</td>"
                         + "".join(cell(c, entry["mean"].get(c)) for c in columns) + "</tr>")
    failed = len(summary["failed"])
    banner = (f"<p class=bad>{failed} bag(s) failed; their errors are in the table.</p>" if failed else "")
    return f"""<!doctype html><html><head><meta charset=utf-8><title>perception_fm batch</title><style>
body{{font:14px/1.45 system-ui,sans-serif;margin:24px;color:#1d2330}} table{{border-collapse:collapse;margin:12px 0}}
th,td{{border-bottom:1px solid #e4e7ec;padding:4px 8px;text-align:left}} td.n{{text-align:right;
font-variant-numeric:tabular-nums}} tr.bad td,p.bad{{color:#b42318}} tr.agg td{{font-weight:600}}
</style></head><body><h1>perception_fm batch: {len(summary['bags'])} bag(s)</h1>{banner}
<h2>Per bag</h2><table><tr><th>bag</th><th>sequence</th><th>status</th><th>frames</th>{head}</tr>
{''.join(rows)}</table>
<h2>Aggregate (mean over bags; per sequence)</h2><table><tr><th>over</th><th></th><th></th><th>frames</th>{head}</tr>
{''.join(aggregate)}</table>
<p>Headline metrics only (the rows each bag's report marks *); every metric is in the bag's report and
metrics.json. Means weigh every bag the same and skip bags without the metric.</p></body></html>
"""
