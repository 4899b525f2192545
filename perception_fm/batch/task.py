"""One bag's work, the same whether it runs in this process (`--workers 1`) or as a Ray task: replay the bag
through the graph (perception_fm.replay), evaluate the output (perception_fm.eval), write the bag's HTML report,
and last, atomically, its metrics.json — the mark that the bag is complete (perception_fm.batch.jobs.completed).
Errors propagate (the engine reports them); nothing here catches them, so a Ray task fails like a serial call."""
from __future__ import annotations

import json
import time
from pathlib import Path

from perception_fm.batch.jobs import GRAPH_FILE, OUTPUT_BAG, REPORT_FILE, BagJob, write_atomic


class BagFailed(RuntimeError):
    """A bag that cannot be evaluated (damaged input, nothing to evaluate); the message says why."""


def run_bag(job: BagJob) -> dict:
    import torch

    from perception_fm.errors import PerceptionFmError
    from perception_fm.eval.report import write_report
    from perception_fm.eval.runner import evaluate
    from perception_fm.graph import load_graph
    from perception_fm.replay.runner import replay

    # The same thread count whatever the number of workers: float sums split over other thread counts round
    # differently, and a batch must give the same numbers serially and on N workers.
    torch.set_num_threads(job.threads)
    result_dir = Path(job.result_dir)
    result_dir.mkdir(parents=True, exist_ok=True)
    graph_file = result_dir / GRAPH_FILE  # the config this result was computed with, kept beside it
    write_atomic(graph_file, job.graph_yaml)
    graph = load_graph(graph_file)
    for node in graph.nodes:
        if job.random_weights:
            node.parameters["random_weights"] = True
        if job.device:
            node.parameters["device"] = job.device
    started = time.perf_counter()
    out_bag = result_dir / OUTPUT_BAG
    try:
        report = replay(job.input_bag, graph, out_bag, progress=False, overwrite=True)
    except PerceptionFmError as error:
        raise BagFailed(f"replay: {error}") from None
    if report.bag_error:  # the output holds only what came before the damage: not a whole result
        raise BagFailed(f"replay: damaged input: {report.bag_error}")
    replayed = time.perf_counter()
    try:
        result = evaluate(out_bag, None, job.eval_config)
    except PerceptionFmError as error:
        raise BagFailed(f"eval: {error}") from None
    write_report(result, result_dir / REPORT_FILE, title=f"perception_fm evaluation: {job.name}")
    frames = max((node.get("processed", 0) for node in report.nodes), default=0)
    record = {
        "bag": job.name, "sequence": job.sequence, "input_bag": job.input_bag, "fingerprint": job.fingerprint,
        "frames": frames, "replay_wall_s": round(replayed - started, 3),
        "eval_wall_s": round(time.perf_counter() - replayed, 3), "report": REPORT_FILE, "output_bag": OUTPUT_BAG,
        "result": result.to_dict(),
    }
    write_atomic(job.metrics_path, json.dumps(record, indent=1, allow_nan=False))
    return record
