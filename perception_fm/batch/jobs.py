"""Which bags a batch covers and where each one's results go.

A bag is a rosbag2 directory (it holds metadata.yaml), an .mcap file or a ROS 1 .bag file. `--bags` is a
directory (searched recursively; a bag directory is not searched further) or a glob (`**` allowed). Each bag
gets a result directory RESULTS_DIR/bags/NAME, NAME being its path relative to the search root with "/" as
"__" (unique, stable across runs, whatever order the bags finish in). Its sequence, for the per-sequence
aggregate, is the folder it lies in relative to the root (datasets keep one sequence per folder; a flat folder of
bags makes every bag its own sequence).
"""
from __future__ import annotations

import glob
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

BAG_SUFFIXES = (".mcap", ".bag")
METRICS_FILE = "metrics.json"  # written last and atomically: its presence means the bag is complete
ERROR_FILE = "error.json"
REPORT_FILE = "report.html"
OUTPUT_BAG = "out"
GRAPH_FILE = "graph.yaml"


class BatchError(ValueError):
    pass


@dataclass(frozen=True)
class BagJob:
    """Everything a worker needs for one bag (picklable; no open files)."""

    name: str
    sequence: str
    input_bag: str
    result_dir: str
    graph_yaml: str  # the graph config's text: a worker on another machine needs no copy of the file
    eval_config: object  # perception_fm.eval.config.EvalConfig
    random_weights: bool = False
    device: str = ""
    threads: int = 1  # torch threads for this bag (also the CPUs its Ray task asks for)
    fingerprint: str = ""
    expected_frames: int = 0  # image messages the graph will process (0: unknown); for progress only
    extra: dict = field(default_factory=dict, compare=False)

    @property
    def metrics_path(self) -> Path:
        return Path(self.result_dir) / METRICS_FILE


def is_bag(path: Path) -> bool:
    if path.is_dir():
        return (path / "metadata.yaml").is_file()
    return path.is_file() and path.suffix in BAG_SUFFIXES


def find_bags(spec: str, exclude: Path | None = None) -> tuple[Path, list[Path]]:
    """(search root, bags sorted by path) for a directory or a glob; BatchError when none is found."""
    path = Path(spec)
    exclude = exclude.resolve() if exclude is not None else None
    found: list[Path] = []
    if path.is_dir() and not is_bag(path):
        root = path
        for directory, subdirs, files in os.walk(path):
            here = Path(directory)
            if exclude is not None and here.resolve() == exclude:
                subdirs[:] = []
                continue
            for sub in list(subdirs):
                if is_bag(here / sub):
                    found.append(here / sub)
                    subdirs.remove(sub)  # a bag's own folder holds its files, not other bags
            found += [here / f for f in files if is_bag(here / f)]
            subdirs.sort()
    else:
        matches = [Path(m) for m in glob.glob(spec, recursive=True)] if not path.exists() else [path]
        found = [m for m in matches if is_bag(m)]
        root = Path(os.path.commonpath([str(m.parent) for m in found])) if found else path.parent
    if exclude is not None:
        found = [f for f in found if exclude not in f.resolve().parents]
    found = sorted(set(found))
    if not found:
        raise BatchError(f"no bag found in {spec!r} (a bag: a directory with metadata.yaml, an .mcap or a ROS 1 "
                         ".bag file)")
    return root, found


def bag_name(bag: Path, root: Path) -> str:
    relative = bag.relative_to(root) if bag != root else Path(bag.name)
    parts = list(relative.parts)
    parts[-1] = Path(parts[-1]).stem if Path(parts[-1]).suffix in BAG_SUFFIXES else parts[-1]
    return "__".join(parts)


def sequence_of(bag: Path, root: Path) -> str:
    parent = bag.parent.relative_to(root) if bag != root and root in bag.parents else Path(".")
    return str(parent) if str(parent) != "." else bag_name(bag, root)


def bag_identity(bag: Path) -> dict:
    """Path and size of the bag's files: a bag replaced by another (or re-recorded) is not taken as done."""
    files = sorted(p for p in bag.rglob("*") if p.is_file()) if bag.is_dir() else [bag]
    return {"path": str(bag.resolve()), "bytes": sum(p.stat().st_size for p in files)}


def fingerprint(graph_yaml: str, eval_config, random_weights: bool, device: str, threads: int, bag: Path) -> str:
    """What a bag's result depends on; a result with another fingerprint is recomputed. The thread count is part
    of it: float sums split over another number of threads round differently (~1e-9 relative, measured)."""
    document = {"graph": graph_yaml, "eval": repr(eval_config), "random_weights": random_weights,
                "device": device, "threads": threads, "bag": bag_identity(bag)}
    return hashlib.sha256(json.dumps(document, sort_keys=True).encode()).hexdigest()[:16]


def expected_frames(bag: Path, graph) -> int:
    """Image messages the graph's nodes will process (the largest over nodes); 0 when the bag cannot be read
    (it will fail in its task, with the error)."""
    from perception_fm.replay.bag_io import BagReader

    try:
        with BagReader(bag) as reader:
            topics = {node.topic(name) for node in graph.nodes for name in ("image", "image/compressed")}
            return max((reader.count(t) for t in topics if t in reader.topics), default=0)
    except Exception:  # noqa: BLE001 - any damage is the task's to report, with its message
        return 0


def plan(bags_spec: str, results_dir: Path, graph_path: Path, eval_config, *, random_weights: bool = False,
         device: str = "", threads: int = 1) -> list[BagJob]:
    from perception_fm.graph import load_graph

    if results_dir.exists() and not results_dir.is_dir():
        raise BatchError(f"--out {str(results_dir)!r} is a file; give a results directory")
    graph = load_graph(graph_path)  # checked here, once, before any task starts
    graph_yaml = Path(graph_path).read_text()
    root, bags = find_bags(bags_spec, exclude=results_dir)
    results = results_dir.resolve()
    for bag in bags:  # results written into an input bag's folder would mix with (and damage) the recording
        if bag.resolve() == results or bag.resolve() in results.parents:
            raise BatchError(f"--out {str(results_dir)!r} is inside the input bag {str(bag)!r}; give a results "
                             "directory outside it")
    jobs, names = [], {}
    for bag in bags:
        name = bag_name(bag, root)
        if name in names:
            raise BatchError(f"two bags map to the same result name {name!r}: {names[name]} and {bag}")
        names[name] = bag
        jobs.append(BagJob(
            name=name, sequence=sequence_of(bag, root), input_bag=str(bag),
            result_dir=str(results_dir / "bags" / name), graph_yaml=graph_yaml, eval_config=eval_config,
            random_weights=random_weights, device=device, threads=threads,
            fingerprint=fingerprint(graph_yaml, eval_config, random_weights, device, threads, bag),
            expected_frames=expected_frames(bag, graph)))
    return jobs


def completed(job: BagJob) -> dict | None:
    """The bag's stored result when it is complete and was computed from the same inputs, else None."""
    try:
        record = json.loads(job.metrics_path.read_text())
    except (OSError, ValueError):
        return None
    if record.get("fingerprint") != job.fingerprint or not (Path(job.result_dir) / OUTPUT_BAG).is_dir():
        return None
    return record


def write_atomic(path: Path, text: str) -> None:
    """Write to a temporary file beside `path` and rename it over: readers see the old file or the whole new one,
    never a part (a run killed mid-write leaves no half metrics file that a re-run would take as done)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
