"""One self-contained HTML file for an EvalResult (inline CSS, plots and images as base64 PNG; opens offline in
any browser), and the numbers as JSON.

Every metric is shown with its trivial baselines (perception_fm.eval.baselines: constant pose and straight line
for trajectories, constant depth, empty and whole-image masks) right below or beside it, and a metric that does
not strictly beat all of them is marked "does not beat …" in red, with a summary banner at the top listing
the headline metrics that failed. The JSON carries the same: each metric's "baselines" and "beats_baselines".
"""
from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

import numpy as np

from perception_fm.eval.result import EvalResult, MetricRow, format_value

GROUP_TITLES = {"depth": "Depth", "depth points": "Depth points (F-score)",
                "trajectory": "Trajectory", "segmentation": "Segmentation",
                "tracking": "Tracking"}

CSS = """
:root { --fg:#1d2330; --muted:#667085; --line:#e4e7ec; --bg:#f7f8fa; --accent:#2e5bff; --bad:#b42318; }
* { box-sizing: border-box; }
body { margin:0; font:14px/1.45 -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
       color:var(--fg); background:var(--bg); }
main { max-width:1280px; margin:0 auto; padding:24px 28px 48px; }
h1 { font-size:24px; margin:0 0 4px; }
h2 { font-size:18px; margin:32px 0 12px; padding-bottom:6px; border-bottom:1px solid var(--line); }
h3 { font-size:15px; margin:18px 0 8px; }
.sub { color:var(--muted); }
.banner { margin:16px 0; padding:14px 18px; border-radius:8px; background:#fef3f2; border:2px solid var(--bad);
          color:var(--bad); font-weight:700; font-size:16px; }
.banner small { display:block; font-weight:400; font-size:13px; color:#7a271a; margin-top:4px; }
.cards { display:flex; flex-wrap:wrap; gap:12px; margin-top:16px; }
.card { background:#fff; border:1px solid var(--line); border-radius:8px; padding:10px 16px; min-width:150px; }
.card .v { font-size:22px; font-weight:650; }
.card .k { color:var(--muted); font-size:12px; }
table { border-collapse:collapse; background:#fff; border:1px solid var(--line); border-radius:8px; }
th, td { padding:5px 12px; text-align:left; border-bottom:1px solid var(--line); vertical-align:top; }
th { background:#f2f4f7; font-weight:600; font-size:12px; color:#475467; }
td.num { text-align:right; font-variant-numeric: tabular-nums; white-space:nowrap; }
tr.secondary td { color:var(--muted); }
tr.group td { background:#f9fafb; font-weight:650; color:var(--fg); }
tr.baseline td { color:var(--muted); font-size:12px; background:#fcfcfd; }
td.lost, span.lost { color:var(--bad); font-weight:650; }
.warnbox { margin:16px 0; padding:10px 16px; border-radius:8px; background:#fffaeb; border:1px solid #f79009;
           color:#93370d; }
span.base { color:var(--muted); font-size:12px; white-space:nowrap; }
td.note, span.note { color:var(--muted); font-size:12px; font-weight:400; }
.metrics { width:100%; }
.plots { display:grid; grid-template-columns: repeat(2, minmax(0, 1fr)); gap:16px; }
.plot { background:#fff; border:1px solid var(--line); border-radius:8px; padding:8px; }
.plot img { width:100%; display:block; }
.sample { background:#fff; border:1px solid var(--line); border-radius:8px; padding:12px; margin-bottom:16px; }
.row { display:flex; flex-wrap:wrap; gap:10px; margin-bottom:10px; }
figure { margin:0; width:288px; }
figure img { width:288px; image-rendering:pixelated; border-radius:4px; display:block; background:#808080; }
figcaption { font-size:12px; color:var(--muted); margin-top:3px; }
ul.legend { margin:4px 0 0; padding-left:18px; font-size:12px; color:#344054; columns:2; }
ul.notes li { margin-bottom:4px; }
.kv td:first-child { color:var(--muted); white-space:nowrap; }
footer { margin-top:36px; color:var(--muted); font-size:12px; }
code { background:#f2f4f7; padding:1px 4px; border-radius:3px; }
"""


