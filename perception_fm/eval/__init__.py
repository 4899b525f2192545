"""Offline evaluation of a replay's output bag against ground truth. Where things are:

- reading the bags, grouping messages into frames: perception_fm.eval.reading (entry point runner.evaluate);
- settings and topics: perception_fm.eval.config; the result and its text table: perception_fm.eval.result;
- each metric family: depth (depth), depth F-score (depth_fscore), trajectory ATE/RPE (trajectory), relative pose
  AUC (pose_auc), segmentation and tracking (segmentation), trivial baselines (baselines); their rows for a bag:
  perception_fm.eval.summary;
- drawing: the sample images (samples), the HTML/JSON report (report); the command line: perception_fm.eval.cli."""
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
