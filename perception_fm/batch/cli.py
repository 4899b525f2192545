"""perception-fm batch CONFIG.yaml --bags DIR_OR_GLOB --out RESULTS_DIR [--address ray://HOST:10001] [--workers N]:
replay and evaluate every bag, in parallel on Ray, resumably; one summary over all of them."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from perception_fm.eval.cli import add_eval_arguments, eval_config_from_args


def build_parser(prog: str = "perception-fm batch") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, description=__doc__.split("\n\n")[0],
        epilog="Results: RESULTS_DIR/bags/NAME/{out (the output bag), report.html, metrics.json} per bag, and "
               "RESULTS_DIR/{index.html, summary.json, summary.csv, sequences.csv}. A bag whose metrics.json was "
               "computed from the same bag, config and settings is skipped on a re-run; a failed bag is run again. "
               "Exit status 0 when every bag was evaluated, 1 when some failed (the summary lists them).")
    parser.add_argument("config", metavar="CONFIG", help="graph config (as for perception-fm replay)")
    parser.add_argument("--bags", required=True, metavar="DIR_OR_GLOB",
                        help="a directory searched recursively for bags, or a glob (quote it), e.g. 'runs/**/*.mcap'")
    parser.add_argument("--out", required=True, metavar="RESULTS_DIR", help="results directory (created)")
    parser.add_argument("--address", metavar="ADDRESS",
                        help="a running Ray cluster: ray://HOST:10001 (Ray Client) or auto; default: start a local "
                             "one. Bags and RESULTS_DIR must be at the same paths on every node (shared storage)")
    parser.add_argument("--workers", type=int, metavar="N",
                        help="bags at once on the local cluster (default: the machine's cores); 1: no Ray at all")
    parser.add_argument("--threads-per-bag", type=int, default=1, metavar="T",
                        help="torch threads per bag, and the CPUs each Ray task takes (default 1). The numbers are "
                             "identical for any --workers at the same T; another T rounds float sums differently")
    parser.add_argument("--random-weights", action="store_true",
                        help="run every model with random weights (plumbing checks without weights)")
    parser.add_argument("--device", help="override every node's device parameter")
    add_eval_arguments(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.workers is not None and args.workers < 1:
        parser.error("--workers must be >= 1")
    if args.address and args.workers == 1:
        parser.error("--workers 1 runs without Ray; leave out --address")
    if args.threads_per_bag < 1:
        parser.error("--threads-per-bag must be >= 1")
    eval_config = eval_config_from_args(args, parser)
    from perception_fm.batch.engine import Progress, run_jobs
    from perception_fm.batch.jobs import BatchError, plan
    from perception_fm.batch.summary import INDEX_HTML, summarise, write_summary
    from perception_fm.batch.task import run_bag

    results = Path(args.out)
    try:  # planned (bags found, config and --out checked) before the results directory is created
        jobs = plan(args.bags, results, Path(args.config), eval_config, random_weights=args.random_weights,
                    device=args.device or "", threads=args.threads_per_bag)
        results.mkdir(parents=True, exist_ok=True)
    except (BatchError, ValueError, OSError) as error:
        print(f"perception-fm batch: error: {error}", file=sys.stderr)
        return 2
    print(f"batch: {len(jobs)} bag(s), {sum(j.expected_frames for j in jobs)} frames; "
          + ("serial, no Ray" if args.workers == 1 else f"Ray {args.address or 'local'}"), file=sys.stderr)
    outcomes = run_jobs(jobs, run_bag, workers=args.workers, address=args.address, on_outcome=Progress(jobs))
    summary = summarise(outcomes)
    paths = write_summary(summary, results)
    failed = summary["failed"]
    print(f"batch: {len(outcomes) - len(failed)}/{len(outcomes)} bag(s) evaluated; wrote {paths[INDEX_HTML]}",
          file=sys.stderr)
    for entry in failed:
        print(f"batch: failed: {entry['bag']}: {entry['error']}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
