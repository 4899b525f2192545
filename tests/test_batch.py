"""perception-fm batch: bags found and named, each replayed and evaluated serially and on a local Ray cluster with
2 workers (identical numbers), a worker killed once is retried, a damaged bag fails alone, re-runs skip complete
bags, and the summary (JSON, CSV, HTML) covers every bag. One Ray run for the module (start-up is the cost)."""
from __future__ import annotations

import csv
import json
import os
import sys
from pathlib import Path

import pytest
import yaml

from perception_fm.batch.engine import run_jobs
from perception_fm.batch.jobs import METRICS_FILE, bag_name, completed, find_bags, plan, sequence_of
from perception_fm.batch.summary import summarise, write_summary
from perception_fm.batch.task import run_bag
from perception_fm.eval.config import EvalConfig
from perception_fm.replay.synthetic import SampleConfig, write_sample_bag

BAGS = {"seqA/b0": SampleConfig(width=64, height=48, frames=3, seed=1),
        "seqA/b1": SampleConfig(width=64, height=48, frames=4, seed=2),
        "seqB/b2": SampleConfig(width=64, height=48, frames=3, seed=3)}
BROKEN = "broken"  # an .mcap file that is no bag
CRASH_BAG = "seqA__b1"  # its first Ray task kills its own worker process


@pytest.fixture(scope="module")
def bags(tmp_path_factory):
    root = tmp_path_factory.mktemp("fleet")
    for name, config in BAGS.items():
        write_sample_bag(root / name, config)
    (root / f"{BROKEN}.mcap").write_bytes(b"\x89MCAP0\r\n" + bytes(range(256)) * 4)
    return root


@pytest.fixture(scope="module")
def graph_path(tmp_path_factory, da3_small_checkpoint):
    path = tmp_path_factory.mktemp("graph") / "graph.yaml"
    path.write_text(yaml.safe_dump({"nodes": {"depth_node": {
        "remappings": {"image": "/camera/color/image_raw", "camera_info": "/camera/color/camera_info"},
        "parameters": {"weights": str(da3_small_checkpoint), "process_res": 56, "window_size": 2,
                       "keyframe_every": 1, "anchor_frame": "odom"}}}}))
    return path


def make_jobs(bags, results, graph_path, **settings):
    return plan(str(bags), results, graph_path, EvalConfig(samples=1, **settings))


@pytest.fixture(scope="module")
def serial(tmp_path_factory, bags, graph_path):
    results = tmp_path_factory.mktemp("serial")
    jobs = make_jobs(bags, results, graph_path)
    outcomes = run_jobs(jobs, run_bag, workers=1)
    write_summary(summarise(outcomes), results)
    return results, jobs, outcomes


def crash_once(job):
    """run_bag, except that the first attempt at CRASH_BAG kills its worker process (as an OOM kill would)."""
    marker = Path(job.result_dir).parent.parent / f"crashed-{job.name}"
    if job.name == CRASH_BAG and not marker.exists():
        marker.write_text(str(os.getpid()))
        os._exit(1)
    return run_bag(job)


@pytest.fixture(scope="module")
def parallel(tmp_path_factory, bags, graph_path):
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import this test module
    results = tmp_path_factory.mktemp("parallel")
    jobs = make_jobs(bags, results, graph_path)
    outcomes = run_jobs(jobs, crash_once, workers=2)
    write_summary(summarise(outcomes), results)
    return results, jobs, outcomes


def by_name(outcomes):
    return {o.job.name: o for o in outcomes}


def test_bags_are_found_named_and_grouped_by_folder(bags, tmp_path):
    root, found = find_bags(str(bags))
    assert [bag_name(b, root) for b in found] == ["broken", "seqA__b0", "seqA__b1", "seqB__b2"]
    assert [sequence_of(b, root) for b in found] == ["broken", "seqA", "seqA", "seqB"]
    _, globbed = find_bags(str(bags / "seqA" / "*"))
    assert globbed == [bags / "seqA" / "b0", bags / "seqA" / "b1"]
    with pytest.raises(ValueError, match="no bag found"):
        find_bags(str(tmp_path))


def test_serial_run_evaluates_every_good_bag_and_reports_the_broken_one(serial):
    results, jobs, outcomes = serial
    outcome = by_name(outcomes)
    assert {name: o.status for name, o in outcome.items()} == {
        "broken": "failed", "seqA__b0": "done", "seqA__b1": "done", "seqB__b2": "done"}
    assert "damaged" in outcome["broken"].error and "broken.mcap" in outcome["broken"].error
    for name, config in (("seqA__b0", BAGS["seqA/b0"]), ("seqA__b1", BAGS["seqA/b1"])):
        record = json.loads((results / "bags" / name / METRICS_FILE).read_text())
        assert record["frames"] == config.frames
        names = {(m["group"], m["name"]) for m in record["result"]["metrics"]}
        assert {("depth", "AbsRel"), ("trajectory", "ATE RMSE")} <= names
        assert (results / "bags" / name / "report.html").is_file() and (results / "bags" / name / "out").is_dir()
    assert not (results / "bags" / "broken" / METRICS_FILE).exists()


