"""How every node process starts: quiet stop handlers first, then the node's module.

A node's imports (rclpy, numpy, the message packages, later torch) take a noticeable time after the process
starts, and run_node installs its stop handlers only after them. A SIGINT in that time was Python's
KeyboardInterrupt, with a traceback from whatever module was importing; a SIGTERM killed the process by the
signal. Here both are handled before anything heavy is imported: a stop requested during start-up ends the
process at once with exit 0, as a node that was stopped after start-up does (nothing to clean up yet: no ROS
context, no node, no files of ours). Once run_node runs, its own handlers take over (and it puts these back
when it returns, for the interpreter's last moments).

Entry points: the executables CMakeLists.txt generates (`ros2 run perception_fm depth_node`, launch files)
call `launch("depth_node")`; `python -m perception_fm.nodes.depth_node` (what `perception-fm up` runs) comes
here from the first lines of the node's module. This module imports nothing heavy: keep it that way.

Not covered: a signal in the interpreter's own first milliseconds, before any Python code of ours runs, ends
the process like any other program's. A supervisor that must never lose a stop request that early can start
the node with SIGINT/SIGTERM blocked: `install_quiet_stop` unblocks them once its handlers are in place, so a
pending one is then handled quietly.
"""
from __future__ import annotations

import importlib
import os
import signal
import sys

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
NODES = ("depth_node", "concept_node", "speech_node", "object_mesh_node", "body_node")


def _stop_during_start_up(number, frame) -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # a closed or broken stream: nothing more to say anyway
            pass
    # os._exit, not SystemExit: an exception raised inside a half-done import may be caught or re-wrapped by
    # the importing module, and interpreter finalisation with half-imported C extensions can abort.
    os._exit(0)


def install_quiet_stop() -> None:
    """SIGINT/SIGTERM end the process quietly (exit 0) until run_node installs its own handlers; signals a
    supervisor blocked before starting us are unblocked here, so a pending one is handled now."""
    for number in STOP_SIGNALS:
        signal.signal(number, _stop_during_start_up)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)


def launch(node: str, args: list[str] | None = None) -> int:
    """Run node executable `node` (one of NODES): quiet stop handlers first, then its module and main()."""
    install_quiet_stop()
    if node not in NODES:
        print(f"perception_fm: unknown node {node!r}; known: {', '.join(NODES)}", file=sys.stderr)
        return 2
    module = importlib.import_module(f"perception_fm.nodes.{node}")
    return module.main(args)
