"""The GPU device check (scripts/device_check.sh -> perception-fm bench device) kept from rotting: its dry run (same
code path, CPU, tiny models) must produce every step's figures or an explicit reason, as JSON and markdown, and
time budgets must skip work rather than overrun. Budgets here are generous so that a loaded CI machine skips
nothing by time; the budget rules are tested with budgets no machine can meet (0 s, or under a step's own
estimate), which makes them deterministic."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from perception_fm.bench import device_bench, device_table

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.ros  # step 6 runs depth_node and concept_node over DDS


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("device-check")
    budgets = [f"--budget={step}=600" for step in device_table.STEPS]
    env = {**{k: v for k, v in os.environ.items() if k != "OUT"}, "PYTHON": sys.executable}
    completed = subprocess.run(["bash", "scripts/device_check.sh", "--dry-run", "--out", str(out),
                                "--total-budget", "3600", *budgets], cwd=REPO, env=env, capture_output=True,
                               text=True, timeout=1800)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    (result,) = out.glob("*-dry-run.json")
    return json.loads(result.read_text()), result.with_suffix(".md").read_text(), completed.stdout


def test_dry_run_reports_every_step(dry_run):
    results, _, _ = dry_run
    check = results["device_check"]
    assert check["dry_run"] is True and set(check["steps"]) == set(device_table.STEPS)
    for name, step in check["steps"].items():
        assert step["status"] in ("ok", "partial", "skipped"), f"{name}: {step['status']}: {step['reason']}"
        if step["status"] == "skipped":
            assert step["reason"], f"{name} skipped without a reason"
        else:
            assert step["figures"], f"{name} has no figures"
        for skip in step["skipped"]:
            assert skip["what"] and skip["reason"]
        assert step["wall_s"] <= step["budget_s"] + device_bench.REPORT_GRACE_S


def test_dry_run_figures_are_measurements(dry_run):
    steps = dry_run[0]["device_check"]["steps"]
    counts = steps["tests"]["figures"]["counts"]
    tests = steps["tests"]["figures"]["tests"]
    assert sum(counts.values()) == len(tests) > 0
    cuda_tests = [t for t in tests if t["test"].startswith("test_cuda_plugins")]
    assert cuda_tests and all(t["outcome"] == "skipped" and "CUDA" in t["message"] for t in cuda_tests)
    rows = steps["da3"]["figures"]["rows"]
    assert [r["views"] for r in rows] == list(device_bench.Plan.for_run(True).da3_views)
    for row in rows:
        assert row["ours"]["p50_ms"] > 0 and row["gflop_per_frame"] > 0 and row["tflops"] > 0
        assert "p50_ms" in row["upstream"] or row["upstream"]["error"]
    ours = steps["sam3"]["figures"]["ours"]
    assert {(r["concepts"], r["objects"]) for r in ours} >= {(1, 1), (2, 1), (1, 3)}
    assert all(r["frame_ms"] > 0 for r in ours)
    assert [r["concepts"] for r in steps["sam3"]["figures"]["reference"]] == [1, 2]
    assert steps["body"]["status"] == "skipped"  # SAM 3D Body runs only on CUDA
    assert [m["model"] for m in steps["together"]["figures"]["models"]] == ["da3-small", "sam3 (tiny)"]
    nodes = steps["nodes"]["figures"]["nodes"]
    assert [n["node"] for n in nodes] == ["depth_node", "concept_node"]
    for node in nodes:
        assert node["sweep"] and node["latency_at_rate"]["processed"] > 0


def test_markdown_has_a_row_for_every_step(dry_run):
    results, markdown, stdout = dry_run
    assert "DRY RUN" in markdown and markdown.split("\n", 1)[1] in stdout  # the table, also printed
    for title in device_table.STEP_TITLES.values():
        assert f"| {title}" in markdown
    assert "SAM 3D Body | skipped: " in markdown


def test_a_zero_budget_skips_the_step_without_starting_it(tmp_path):
    results = device_bench.run_check(["body", "nodes"], {**device_bench.DRY_BUDGETS, "nodes": 0}, 60.0, True,
                                     tmp_path, None)
    steps = results["device_check"]["steps"]
    assert steps["nodes"]["status"] == "skipped" and "0 s" in steps["nodes"]["reason"]
    assert steps["nodes"]["wall_s"] == 0.0
    assert steps["da3"]["status"] == "skipped" and "not selected" in steps["da3"]["reason"]
    assert steps["body"]["status"] == "skipped" and steps["body"]["reason"]
    assert (tmp_path / f"{next(tmp_path.glob('*.json')).stem}.md").exists()


def test_a_budget_below_the_steps_estimate_skips_instead_of_running(tmp_path):
    outcome = device_bench._launch_step("tests", 1.0, True, tmp_path)  # pytest is estimated at 5 s
    assert outcome.status == "skipped" and "time budget" in outcome.reason
    assert "counts" not in outcome.figures


def test_recorder_skips_what_does_not_fit_and_keeps_figures_on_disk(tmp_path):
    rec = device_bench.Recorder(tmp_path / "step.json", budget_s=10.0)
    rec.add("rows", {"x": 1})
    assert rec.fits(1.0, "small") and not rec.fits(60.0, "large")
    on_disk = json.loads((tmp_path / "step.json").read_text())
    assert on_disk["figures"]["rows"] == [{"x": 1}]
    assert on_disk["skipped"][0]["what"] == "large" and "needs ~60 s" in on_disk["skipped"][0]["reason"]


def test_cli_registers_the_device_suite():
    from perception_fm.cli import bench_suites

    assert "device" in bench_suites()
    completed = subprocess.run([sys.executable, "-m", "perception_fm.cli", "bench", "device", "--help"], cwd=REPO,
                               capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0 and "--dry-run" in completed.stdout
