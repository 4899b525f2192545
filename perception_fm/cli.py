"""perception-fm: the command line.

  perception-fm plugins                      installed models, their task, licence and what they miss
  perception-fm up CONFIG                    start a graph config's nodes (launch-free; robots: ros2 launch)
  perception-fm replay IN_BAG --config CONFIG --out OUT_BAG   offline, deterministic replay
  perception-fm eval OUT_BAG [--gt GT]       metrics against ground truth, HTML report
  perception-fm batch CONFIG --bags DIR --out RESULTS   replay + eval many bags (Ray), one summary
  perception-fm sample OUT_BAG               write the synthetic sample bag
  perception-fm import FORMAT SRC OUT_BAG    a dataset (tum, frames, images, video) into a bag with ground truth
  perception-fm bench SUITE                  benchmarks (codec, da3, sam3, node, container, rig, device, ...)
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile


def cmd_plugins(args) -> int:
    """Installed models: whether each can run here (modules, CUDA, weights present or how they come) and its
    full licence. Looks at the local hub cache only: no network call."""
    import shutil
    import textwrap

    from perception_fm.plugin_manager import cached_hub_repos, cuda_available, default_manager, weights_state

    if args.memory:
        return _print_memory(args)
    if args.config:  # was ignored: the plain listing does not read a graph
        raise ValueError("plugins --config needs --memory (the memory of that graph's models)")
    entries = default_manager().models(args.task)
    cached = cached_hub_repos()
    cuda = cuda_available() if any(e.spec.needs_cuda for e in entries) else None
    states = [weights_state(e.spec, cached) for e in entries]
    if args.json:
        print(json.dumps([{"task": str(e.spec.task), "name": e.spec.name, "plugin": e.plugin,
                           "license": e.spec.license, "weights": e.spec.default_weights,
                           "weights_state": w.state, "weights_detail": w.detail, "gated": e.spec.gated,
                           "needs_cuda": e.spec.needs_cuda, "status": e.status(w, cuda),
                           "summary": e.spec.summary, "missing": e.missing} for e, w in zip(entries, states)],
                         indent=2))
        return 0
    header = ("TASK", "MODEL", "STATUS", "WEIGHTS", "LICENSE")
    rows = [(str(e.spec.task), e.spec.name, e.status(w, cuda), w.label, e.spec.license)
            for e, w in zip(entries, states)]
    # Long cells wrap inside their column (licences are never cut: users must read them to pick a model).
    total = max(shutil.get_terminal_size((140, 24)).columns, 100)
    widths = [max(len(row[i]) for row in rows + [header]) for i in range(2)] + [30, 36]
    widths.append(max(total - sum(widths) - 2 * len(widths), 30))
    for row in [header] + rows:
        cells = [textwrap.wrap(cell, width, break_on_hyphens=False, break_long_words=False) or [""]
                 for cell, width in zip(row, widths)]
        for line in range(max(map(len, cells))):
            parts = [(cell[line] if line < len(cell) else "").ljust(width) for cell, width in zip(cells, widths)]
            print("  ".join(parts).rstrip())
    for entry, state in zip(entries, states):
        if state.state in ("gated", "unavailable"):
            print(f"{entry.spec.name}: {state.detail}")
    print("(--json: all of it, with plugin modules and summaries)")
    return 0


def _print_memory(args) -> int:
    """plugins --memory: each model's parameters and peak activations from its architecture (estimate_memory
    hook), at a graph config's node parameters (--config) or at each node type's defaults."""
    from perception_fm.graph import NODE_TYPES, Graph, NodeConfig, load_graph
    from perception_fm.plugin_manager import default_manager
    from perception_fm.runtime.budget import format_bytes, node_estimate
    from perception_fm.runtime.container import node_class

    if args.config:
        configs = load_graph(args.config).nodes
    else:
        executables = {str(node_class(node_type.module).task): name for name, node_type in NODE_TYPES.items()}
        configs = [NodeConfig(name=entry.spec.name.replace("-", "_").replace(".", "_"),
                              executable=executables[str(entry.spec.task)], parameters={"model": entry.spec.name})
                   for entry in default_manager().models(args.task) if str(entry.spec.task) in executables]
    rows = []
    for config in configs:
        entry = node_estimate(config)
        e = entry.estimate
        if e is None:
            rows.append((config.name if args.config else entry.model, entry.model, entry.device, "unknown", "", "",
                         "unknown", entry.error))
            continue
        rows.append((config.name if args.config else entry.model, entry.model, entry.device, f"{e.parameters:,}",
                     format_bytes(e.parameter_bytes + e.buffer_bytes), e.dtype, format_bytes(e.activation_bytes),
                     e.workload or e.note))
    header = ("NODE" if args.config else "MODEL", "MODEL", "DEVICE", "PARAMETERS", "WEIGHTS", "DTYPE",
              "ACTIVATIONS", "AT")
    if not args.config:
        header, rows = header[1:], [row[1:] for row in rows]
    widths = [max(len(str(row[i])) for row in rows + [header]) for i in range(len(header))]
    for row in [header] + rows:
        print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip())
    print("(computed from each architecture, no weights loaded; activations: peak of one forward pass)")
    return 0


def check_budget(graph, allow_over: bool) -> bool:
    """Print the graph's memory against its devices' (runtime.budget); False (after one line on stderr) when
    a device cannot hold it and `allow_over` is not set."""
    from perception_fm.runtime.budget import graph_budget

    budget = graph_budget(graph)
    print("memory budget (estimated from the architectures):")
    for line in budget.lines():
        print(line)
    if budget.over and not allow_over:
        print(f"perception-fm up: error: the graph does not fit in the memory of {', '.join(budget.over)} (see "
              "above); lower process_res/image_size/window_size or precision, or --allow-over-budget",
              file=sys.stderr)
        return False
    return True


def cmd_up(args) -> int:
    """Start every node of the graph config as its own process (one model per process), or all of them in one
    process (--one-process: perception_fm.runtime.container), after the memory budget check, and wait."""
    from perception_fm.graph import load_graph

    graph = load_graph(args.config)
    if not args.no_budget and not check_budget(graph, args.allow_over_budget):
        return 2
    if args.one_process:
        command = [sys.executable, "-m", "perception_fm.runtime.container", os.path.abspath(args.config)]
        if args.dry_run:
            print(" ".join(command))
            return 0
        return _run_nodes([command], ["perception_fm_container"], managed=_managed_nodes(graph))
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", prefix="perception_fm_params_", delete=False) as params:
        params.write(graph.ros_params_yaml())
    commands = [[sys.executable, "-m", node.module, *node.ros_arguments(params.name)] for node in graph.nodes]
    if args.dry_run:
        print(graph.ros_params_yaml())
        for command in commands:
            print(" ".join(command))
        os.unlink(params.name)
        return 0
    try:
        return _run_nodes(commands, [node.name for node in graph.nodes], managed=_managed_nodes(graph))
    finally:
        os.unlink(params.name)


NODE_STOP_TIMEOUT_S = 30.0  # a node not gone this long after SIGTERM is killed


def _managed_nodes(graph) -> list[str]:
    """The nodes `up` brings up itself (their config sets autostart false), fully qualified, in config order."""
    from perception_fm.nodes.lifecycle_manager import fully_qualified_name

    return [fully_qualified_name(node.name, node.namespace) for node in graph.nodes
            if not node.resolved_parameters()["autostart"]]


def _run_nodes(commands: list[list[str]], names: list[str], managed: list[str] = ()) -> int:
    """Run the node processes until they all end or SIGINT/SIGTERM arrives; then stop each by SIGTERM, kill the
    ones not gone after NODE_STOP_TIMEOUT_S. Returns 0 when every node ended cleanly (exit 0, or stopped by our
    SIGTERM), else the first failure's exit code (128 + signal for a node killed by a signal). The `managed`
    nodes (autostart false) are configured one at a time, then activated, over their lifecycle services
    (perception_fm.nodes.lifecycle_manager), on a thread of ours."""
    import threading
    import time

    stop = threading.Event()
    # Installed before the first child starts: from here on a signal is a stop request, never a traceback.
    for number in (signal.SIGINT, signal.SIGTERM):
        signal.signal(number, lambda *_: stop.set())
    processes: list[subprocess.Popen] = []
    for command in commands:
        if stop.is_set():
            break
        # Own session: a terminal's Ctrl-C reaches `up` alone, and each node is stopped once, by SIGTERM, which a
        # node still importing dies of quietly and a running node handles like SIGINT (node_base.run_node).
        processes.append(subprocess.Popen(command, start_new_session=True))
    manager = None
    if managed and not stop.is_set():
        from perception_fm.nodes.lifecycle_manager import bring_up

        manager = threading.Thread(target=bring_up, args=(list(managed), stop), name="lifecycle_manager",
                                   daemon=True)
        manager.start()
    while not stop.is_set() and any(process.poll() is None for process in processes):
        stop.wait(0.2)
    stop.set()  # every node may have ended on its own: the lifecycle manager stops waiting for them too
    if manager is not None:
        manager.join(timeout=NODE_STOP_TIMEOUT_S)  # it sees `stop` within CALL_POLL_S
    stopped = [process for process in processes if process.poll() is None]
    for process in stopped:
        process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + NODE_STOP_TIMEOUT_S
    killed = []
    for name, process in zip(names, processes):
        try:
            process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            print(f"perception-fm up: {name} did not stop within {NODE_STOP_TIMEOUT_S:.0f} s of SIGTERM; killing it",
                  file=sys.stderr)
            process.kill()
            process.wait()
            killed.append(process)
    codes = []
    for name, process in zip(names, processes):
        code = process.returncode
        if code == 0 or (process in stopped and process not in killed and code == -signal.SIGTERM):
            continue
        code = code if code > 0 else 128 - code
        print(f"perception-fm up: {name} exited with code {code}", file=sys.stderr)
        codes.append(code)
    return codes[0] if codes else 0


def cmd_replay(args) -> int:
    from perception_fm.graph import load_graph
    from perception_fm.replay.runner import REPORT_FILE, replay

    graph = load_graph(args.config)
    for node in graph.nodes:
        if args.random_weights:
            node.parameters["random_weights"] = True
        if args.device:
            node.parameters["device"] = args.device
    report = replay(args.bag, graph, args.out, progress=not args.quiet, overwrite=args.overwrite)
    for node in report.nodes:
        labels = " (RANDOM WEIGHTS: outputs are not meaningful)" if node["weights"] == "random-init" else ""
        print(f"{node['node']}: {node['model']} from {node['weights']}{labels} on {node['device']}: "
              f"{node['processed']}/{node['frames']} frames, {node['inference_ms']['mean']:.0f} ms/frame mean, "
              f"dropped {sum(node['dropped'].values())}")
    print(f"wrote {args.out} ({sum(report.outputs.values())} messages) and {os.path.join(args.out, REPORT_FILE)} "
          f"in {report.wall_s:.1f} s")
    # A damaged input (report.bag_error; the replay has said where, and that the output holds everything before
    # it) fails the run, like a missing or unreadable one: scripts must not take a partial output for a whole one.
    return 2 if report.bag_error else 0


def cmd_sample(args) -> int:
    from perception_fm.replay import synthetic

    argv = [args.out, "--frames", str(args.frames), "--width", str(args.width), "--height", str(args.height)]
    if args.force:
        argv.append("--force")
    # always passed on, so the sample's own checks refuse --rig 0 / -1 and a bad --baseline (they were dropped)
    argv += ["--rig", str(args.rig), "--baseline", str(args.baseline)]
    return synthetic.main(argv) or 0


def bench_suites() -> list[str]:
    """Benchmarks are the modules perception_fm/bench/<name>_bench.py."""
    import pkgutil

    import perception_fm.bench

    return sorted(m.name[:-6] for m in pkgutil.iter_modules(perception_fm.bench.__path__) if m.name.endswith("_bench"))


def cmd_bench(args) -> int:
    import importlib

    module = importlib.import_module(f"perception_fm.bench.{args.suite}_bench")
    return module.main(args.rest) or 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="perception-fm", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    plugins = sub.add_parser("plugins", help="list installed models")
    plugins.add_argument("--task", help="only this task (depth, segmentation, ...)")
    plugins.add_argument("--json", action="store_true")
    plugins.add_argument("--memory", action="store_true",
                         help="parameters and peak activations of each model, from its architecture")
    plugins.add_argument("--config", help="with --memory: the models of this graph config at its parameters")
    plugins.set_defaults(func=cmd_plugins)

    up = sub.add_parser("up", help="start the nodes of a graph config")
    up.add_argument("config")
    up.add_argument("--dry-run", action="store_true", help="print the commands and parameters only")
    up.add_argument("--one-process", action="store_true",
                    help="every node in one process (one CUDA context; perception_fm_container)")
    up.add_argument("--allow-over-budget", "--force", action="store_true",
                    help="start even if the estimated memory exceeds the device's")
    up.add_argument("--no-budget", action="store_true", help="skip the memory estimate (starts faster)")
    up.set_defaults(func=cmd_up)

    replay = sub.add_parser("replay", help="replay a bag through a graph config offline")
    replay.add_argument("bag")
    replay.add_argument("--config", required=True)
    replay.add_argument("--out", required=True, help="output bag directory (MCAP); must not exist unless "
                                                     "--overwrite")
    replay.add_argument("--overwrite", action="store_true",
                        help="replace an existing output (only once the new one is complete)")
    replay.add_argument("--random-weights", action="store_true",
                        help="run every model with random weights (plumbing checks without weights)")
    replay.add_argument("--device", help="override every node's device parameter")
    replay.add_argument("--quiet", action="store_true", help="no progress line")
    replay.set_defaults(func=cmd_replay)

    sample = sub.add_parser("sample", help="write the synthetic sample bag")
    sample.add_argument("out")
    sample.add_argument("--frames", type=int, default=48)
    sample.add_argument("--width", type=int, default=320)
    sample.add_argument("--height", type=int, default=240)
    sample.add_argument("--force", action="store_true")
    sample.add_argument("--rig", type=int, default=1, help="cameras: 1 = the single camera; 2-3 = a rig")
    sample.add_argument("--baseline", type=float, default=0.3, help="rig baseline (m) between cameras 0 and 1")
    sample.set_defaults(func=cmd_sample)

    sub.add_parser("eval", help="evaluate an output bag against ground truth (metrics + HTML report); "
                                "`perception-fm eval --help` for its options")
    sub.add_parser("batch", help="replay and evaluate many bags (in parallel on Ray), one summary; "
                                 "`perception-fm batch --help` for its options")

    from perception_fm.datasets.cli import add_import_parser

    add_import_parser(sub)  # perception-fm import FORMAT SRC OUT_BAG

    bench = sub.add_parser("bench", help="benchmarks (figures, not tests)")
    bench.add_argument("suite", choices=bench_suites())
    bench.add_argument("rest", nargs=argparse.REMAINDER, help="options of the suite (--help for its own)")
    bench.set_defaults(func=cmd_bench)
    return parser


def main(argv=None) -> int:
    from perception_fm.errors import PerceptionFmError

    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["eval"]:  # its own options (and --help) go to perception_fm.eval.cli untouched
        from perception_fm.eval.cli import main as eval_main

        return eval_main(argv[1:])
    if argv[:1] == ["batch"]:  # likewise perception_fm.batch.cli
        from perception_fm.batch.cli import main as batch_main

        return batch_main(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, PerceptionFmError) as error:
        print(f"perception-fm: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
