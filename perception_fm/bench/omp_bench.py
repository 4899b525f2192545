"""perception-fm bench omp: why every perception_fm process waits passively for OpenMP work.

Times DA3-Small's network (random weights, one view) in fresh processes with OMP_WAIT_POLICY=ACTIVE (OpenMP's
spinning default) and PASSIVE (what perception_fm/__init__.py sets unless the user chose), each on free cores
and with another process keeping one core busy — the normal case on a robot and in CI. Figures, not a test.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import subprocess
import sys

_CHILD = r"""
import json, sys, time
import torch
from perception_fm.plugins.da3 import build_network
res, repeats = int(sys.argv[1]), int(sys.argv[2])
torch.manual_seed(0)
net = build_network("da3-small").eval()
x = torch.rand(1, 1, 3, res * 3 // 4 // 14 * 14, res // 14 * 14)
times = []
with torch.inference_mode():
    net(x)  # warm-up
    for _ in range(repeats):
        started = time.perf_counter()
        net(x)
        times.append((time.perf_counter() - started) * 1e3)
print(json.dumps({"ms": sorted(times)[len(times) // 2], "threads": torch.get_num_threads()}))
"""


def _spin(stop) -> None:
    while not stop.is_set():
        pass


def time_network(policy: str, busy: bool, res: int, repeats: int) -> dict:
    env = dict(os.environ, OMP_WAIT_POLICY=policy)
    stop = multiprocessing.Event()
    competitor = multiprocessing.Process(target=_spin, args=(stop,), daemon=True) if busy else None
    if competitor:
        competitor.start()
    try:
        result = subprocess.run([sys.executable, "-c", _CHILD, str(res), str(repeats)], env=env, check=True,
                                capture_output=True, text=True, timeout=1800)
    finally:
        if competitor:
            stop.set()
            competitor.join()
    return json.loads(result.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="perception-fm bench omp", description=__doc__)
    parser.add_argument("--res", type=int, default=280, help="longest image side (multiple of 14)")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    print(f"DA3-Small network, 1 view at {args.res} px, median of {args.repeats} (fresh process each):")
    print(f"{'OMP_WAIT_POLICY':<16}{'cores':<22}{'ms/view':>10}")
    for busy in (False, True):
        for policy in ("ACTIVE", "PASSIVE"):
            result = time_network(policy, busy, args.res, args.repeats)
            cores = "one busy elsewhere" if busy else "free"
            print(f"{policy:<16}{cores:<22}{result['ms']:>10.0f}   ({result['threads']} threads)", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
