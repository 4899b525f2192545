"""Every node of a graph config in one process: one Python interpreter, one torch, one CUDA context (each
process that touches CUDA pays for its own context, hundreds of MB of device memory) and one DDS participant
per node as before.

    perception_fm_container CONFIG [--ros-args ...]       (launch files: ros2 run perception_fm perception_fm_container)
    perception-fm up CONFIG --one-process                 (runs this module as its one child)

Threading: the nodes share one MultiThreadedExecutor, whose threads run their subscription, timer and service
callbacks; each node keeps its own callback group (rclpy's default: mutually exclusive within a node), so one
node's callbacks never wait for another's. Model work stays on each node's own worker thread (node_base), so a
model that takes long to load or to run a frame holds only its own node's worker; torch releases the GIL in
its kernels, so the other nodes' callbacks and workers go on.

Stopping: SIGINT/SIGTERM are quiet from the first line (perception_fm.nodes.launcher.install_quiet_stop); once
the nodes exist, a signal sets a flag the spin loop sees within SPIN_POLL_S, every node goes through its own
stop handshake (destroy_node), then the context is shut down, as run_node does for one node. Exit status: 0,
2 for a bad config or parameter.
"""
from __future__ import annotations

if __name__ == "__main__":  # python -m: stop quietly on SIGINT/SIGTERM from here on, even while importing
    from perception_fm.nodes.launcher import install_quiet_stop

    install_quiet_stop()

import importlib
import inspect
import os
import signal
import sys
import tempfile
import threading

EXECUTOR_STOP_WAIT_S = 3.0  # how long callbacks in flight at a stop get to finish before the nodes go


def node_class(module_name: str):
    """The node class a node module defines (the class whose main() runs it): the one rclpy Node subclass
    defined in the module itself that names its task."""
    from rclpy.node import Node

    module = importlib.import_module(module_name)
    classes = [value for value in vars(module).values()
               if inspect.isclass(value) and issubclass(value, Node) and value.__module__ == module.__name__
               and hasattr(value, "task")]
    if len(classes) != 1:
        raise ValueError(f"{module_name} defines {len(classes)} node classes with a task; expected one")
    return classes[0]


def build_nodes(graph, params_file: str, context=None) -> list:
    """Instantiate every node of `graph` in this process, each with its own name, namespace, remappings and
    parameters (the arguments `up` gives each node process, as Node(cli_args=)). A node whose construction
    fails (ParameterError: logged as one line) destroys the nodes built before it, then the error is raised."""
    built = []
    try:
        for config in graph.nodes:
            cls = node_class(config.module)
            kwargs = {"cli_args": config.ros_arguments(params_file)}
            if context is not None:
                kwargs["context"] = context
            built.append(cls(**kwargs))
    except BaseException:
        for node in reversed(built):
            node.destroy_node()
        raise
    return built


def run_graph(graph, args: list[str] | None = None, num_threads: int | None = None) -> int:
    """Run every node of `graph` in this process until SIGINT/SIGTERM or the context ends; returns 0, or 2
    for a bad parameter. `args`: ROS arguments for rclpy.init (global: they apply to every node)."""
    import rclpy
    from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
    from rclpy.signals import SignalHandlerOptions

    from perception_fm.core.memory import tune_malloc
    from perception_fm.nodes.node_base import EXECUTOR_THREADS, SPIN_POLL_S, SWITCH_INTERVAL_S
    from perception_fm.nodes.params import ParameterError, remember_arguments

    tune_malloc()
    sys.setswitchinterval(SWITCH_INTERVAL_S)  # as run_node: models' workers win the GIL back quickly
    stop = threading.Event()
    previous = {number: signal.signal(number, lambda *_: stop.set()) for number in (signal.SIGINT, signal.SIGTERM)}
    nodes: list = []
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", prefix="perception_fm_params_", delete=False) as params:
        params.write(graph.ros_params_yaml())
    try:
        rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
        context = rclpy.get_default_context()
        remember_arguments(context, args)
        try:
            nodes = build_nodes(graph, params.name)
        except ParameterError:  # logged by params.declare as one line naming the node
            return 2
        # run_node's threads for each node (one for a lifecycle transition waiting on its model load, one for
        # the rest), so that no node's blocked callback can take a thread another node needs.
        threads = num_threads or len(nodes) * EXECUTOR_THREADS
        executor = MultiThreadedExecutor(num_threads=threads, context=context)
        for node in nodes:
            executor.add_node(node)
        names = ", ".join(node.get_fully_qualified_name() for node in nodes)
        nodes[0].get_logger().info(f"{len(nodes)} nodes in one process ({names}); executor threads: {threads}")
        try:
            while not stop.is_set() and rclpy.ok(context=context):
                executor.spin_once(timeout_sec=SPIN_POLL_S)
        except ExternalShutdownException:
            pass
        finally:
            _stop_executor(executor, nodes)
    finally:
        _destroy_all(nodes)
        rclpy.try_shutdown()
        os.unlink(params.name)
        for number, handler in previous.items():
            signal.signal(number, handler)
    if any(_worker_busy(node) for node in nodes):
        # A worker still inside torch (a model load or a long frame): interpreter finalisation would tear torch
        # down under it (SIGABRT). Every node is destroyed and the context is down: end here, as run_node does.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    return 0


def _stop_executor(executor, nodes: list) -> None:
    """The nodes out of the executor first (a lifecycle transition waiting for its worker sees that and gives
    up, as in run_node), then no new callbacks, and the ones in flight given EXECUTOR_STOP_WAIT_S to finish
    before the nodes are destroyed under them (rclpy would report "cannot use Destroyable" from the callback). A
    callback still running after that is left behind: its thread is not waited for."""
    for node in nodes:
        executor.remove_node(node)
    waiter = threading.Thread(target=executor.shutdown, kwargs={"timeout_sec": 0}, daemon=True,
                              name="executor_shutdown")
    waiter.start()
    waiter.join(EXECUTOR_STOP_WAIT_S)


def _destroy_all(nodes: list) -> None:
    """Every node's stop handshake, in parallel: each may wait a bounded time for its worker's frame in
    flight, and N nodes must not take N times that."""
    threads = [threading.Thread(target=node.destroy_node, name=f"destroy_{index}") for index, node in enumerate(nodes)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def _worker_busy(node) -> bool:
    busy = getattr(node, "worker_busy", None)
    return bool(busy()) if busy is not None else False


def main(argv: list[str] | None = None) -> int:
    """perception_fm_container CONFIG [--ros-args ...]: every node of the graph config in this process."""
    from perception_fm.nodes.launcher import install_quiet_stop

    install_quiet_stop()  # the pip console script comes here first: quiet stops during the heavy imports too
    import argparse

    from rclpy.utilities import remove_ros_args

    from perception_fm.graph import load_graph

    argv = sys.argv if argv is None else [sys.argv[0], *argv]
    parser = argparse.ArgumentParser(prog="perception_fm_container",
                                     description="Run every node of a graph config in one process "
                                                 "(one CUDA context, a multi-threaded executor).")
    parser.add_argument("config", help="graph config (YAML; see perception_fm.graph)")
    options = parser.parse_args(remove_ros_args(argv)[1:])
    try:
        graph = load_graph(options.config)
    except ValueError as error:
        print(f"perception_fm_container: error: {error}", file=sys.stderr)
        return 2
    return run_graph(graph, args=argv)


if __name__ == "__main__":
    raise SystemExit(main())