def _png(image: np.ndarray) -> str:
    import cv2

    ok, data = cv2.imencode(".png", cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2BGR))
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return "data:image/png;base64," + base64.b64encode(data.tobytes()).decode("ascii")


def _figure_png(fig) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _series_plot(result: EvalResult, group: str, title: str, ylabel: str) -> str | None:
    series = [s for s in result.series if s.group == group and s.values.size]
    if not series:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 3.0))
    for s in series:
        finite = np.isfinite(s.values)
        ax.plot(s.t_s[finite], s.values[finite], marker="o", markersize=2.5, linewidth=1.2, label=s.label)
    ax.set_title(title, fontsize=11)
    ax.set_xlabel("time since first frame (s)")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.set_ylim(bottom=0)
    if len(series) > 1:
        ax.legend(fontsize=8)
    return _figure_png(fig)


def _trajectory_plot(result: EvalResult) -> str | None:
    if not result.trajectories:
        return None
    plt = _plt()
    views = result.trajectories
    fig, axes = plt.subplots(1, len(views), figsize=(3.4 * len(views) + 0.6, 3.4), squeeze=False)
    for ax, view in zip(axes[0], views):
        ax.plot(view.gt_xyz[:, 0], view.gt_xyz[:, 1], "-", color="#222", linewidth=1.6, label="ground truth")
        ax.plot(view.est_xyz[:, 0], view.est_xyz[:, 1], "-", color="#2e5bff", linewidth=1.2,
                label=f"estimate ({view.label}-aligned)")
        for (name, xyz), colour in zip(view.baselines.items(), ("#98a2b3", "#f79009")):
            marker = "o" if len(np.unique(np.round(xyz, 6), axis=0)) == 1 else None  # a constant pose is a point
            ax.plot(xyz[:, 0], xyz[:, 1], "--", color=colour, linewidth=1.0, marker=marker, markersize=5,
                    label=f"baseline: {name}")
        step = max(1, len(view.gt_xyz) // 40)
        for g, e in zip(view.gt_xyz[::step], view.est_xyz[::step]):
            ax.plot([g[0], e[0]], [g[1], e[1]], color="#d92d20", linewidth=0.6, alpha=0.6)
        ax.plot(*view.gt_xyz[0, :2], "o", color="#222", markersize=4)
        ax.set_aspect("equal", adjustable="datalim")
        ax.set_title(f"top view (x-y), {view.label} alignment", fontsize=10)
        ax.set_xlabel("x (m)")
        ax.set_ylabel("y (m)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    return _figure_png(fig)


def _esc(text) -> str:
    return html.escape(str(text))


def _cards(result: EvalResult) -> str:
    picks = []
    depth_primary = (result.details.get("depth") or {}).get("primary")
    for group, name, variant in (("depth", "AbsRel", depth_primary), ("depth", "δ<1.25", depth_primary),
                                 ("depth points", "F-score@", None),  # @ its threshold
                                 ("trajectory", "ATE RMSE", None), ("trajectory", "RPE trans RMSE", None),
                                 ("trajectory", "pose AUC@30", None),
                                 ("segmentation", "mIoU", None), ("tracking", "HOTA", None),
                                 ("tracking", "IDF1", None)):
        row = next((r for r in result.rows if r.group == group and r.primary
                    and (r.name == name or (name.endswith("@") and r.name.startswith(name)))
                    and (variant is None or r.variant == variant)), None)
        if row is not None:
            label = f"{row.name}" + (f" · {row.variant}" if row.variant else "")
            base = "".join(f'<div class="k">{_esc(name)}: {_esc(format_value(v, row.unit))}</div>'
                           for name, v in row.baselines.items())
            lost = row.not_beaten
            mark = f'<div class="k lost">does not beat {_esc(", ".join(lost))}</div>' if lost else ""
            picks.append(f'<div class="card"><div class="v{" lost" if lost else ""}">'
                         f'{_esc(format_value(row.value, row.unit))}</div>'
                         f'<div class="k">{_esc(GROUP_TITLES[group])} · {_esc(label)}</div>{base}{mark}</div>')
    return f'<div class="cards">{"".join(picks)}</div>' if picks else ""


def _arrow(row: MetricRow) -> str:
    return "" if row.lower_is_better is None else (" ↓" if row.lower_is_better else " ↑")


def _depth_table(result: EvalResult) -> str:
    matrix = result.depth_matrix()
    if not matrix:
        return ""
    first = matrix[0][3]
    head = "".join(f"<th>{_esc(r.name)}{' (m)' if r.unit == 'm' else ''}{_arrow(r)}</th>" for r in first)
    out = [f'<h3>Depth</h3><table class="metrics"><tr><th>Alignment</th>{head}<th>Frames</th></tr>']
    for mode, primary, frames, rows in matrix:
        cls = "" if primary else ' class="secondary"'
        cells = "".join(
            f'<td class="num{" lost" if r.not_beaten else ""}"'
            + (f' title="does not beat {_esc(", ".join(r.not_beaten))}"' if r.not_beaten else "")
            + f'>{_esc(format_value(r.value, "%" if r.unit == "%" else ""))}{" ✗" if r.not_beaten else ""}</td>'
            for r in rows)
        out.append(f'<tr{cls}><td>{"<b>" if primary else ""}{_esc(mode)}{"</b>" if primary else ""}'
                   f'<br><span class="note">{_esc(rows[0].note)}</span></td>{cells}'
                   f'<td class="num">{frames}</td></tr>')
        for name in rows[0].baselines:
            cells = "".join(f'<td class="num">{_esc(format_value(r.baselines.get(name, float("nan")), unit))}</td>'
                            for r, unit in ((r, "%" if r.unit == "%" else "") for r in rows))
            out.append(f'<tr class="baseline"><td>&nbsp;&nbsp;baseline: {_esc(name)}</td>{cells}<td></td></tr>')
    out.append("</table>")
    if any(r.not_beaten for _, _, _, rows in matrix for r in rows):
        out.append('<p class="sub"><span class="lost">✗</span> the model does not beat the constant-depth baseline '
                   "on this metric (hover for which).</p>")
    return "\n".join(out)


def _metric_table(rows: list[MetricRow]) -> str:
    rows = [r for r in rows if r.group != "depth"]
    if not rows:
        return ""
    out = ['<h3>Depth points, trajectory, segmentation and tracking</h3><table class="metrics"><tr><th>Metric</th>'
           '<th>Variant</th><th>Value</th><th>Baselines (same frames, same alignment)</th><th>Frames</th>'
           '<th>Notes</th></tr>']
    for group in GROUP_TITLES:
        selected = [r for r in rows if r.group == group]
        if not selected:
            continue
        out.append(f'<tr class="group"><td colspan="6">{_esc(GROUP_TITLES[group])}</td></tr>')
        for r in selected:
            cls = "" if r.primary else ' class="secondary"'
            lost = r.not_beaten
            base = "<br>".join(f'<span class="base">{_esc(name)}: {_esc(format_value(v, r.unit))}</span>'
                               for name, v in r.baselines.items())
            if lost:
                base += f'<br><span class="lost">✗ does not beat {_esc(", ".join(lost))}</span>'
            out.append(f"<tr{cls}><td>{_esc(r.name)}{_arrow(r)}</td><td>{_esc(r.variant)}</td>"
                       f'<td class="num{" lost" if lost else ""}">{_esc(format_value(r.value, r.unit))}</td>'
                       f"<td>{base}</td>"
                       f'<td class="num">{r.frames or ""}</td><td class="note">{_esc(r.note)}</td></tr>')
    out.append("</table>")
    return "\n".join(out)


def _samples(result: EvalResult) -> str:
    if not result.samples:
        return "<p class=sub>No sample frames (no frame had both a prediction and ground truth).</p>"
    parts = []
    rows = (("input", "pred_depth", "gt_depth", "depth_error"), ("input", "pred_instances", "gt_instances"))
    for sample in result.samples:
        parts.append(f'<div class="sample"><h3>t = {sample.t_s:.2f} s '
                     f'<span class="sub">(stamp {sample.stamp_ns})</span></h3>')
        for names in rows:
            figures = [f'<figure><img src="{_png(sample.images[n])}" alt="{_esc(n)}">'
                       f'<figcaption>{_esc(sample.captions.get(n, n))}</figcaption></figure>'
                       for n in names if n in sample.images]
            if len(figures) > 1:
                parts.append(f'<div class="row">{"".join(figures)}</div>')
        if sample.legend:
            parts.append('<ul class="legend">' + "".join(f"<li>{_esc(x)}</li>" for x in sample.legend) + "</ul>")
        parts.append("</div>")
    return "\n".join(parts)


def _provenance(result: EvalResult) -> str:
    p = result.provenance
    rows = []
    for m in p.get("models", []):
        weights = m.get("weights") or "?"
        flag = ' <b style="color:#b42318">RANDOM-INIT</b>' if weights == "random-init" else ""
        extra = ", ".join(f"{k} {m[k]}" for k in ("device", "is_metric", "scale_source", "pose_method",
                                                   "window_size") if m.get(k) is not None)
        rows.append((f"{m.get('task', '?')} model", f"{_esc(m.get('model'))} · weights {_esc(weights)}{flag}"
                     + (f' <span class="sub">({_esc(extra)})</span>' if extra else "")))
        if m.get("parameters"):  # the node's configured parameters, from the replay's report
            rows.append((f"{m.get('task', '?')} parameters", '<span class="sub">' + _esc(", ".join(
                f"{k}={v}" for k, v in sorted(m["parameters"].items()))) + "</span>"))
    for key, label in (("input_bag", "input bag"), ("output_bag", "output bag"), ("ground_truth", "ground truth"),
                       ("bag_start", "recorded"), ("bag_duration_s", "duration (s)"),
                       ("evaluated_at", "evaluated")):
        if p.get(key) is not None:
            value = p[key]
            rows.append((label, _esc(f"{value:.2f}" if isinstance(value, float) else value)))
    if p.get("config"):
        rows.append(("settings", _esc(", ".join(f"{k}={v}" for k, v in p["config"].items()))))
    return '<table class="kv">' + "".join(f"<tr><td>{k}</td><td>{v}</td></tr>" for k, v in rows) + "</table>"


def _baselines_section(result: EvalResult) -> str:
    groups = result.details.get("baselines") or {}
    if not groups:
        return ""
    items = "".join(f"<li><b>{_esc(name)}</b> ({_esc(GROUP_TITLES.get(group, group).lower())}): {_esc(text)}</li>"
                    for group, named in groups.items() for name, text in named.items())
    return ("<h3>Baselines</h3>"
            '<p class="sub">Trivial estimators scored on the same frames and pixels, aligned exactly as the model '
            "(the alignment is the only ground truth they see; they never see the model's output). A metric "
            "beats its baselines when it is strictly better than each of them; a model that does not beat them "
            "has not shown that it measures anything on this data.</p>"
            f'<ul class="notes">{items}</ul>')


def render_html(result: EvalResult, title: str = "perception_fm evaluation") -> str:
    p = result.provenance
    banner = ""
    if p.get("random_init"):
        names = ", ".join(f"{m.get('model')}" for m in p.get("models", []) if m.get("weights") == "random-init")
        banner = ('<div class="banner">RANDOM-INIT WEIGHTS: these numbers measure an untrained network '
                  f"({_esc(names)})<small>The replay ran with random weights (plumbing check). Do not read "
                  "anything about model quality into this report.</small></div>")
    plots = [_series_plot(result, "depth", "Depth AbsRel per frame", "AbsRel"),
             _series_plot(result, "segmentation", "Mask IoU per frame (mean over ground-truth instances)", "IoU"),
             _series_plot(result, "trajectory", "Absolute trajectory error per frame", "ATE (m)"),
             _trajectory_plot(result)]
    plots_html = "".join(f'<div class="plot"><img src="{src}" alt="plot"></div>' for src in plots if src)
    notes = [f"<li><b>skipped:</b> {_esc(s)}</li>" for s in result.skipped]
    notes += [f"<li>{_esc(w)}</li>" for w in result.warnings]
    lost = [r for r in result.rows if r.primary and r.not_beaten]
    lost_box = ""
    if lost:
        items = "".join(f"<li>{_esc(GROUP_TITLES.get(r.group, r.group))} {_esc(r.name)}"
                        f"{(' · ' + _esc(r.variant)) if r.variant else ''}: "
                        f"{_esc(format_value(r.value, r.unit))}, not better than {_esc(', '.join(r.not_beaten))} "
                        f"({_esc('; '.join(f'{n} {format_value(r.baselines[n], r.unit)}' for n in r.not_beaten))})"
                        "</li>" for r in lost)
        lost_box = (f'<div class="warnbox"><b>The model does not beat a trivial baseline on {len(lost)} headline '
                    f"metric(s):</b><ul>{items}</ul></div>")
    depth_modes = (result.details.get("depth") or {}).get("mode_descriptions", {})
    mode_text = "; ".join(f"<code>{_esc(k)}</code>: {_esc(v)}" for k, v in depth_modes.items())
    sections = [
        f"<h1>{_esc(title)}</h1>",
        f'<div class="sub">{_esc(p.get("output_bag", ""))} · evaluated {_esc(p.get("evaluated_at", ""))}</div>',
        banner,
        lost_box,
        _cards(result),
        "<h2>Metrics</h2>",
        '<p class="sub">Rows in black are the headline numbers for how the model reported its output '
        "(metric or relative); grey rows are other alignments or breakdowns. ↓ lower is better, ↑ higher. "
        "Beside every metric: what trivial baselines score on the same frames with the same alignment "
        '(see "Baselines" below); <span class="lost">✗ does not beat</span> marks a metric on which the model is '
        "not strictly better than every baseline.</p>",
        (_depth_table(result) + _metric_table(result.rows)) if result.rows
        else "<p>No metric could be computed.</p>",
        _baselines_section(result),
    ]
    if notes:
        sections += ["<h2>Notes</h2>", f'<ul class="notes">{"".join(notes)}</ul>']
    if plots_html:
        sections += ["<h2>Per-frame plots</h2>", f'<div class="plots">{plots_html}</div>']
    sections += ["<h2>Sample frames</h2>", _samples(result), "<h2>Provenance</h2>", _provenance(result)]
    sections.append(
        "<footer>Depth: AbsRel, SqRel, RMSE, RMSE log and δ thresholds over pixels valid in both maps, mean over "
        f"frames. Alignments: {mode_text or 'n/a'}. Depth F-score: back-projected points within the threshold "
        "(precision, recall), DA3's definition per frame. Trajectory: ATE/RPE after Umeyama alignment on positions "
        "(evo conventions); pose AUC@τ: DA3/VGGT relative pose accuracy over all view pairs. Segmentation: "
        "Hungarian matching on concept-gated mask IoU; tracking: HOTA (mean over "
        "α 0.05…0.95) and IDF1 with TrackEval's conventions. Baselines: perception_fm.eval.baselines. Generated by "
        "perception_fm.eval.</footer>")
    body = "\n".join(s for s in sections if s)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{_esc(title)}</title><style>{CSS}</style></head>\n<body><main>\n{body}\n</main></body></html>\n")


def write_report(result: EvalResult, path: str | Path, title: str = "perception_fm evaluation") -> Path:
    path = Path(path)
    if path.parent and not path.parent.exists():
        path.parent.mkdir(parents=True)
    path.write_text(render_html(result, title), encoding="utf-8")
    return path


def write_json(result: EvalResult, path: str | Path) -> Path:
    path = Path(path)
    if path.parent and not path.parent.exists():
        path.parent.mkdir(parents=True)
    path.write_text(json.dumps(result.to_dict(), indent=2, allow_nan=False, ensure_ascii=False), encoding="utf-8")
    return path


__all__ = ["render_html", "write_json", "write_report"]
