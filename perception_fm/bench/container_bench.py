"""perception-fm bench container: one graph run two ways, every node in its own process (`perception-fm up`)
and every node in one process (`perception-fm up --one-process`, perception_fm.runtime.container):

- memory: once every node reports a loaded model, the sum over the graph's processes of RSS (what each
  process has resident; shared library pages count once per process) and of PSS (shared pages split between
  the processes that map them: the machine's real cost);
- node overhead per frame over DDS: depth_node's latency (image published -> depth/info received) minus the
  model's time, at a fixed input rate, while the other nodes work on the same images (perception_fm.bench.node's
  harness and definitions).

The graph: depth_node (da3-small, random weights, --process-res) and concept_node (a tiny SAM 3 checkpoint of
the real architecture, random weights: perception_fm.bench.sam3_tiny), plus --extra-depth-nodes more depth
nodes; on the CPU unless --device. Figures, not tests. On a GPU the one-process saving grows by a CUDA context
(hundreds of MB of device memory) per node beyond the first; this bench reports host memory only.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def graph_yaml(sam3_dir: str, process_res: int, device: str, extra_depth_nodes: int) -> str:
    depth = (f"{{model: da3-small, random_weights: true, process_res: {process_res}, device: {device}, "
             "input_qos: reliable, publish_stage_times: true}")
    lines = ["nodes:",
             "  depth_node:",
             "    remappings: {image: /bench/image}",
             f"    parameters: {depth}",
             "  concept_node:",
             "    remappings: {image: /bench/image}",
             f"    parameters: {{weights: \"{sam3_dir}\", device: {device}, input_qos: reliable, concepts: person}}"]
    for index in range(extra_depth_nodes):
        lines += [f"  depth_node_{index + 2}:", "    executable: depth_node", f"    namespace: extra{index + 2}",
                  "    remappings: {image: /bench/image}", f"    parameters: {depth}"]
    return "\n".join(lines) + "\n"


def _tree(pid: int) -> list[int]:
    """pid and all its descendants."""
    children = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                children.append(int(entry.name))
    return [pid] + [p for child in children for p in _tree(child)]


def _memory_kib(pid: int, key: str, source: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/{source}").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def graph_memory(root: int) -> dict:
    pids = _tree(root)
    rss = sum(_memory_kib(pid, "VmRSS", "status") for pid in pids)
    pss = sum(_memory_kib(pid, "Pss", "smaps_rollup") for pid in pids)
    return {"processes": len(pids), "rss_mib": round(rss / 1024, 1), "pss_mib": round(pss / 1024, 1)}


def measure(mode: str, config: str, node_names: list[str], rate: float, seconds: float, timeout: float) -> dict:
    from perception_fm.bench.common import sample_frames
    from perception_fm.bench.node_bench import _Harness

    command = [sys.executable, "-m", "perception_fm.cli", "up", config, "--no-budget"]
    if mode == "one-process":
        command.append("--one-process")
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    harness = _Harness(sample_frames(8), diagnostics=True, stage_times_topic="/depth_node/stage_times")
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with harness.lock:
                ready = [name for name in node_names
                         if any(status.startswith(name + ":") and values.get("memory_total_mib")
                                for status, values in harness.diagnostics.items())]
            if len(ready) == len(node_names):
                break
            if process.poll() is not None:
                raise RuntimeError(f"`{' '.join(command)}` ended with {process.returncode}")
            time.sleep(0.5)
        else:
            raise RuntimeError(f"not every node loaded its model within {timeout:.0f} s")
        if not harness.wait_ready(120):
            raise RuntimeError("depth_node produced no output within 120 s")
        memory = graph_memory(process.pid)  # `up` itself counted in both modes: the same supervisor either way
        result = harness.run(rate, seconds)
        memory_after = graph_memory(process.pid)
    finally:
        harness.close()
        process.send_signal(2)  # SIGINT, as a terminal's Ctrl-C
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return {"mode": mode, "memory_ready": memory, "memory_after_frames": memory_after,
            "overhead": result["overhead"], "overhead_excl_queue": result.get("overhead_excl_queue"),
            "latency": {"p50_ms": result["p50_ms"], "p95_ms": result["p95_ms"]},
            "processed": result["processed"], "sent": result["sent"], "stop_exit_code": process.returncode}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="perception-fm bench container", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--process-res", type=int, default=280)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--extra-depth-nodes", type=int, default=0)
    parser.add_argument("--rate", type=float, default=2.0, help="input rate, Hz")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--modes", default="per-node,one-process")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)

    from perception_fm.bench.sam3_tiny import save_tiny_checkpoint

    with tempfile.TemporaryDirectory(prefix="container_bench_") as work:
        sam3 = save_tiny_checkpoint(Path(work) / "sam3")
        config = Path(work) / "graph.yaml"
        config.write_text(graph_yaml(str(sam3), args.process_res, args.device, args.extra_depth_nodes))
        names = ["/depth_node", "/concept_node"] + [f"/extra{i + 2}/depth_node_{i + 2}"
                                                     for i in range(args.extra_depth_nodes)]
        results = []
        for mode in args.modes.split(","):
            result = measure(mode, str(config), names, args.rate, args.seconds, timeout=600)
            results.append(result)
            memory = result["memory_ready"]
            print(f"{mode:12s}: {memory['processes']} processes, RSS {memory['rss_mib']:.0f} MiB, PSS "
                  f"{memory['pss_mib']:.0f} MiB (after frames: RSS {result['memory_after_frames']['rss_mib']:.0f}); "
                  f"depth_node overhead p50 {result['overhead']['p50_ms']:.1f} ms, p95 "
                  f"{result['overhead']['p95_ms']:.1f} ms, without the slot wait p50 "
                  f"{(result['overhead_excl_queue'] or {}).get('p50_ms', float('nan')):.1f} ms "
                  f"({result['processed']}/{result['sent']} frames at "
                  f"{args.rate:g} Hz); stopped with exit {result['stop_exit_code']}", flush=True)
    summary = {"graph": f"depth_node (da3-small random, {args.process_res} px) + concept_node (tiny sam3)"
                        + (f" + {args.extra_depth_nodes} depth nodes" if args.extra_depth_nodes else ""),
               "device": args.device, "rate_hz": args.rate, "seconds": args.seconds,
               "load_average_1min": round(os.getloadavg()[0], 1), "results": results}
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