def test_two_ray_workers_give_the_serial_numbers_after_a_worker_died(serial, parallel):
    serial_outcomes, parallel_outcomes = by_name(serial[2]), by_name(parallel[2])
    assert (parallel[0] / f"crashed-{CRASH_BAG}").is_file()  # the first attempt did die ...
    assert parallel_outcomes[CRASH_BAG].status == "done"  # ... and the retry finished the bag
    assert parallel_outcomes["broken"].status == "failed"
    assert "damaged" in parallel_outcomes["broken"].error
    for name in ("seqA__b0", "seqA__b1", "seqB__b2"):
        a, b = serial_outcomes[name].record["result"], parallel_outcomes[name].record["result"]
        assert a["metrics"] and a["metrics"] == b["metrics"], name  # every row, value and baseline, bit for bit
    s = json.loads((serial[0] / "summary.json").read_text())
    p = json.loads((parallel[0] / "summary.json").read_text())
    assert s["mean"] == p["mean"] and s["sequences"] == p["sequences"]
    assert [b["metrics"] for b in s["bags"]] == [b["metrics"] for b in p["bags"]]


def test_a_rerun_skips_complete_bags_and_redoes_failed_or_incomplete_ones(serial, bags, graph_path):
    results, _, _ = serial
    (results / "bags" / "seqB__b2" / METRICS_FILE).rename(results / "seqB__b2.metrics.bak")  # as if killed
    before = {n: (results / "bags" / n / METRICS_FILE).stat().st_mtime_ns for n in ("seqA__b0", "seqA__b1")}
    ran = []

    def counting(job):
        ran.append(job.name)
        return run_bag(job)

    try:
        outcomes = by_name(run_jobs(make_jobs(bags, results, graph_path), counting, workers=1))
        assert sorted(ran) == ["broken", "seqB__b2"]
        assert outcomes["seqA__b0"].status == outcomes["seqA__b1"].status == "skipped"
        assert outcomes["seqB__b2"].status == "done" and outcomes["broken"].status == "failed"
        assert before == {n: (results / "bags" / n / METRICS_FILE).stat().st_mtime_ns for n in before}
        # other settings: nothing is complete for them
        assert all(completed(job) is None for job in make_jobs(bags, results, graph_path, iou_threshold=0.3))
    finally:
        (results / "seqB__b2.metrics.bak").unlink(missing_ok=True)


def test_summary_has_a_row_per_bag_means_per_sequence_and_links_to_each_report(serial):
    results, _, _ = serial
    summary = json.loads((results / "summary.json").read_text())
    rows = {b["bag"]: b for b in summary["bags"]}
    key = "depth: AbsRel [scale/sequence]"
    assert key in summary["columns"]
    a, b = rows["seqA__b0"]["metrics"][key], rows["seqA__b1"]["metrics"][key]
    assert summary["sequences"]["seqA"]["mean"][key] == pytest.approx((a + b) / 2, rel=1e-12)
    assert summary["sequences"]["seqA"]["bags"] == 2
    everything = [rows[n]["metrics"][key] for n in ("seqA__b0", "seqA__b1", "seqB__b2")]
    assert summary["mean"]["metrics"][key] == pytest.approx(sum(everything) / 3, rel=1e-12)
    assert summary["failed"] == [{"bag": "broken", "input_bag": rows["broken"]["input_bag"],
                                  "error": rows["broken"]["error"]}]
    with open(results / "summary.csv") as f:
        table = list(csv.DictReader(f))
    assert [r["bag"] for r in table] == ["broken", "seqA__b0", "seqA__b1", "seqB__b2"]
    assert float(table[1][key]) == a and table[0]["status"] == "failed" and "damaged" in table[0]["error"]
    index = (results / "index.html").read_text()
    for name in ("seqA__b0", "seqA__b1", "seqB__b2"):
        assert f'href="bags/{name}/report.html"' in index
    assert "damaged" in index


def test_cli_rerun_of_a_complete_batch_skips_everything_and_exits_1_for_the_failed_bag(serial, bags, graph_path,
                                                                                         capsys):
    from perception_fm.cli import main

    results, _, _ = serial
    code = main(["batch", str(graph_path), "--bags", str(bags), "--out", str(results), "--workers", "1",
                 "--samples", "1"])
    err = capsys.readouterr().err
    assert code == 1
    assert err.count("already complete, skipped") == 3 and "[4/4]" in err and "FAILED" in err
    assert "frames/s" in err and "ETA" in err
