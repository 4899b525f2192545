"""Offline evaluation of a replay's output bag against ground truth: depth (perception_fm.eval.depth),
trajectory (perception_fm.eval.trajectory), segmentation and tracking (perception_fm.eval.segmentation),
the bag runner (perception_fm.eval.runner.evaluate), the HTML/JSON report (perception_fm.eval.report) and the
command line (perception_fm.eval.cli.main)."""
from __future__ import annotations

__all__ = ["EvalConfig", "EvalError", "EvalResult", "evaluate", "write_json", "write_report"]


def __getattr__(name):  # lazy: importing the package costs nothing until something is used
    if name in ("EvalConfig", "EvalError", "EvalResult", "evaluate"):
        from perception_fm.eval import runner

        return getattr(runner, name)
    if name in ("write_json", "write_report"):
        from perception_fm.eval import report

        return getattr(report, name)
    raise AttributeError(name)
