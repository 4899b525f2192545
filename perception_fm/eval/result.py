"""What the evaluator returns: metric rows (each with its baselines), per-frame series, sample images and aligned
trajectories for the report (EvalResult), and the text table the CLI prints."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from perception_fm.eval import baselines as baseline_eval


@dataclass
class MetricRow:
    group: str  # "depth" | "trajectory" | "segmentation" | "tracking"
    name: str
    value: float
    variant: str = ""  # alignment or sub-set, e.g. "scale/frame", "Sim(3)", "red ball"
    unit: str = ""
    frames: int = 0
    primary: bool = True
    lower_is_better: bool | None = None
    note: str = ""
    baselines: dict[str, float] = field(default_factory=dict)  # baseline name -> its value of this metric

    @property
    def not_beaten(self) -> list[str] | None:
        """Baselines this value does not strictly beat ([] = beats them all; None = nothing to compare)."""
        return baseline_eval.not_beaten(self.value, self.baselines, self.lower_is_better)

    @property
    def beats_baselines(self) -> bool | None:
        lost = self.not_beaten
        return None if lost is None else not lost

    def to_dict(self) -> dict:
        out = {k: _finite_or_none(v) for k, v in self.__dict__.items() if k != "baselines"}
        out["baselines"] = {name: _finite_or_none(v) for name, v in self.baselines.items()}
        out["beats_baselines"] = self.beats_baselines
        return out


def _finite_or_none(v):
    return None if isinstance(v, float) and not math.isfinite(v) else v


@dataclass
class Series:
    key: str
    label: str
    unit: str
    t_s: np.ndarray  # seconds since the first stamp
    values: np.ndarray
    group: str

    def to_dict(self) -> dict:
        return {"key": self.key, "label": self.label, "unit": self.unit, "group": self.group,
                "t_s": [round(float(t), 6) for t in self.t_s], "values": [_finite(v) for v in self.values]}


@dataclass
class Sample:
    stamp_ns: int
    t_s: float
    images: dict[str, np.ndarray] = field(default_factory=dict)  # name -> (H, W, 3) uint8
    captions: dict[str, str] = field(default_factory=dict)
    legend: list[str] = field(default_factory=list)


@dataclass
class TrajectoryView:
    label: str  # "SE(3)" / "Sim(3)"
    gt_xyz: np.ndarray  # (M, 3)
    est_xyz: np.ndarray  # (M, 3) aligned estimate
    t_s: np.ndarray
    ate: np.ndarray
    baselines: dict[str, np.ndarray] = field(default_factory=dict)  # name -> (M, 3) aligned baseline positions


@dataclass
class EvalResult:
    rows: list[MetricRow] = field(default_factory=list)
    series: list[Series] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)
    trajectories: list[TrajectoryView] = field(default_factory=list)
    provenance: dict = field(default_factory=dict)
    details: dict = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def row(self, group: str, name: str, variant: str | None = None) -> MetricRow | None:
        for row in self.rows:
            if row.group == group and row.name == name and (variant is None or row.variant == variant):
                return row
        return None

    def to_dict(self) -> dict:
        return {"provenance": self.provenance, "metrics": [r.to_dict() for r in self.rows],
                "skipped": self.skipped, "warnings": self.warnings, "details": _jsonable(self.details),
                "series": [s.to_dict() for s in self.series]}

    def depth_matrix(self) -> list[tuple[str, bool, int, list[MetricRow]]]:
        """Depth rows as (alignment, primary, frames, rows in METRICS order), primary alignment first."""
        out: dict[str, list[MetricRow]] = {}
        for row in self.rows:
            if row.group == "depth":
                out.setdefault(row.variant, []).append(row)
        return [(mode, rows[0].primary, rows[0].frames, rows) for mode, rows in out.items()]

    def table(self) -> str:
        """The metric table as aligned text (what the CLI prints); * marks the headline rows."""
        blocks = []
        matrix = self.depth_matrix()
        if matrix:
            header = ["DEPTH ALIGNMENT"] + [r.name + (f" ({r.unit})" if r.unit == "m" else "") for r in matrix[0][3]] \
                + ["FRAMES"]
            lines = []
            for mode, primary, frames, rows in matrix:
                lines.append([mode + (" *" if primary else "")] + [
                    format_value(r.value, "%" if r.unit == "%" else "") + ("" if r.beats_baselines is not False
                                                                           else " !") for r in rows] + [str(frames)])
                for name in rows[0].baselines:
                    lines.append([f"  {name}"] + [format_value(r.baselines.get(name, float("nan")),
                                                               "%" if r.unit == "%" else "") for r in rows] + [""])
            blocks.append(_aligned([header] + lines, left=1))
        others = [r for r in self.rows if r.group != "depth"]
        if others:
            lines = [[r.group.upper(), r.name + (" *" if r.primary else ""), r.variant,
                      format_value(r.value, r.unit) + ("" if r.beats_baselines is not False else " !"),
                      str(r.frames) if r.frames else "",
                      ", ".join(f"{name} {format_value(v, r.unit)}" for name, v in r.baselines.items())]
                     for r in others]
            blocks.append(_aligned([["GROUP", "METRIC", "VARIANT", "VALUE", "FRAMES", "BASELINES"]] + lines,
                                   left=3))
        if any(r.beats_baselines is False for r in self.rows):
            blocks.append("! = does not beat every baseline (perception_fm.eval.baselines) on this metric")
        return "\n\n".join(blocks)


def _aligned(rows: list[list[str]], left: int) -> str:
    """Columns padded to their widest cell; the first `left` columns left-aligned, the rest right-aligned."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) if i < left else cell.rjust(w)
                               for i, (cell, w) in enumerate(zip(row, widths))).rstrip() for row in rows)


def format_value(value: float, unit: str = "") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    if unit == "%":
        return f"{100 * value:.1f} %"
    if unit == "count":
        return f"{int(round(value))}"
    text = f"{value:.4f}" if abs(value) < 1000 else f"{value:.1f}"
    return f"{text} {unit}".rstrip()


def _finite(v):
    v = float(v)
    return v if math.isfinite(v) else None


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, (np.floating, float)):
        return _finite(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    return obj
