"""Test helpers: a node under test in its own process, and a probe node in the test process that publishes
inputs and records what comes back over DDS."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict

import rclpy
from rclpy.context import Context
from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import QoSProfile, ReliabilityPolicy, DurabilityPolicy, HistoryPolicy

RELIABLE = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST)
LATCHED = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL,
                     history=HistoryPolicy.KEEP_LAST)


def start_node(module: str, *ros_args: str, env: dict | None = None) -> subprocess.Popen:
    """`python -m module --ros-args ...` (or `python script.py --ros-args ...` when `module` ends in .py) in its
    own process (stdout/stderr to a temp log); `env` adds to this process's environment."""
    log = open(os.path.join(os.environ.get("PYTEST_TMP", "/tmp"), f"node_{os.getpid()}_{time.time_ns()}.log"), "w+")
    target = [module] if module.endswith(".py") else ["-m", module]
    process = subprocess.Popen([sys.executable, *target, "--ros-args", *ros_args], stdout=log,
                               stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
    process.log = log
    return process


def node_log(process: subprocess.Popen) -> str:
    """What the node has written so far."""
    if process.log.closed:
        return process.log_text
    process.log.flush()
    with open(process.log.name) as log:
        return log.read()


def stop_node(process: subprocess.Popen, sig: int = signal.SIGINT, timeout: float = 60.0) -> str:
    """Stop with `sig` (SIGINT as ros2 launch does) and return the node's log. A node that has not exited
    after `timeout` s is killed (process.returncode is then -9)."""
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    if process.log.closed:
        return process.log_text
    process.log.seek(0)
    process.log_text = process.log.read()
    process.log.close()
    return process.log_text


class Probe:
    """An rclpy node in its own context, spun in a background thread, recording messages per topic."""

    def __init__(self, name: str = "probe"):
        self.context = Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node(name, context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.messages: dict[str, list] = defaultdict(list)
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._running = True
        self._thread.start()

    def _spin(self):
        while self._running and self.context.ok():
            self.executor.spin_once(timeout_sec=0.05)

    def record(self, msg_type, topic: str, qos: QoSProfile = RELIABLE) -> None:
        def store(message, topic=topic):
            with self._lock:
                self.messages[topic].append(message)

        self.node.create_subscription(msg_type, topic, store, qos)

    def publisher(self, msg_type, topic: str, qos: QoSProfile = RELIABLE):
        return self.node.create_publisher(msg_type, topic, qos)

    def received(self, topic: str) -> list:
        with self._lock:
            return list(self.messages[topic])

    def wait_for(self, topic: str, predicate=lambda m: True, timeout: float = 60.0):
        """The first message on `topic` satisfying `predicate`, or AssertionError after `timeout` s."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for message in self.received(topic):
                if predicate(message):
                    return message
            time.sleep(0.02)
        raise AssertionError(f"nothing matching on {topic} within {timeout} s; got {len(self.received(topic))}")

    def wait_until(self, condition, timeout: float = 60.0, what: str = "condition"):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if condition():
                return
            time.sleep(0.02)
        raise AssertionError(f"{what} not met within {timeout} s")

    def close(self):
        """Stop spinning, and only then destroy the node and the context (never under a running spin)."""
        self._running = False
        self._thread.join(timeout=60)  # spin_once returns within 0.05 s; a loaded machine may take longer
        assert not self._thread.is_alive(), "the probe's spin thread did not stop"
        self.executor.remove_node(self.node)
        self.executor.shutdown(timeout_sec=0)
        self.node.destroy_node()
        rclpy.shutdown(context=self.context)


def diagnostics_values(probe: Probe, node_name: str) -> dict | None:
    """Latest diagnostic key/values published by `node_name` (None before the first)."""
    for message in reversed(probe.received("/diagnostics")):
        for status in message.status:
            if node_name in status.name:
                values = {kv.key: kv.value for kv in status.values}
                values["_level"] = int.from_bytes(status.level, "little") if isinstance(status.level, bytes) \
                    else int(status.level)
                values["_message"] = status.message
                return values
    return None
