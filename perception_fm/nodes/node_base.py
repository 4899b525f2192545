"""What every model node shares: parameters, model creation through the plugin manager, the latest-frame
slot and its worker thread, drop counting, and /diagnostics.

Threading: subscription callbacks only store messages (cheap, never blocking on the model); one worker
thread loads the model, then takes the newest frame, runs the model and publishes. A frame arriving while
the worker is busy replaces the waiting one, which is counted as dropped_stale.

Stopping (SIGINT or SIGTERM, at any moment): run_node stops spinning, then destroy_node closes the publish gate
(every publisher of the node publishes through it, so no publish can touch a handle being destroyed), tells the
worker to stop and waits a bounded time for it. A worker still inside a long model load is a daemon thread and
does not hold the process: the node exits 0 without a traceback.
"""
from __future__ import annotations

import os
import signal
import sys
import threading
import time
import traceback
from typing import Any, Callable, Mapping

import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import SetParametersResult
from rclpy.node import Node
from rclpy.publisher import Publisher
from std_srvs.srv import Trigger

from perception_fm.core.latest import LatestSlot
from perception_fm.core.memory import tune_malloc
from perception_fm.core.stats import NodeStats
from perception_fm.errors import BadInputError, PerceptionFmError
from perception_fm.hookspecs import ModelOptions, Task
from perception_fm.nodes.params import MODEL_PARAMS, Param, declare
from perception_fm.plugin_manager import default_manager

MODEL_PARAM_NAMES = {param.name for param in MODEL_PARAMS}
DROP_LOG_PERIOD_S = 5.0
WORKER_STOP_WAIT_S = 3.0  # how long destroy_node lets a frame in flight finish before it goes on without it
SPIN_POLL_S = 0.1  # the executor wakes this often to see a stop request (a Python signal handler runs only then)


def model_options(values: dict[str, Any], extra_names: tuple[str, ...] = ()) -> ModelOptions:
    """ModelOptions from node parameter values; `extra_names` are model-specific parameters passed on."""
    return ModelOptions(
        weights=values["weights"], device=values["device"], offline=values["offline"],
        random_weights=values["random_weights"],
        extra={"precision": values["precision"], **{name: values[name] for name in extra_names}},
    )


class _PublishGate:
    """Shared by the publishers of one node: once closed, publish() is a no-op, and closing waits for a publish
    in progress, so the worker can never publish on a handle destroy_node is destroying."""

    def __init__(self):
        self.lock = threading.Lock()
        self.closed = False

    def close(self) -> None:
        with self.lock:
            self.closed = True


class GatedPublisher(Publisher):
    """rclpy's Publisher whose publish() passes through the node's _PublishGate."""

    gate: _PublishGate | None = None

    def publish(self, msg) -> None:
        gate = self.gate
        if gate is None:
            super().publish(msg)
            return
        with gate.lock:
            if not gate.closed:
                super().publish(msg)


class _WorkerCall:
    """A function handed to the worker. Its caller can withdraw it until the worker has started it, so that a
    call answered "busy" never runs later (e.g. a prompt that would still take a track id)."""

    def __init__(self, function):
        self.function = function
        self.lock = threading.Lock()
        self.started = self.withdrawn = False
        self.done = threading.Event()
        self.result = None
        self.error: Exception | None = None

    def run(self) -> None:  # in the worker
        with self.lock:
            if self.withdrawn:
                return
            self.started = True
        try:
            self.result = self.function()
        except Exception as error:  # handed back to the caller
            self.error = error
        finally:
            self.done.set()

    def withdraw(self) -> bool:
        """True if withdrawn in time (it will never run); False if the worker has already started it."""
        with self.lock:
            self.withdrawn = not self.started
            return self.withdrawn


class ModelNode(Node):
    """Base class of the task nodes. Subclasses set `task`, `default_model`, `params` and implement
    `reconfigure(values)` (build whatever depends on parameters) and `process(item)`."""

    task: Task
    default_model: str
    params: tuple[Param, ...] = ()
    model_extra_params: tuple[str, ...] = ()  # parameters that are passed to the model and need a reload
    queue_size: int = 1  # items waiting for the worker; 1 = latest-frame policy (older ones dropped as stale)
    keyed_queue: bool = False  # items with the same `key` replace each other in the queue (one job per track)

    def __init__(self, node_name: str, **kwargs):
        self._publish_gate = _PublishGate()  # before Node.__init__, which creates publishers already
        super().__init__(node_name, **kwargs)
        self._param_table = {param.name: param for param in MODEL_PARAMS + self.params}
        self._param_table["model"] = self._model_param()
        self.values = declare(self, self._param_table.values(), cli_args=kwargs.get("cli_args") or (),
                              addressed=[p.name for p in kwargs.get("parameter_overrides") or ()])
        self.stats = NodeStats()
        self.model = None
        self.model_error: str | None = None
        self._slot: LatestSlot = LatestSlot(self.queue_size, keyed=self.keyed_queue)
        self._drop_logged: dict[str, float] = {}
        self._calls: list[_WorkerCall] = []
        self._calls_lock = threading.Lock()
        self._reported_drops: dict[str, int] = {}
        # extra counted rejections on /diagnostics (e.g. TF): prefix -> (source of counts by reason, what they are)
        self._counter_sources: dict[str, tuple[Callable[[], Mapping[str, int]], str]] = {}
        self._reported_counters: dict[str, int] = {}
        self._reload = threading.Event()
        self._reload.set()  # the worker's first turn loads the model
        self._reconfigure = threading.Event()
        self._stop = threading.Event()
        self.add_on_set_parameters_callback(self._check_parameters)
        self.add_post_set_parameters_callback(self._parameters_changed)
        self.create_service(Trigger, "~/reload_model", self._reload_service)
        self._diagnostics = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.create_timer(1.0, self._publish_diagnostics)
        self._worker = threading.Thread(target=self._work, name=f"{node_name}_worker", daemon=True)

    def create_publisher(self, *args, **kwargs):
        """Every publisher of a model node (tf2's broadcasters included) goes through the publish gate."""
        kwargs.setdefault("publisher_class", GatedPublisher)
        publisher = super().create_publisher(*args, **kwargs)
        if isinstance(publisher, GatedPublisher):
            publisher.gate = self._publish_gate
        return publisher

    def add_diagnostic_counters(self, prefix: str, counts: Callable[[], Mapping[str, int]], what: str) -> None:
        """Publish `counts()` (reason -> count, e.g. bad transforms) on /diagnostics as `<prefix>_<reason>`
        values, with a WARN status naming `what` while the counts keep growing (as for bad frames): input the
        node rejects outside its frames must be as visible as dropped frames."""
        self._counter_sources[prefix] = (counts, what)

    def create_tf_listener(self):
        """A TfListener whose rejected transforms (bad quaternions, empty frame ids, ...) are counted on
        /diagnostics as tf_rejected_<reason>."""
        from perception_fm.ros.tf import TfListener

        listener = TfListener(self)
        self.add_diagnostic_counters("tf_rejected", lambda: listener.rejected, "TF rejected")
        return listener

    def start(self) -> None:
        """Start the worker (loads the model, then processes frames). Subclasses call it last in __init__."""
        self._worker.start()

    # -- parameters ---------------------------------------------------------------------------------------

    def _check_parameters(self, parameters) -> SetParametersResult:
        for parameter in parameters:
            param = self._param_table.get(parameter.name)
            if param is None:
                continue
            if param.read_only:
                return SetParametersResult(successful=False, reason=f"{param.name} is read-only (restart the node)")
            try:
                param.check(parameter.value)
            except ValueError as error:
                return SetParametersResult(successful=False, reason=str(error))
        return SetParametersResult(successful=True)

    def _parameters_changed(self, parameters) -> None:
        changed = {parameter.name for parameter in parameters if parameter.name in self._param_table}
        for name in changed:
            self.values[name] = self.get_parameter(name).value
        if changed & (MODEL_PARAM_NAMES | set(self.model_extra_params)):
            self._reload.set()
        elif changed:
            self._reconfigure.set()

    def _reload_service(self, request, response):
        self._reload.set()
        response.success = True
        response.message = "model reload requested"
        return response

    def _model_param(self) -> Param:
        """The `model` parameter, its description listing the installed models of this task and their
        licences (a user choosing a model must see that some weights are non-commercial)."""
        installed = "; ".join(f"{e.spec.name} ({e.spec.license})" for e in default_manager().models(self.task))
        return Param("model", "", f"{self.task} model; empty = {self.default_model}. Installed: {installed}. "
                                  "Licences are those of the default weights.")

    # -- model --------------------------------------------------------------------------------------------

    def model_name(self) -> str:
        return self.values["model"] or self.default_model

    def _load_model(self) -> None:
        self.model, self.model_error = None, None
        name = self.model_name()
        started = time.perf_counter()
        try:
            model = default_manager().create(self.task, name, model_options(self.values, self.model_extra_params))
            self.reconfigure_with(model)
        except Exception as error:  # whatever a plugin or a damaged file raises, the node stays up and says why
            self.model_error = f"{type(error).__name__}: {' '.join(str(error).split()).rstrip('.')}"
            expected = isinstance(error, (PerceptionFmError, ValueError, ImportError, OSError, RuntimeError))
            self.get_logger().error(
                f"{self.task} model {name!r} could not be configured: {self.model_error}. The node stays up "
                "without a model; fix the parameters (ros2 param set) or call ~/reload_model."
                + ("" if expected else f"\n{traceback.format_exc()}")  # an unexpected error: a bug to report
            )
            return
        self.model = model
        warning = " (RANDOM WEIGHTS: outputs are not meaningful)" if getattr(model, "weights", "") == "random-init" else ""
        self.get_logger().info(
            f"{self.task} model {name!r} ready on {getattr(model, 'device', '?')} from "
            f"{getattr(model, 'weights', '?')} in {time.perf_counter() - started:.1f} s{warning}"
        )

    def reconfigure_with(self, model) -> None:
        """Build what depends on the model and parameters (e.g. the pipeline); raise ValueError if the
        parameters do not fit the model."""
        raise NotImplementedError

    # -- frames -------------------------------------------------------------------------------------------

    def submit(self, item: Any) -> None:
        """Called from subscription callbacks: hand the newest frame to the worker."""
        self.stats.receive()
        if self._slot.put(item):
            self.stats.drop("stale")

    def process(self, item: Any) -> float | None:
        """Run the model on one frame and publish; return the model's time in ms, or None when the frame
        needed no model (counted as `skipped`, e.g. nothing to look for)."""
        raise NotImplementedError

    def run_in_worker(self, function, timeout: float = 5.0, wait: bool = True):
        """Run `function` in the worker thread between frames (model state is the worker's alone) and
        return its result. If the worker has not started it within `timeout` s it is withdrawn (it never runs)
        and TimeoutError is raised; once started, its outcome is awaited (calls take milliseconds). With
        wait=False it is queued and None returned at once."""
        call = _WorkerCall(function)
        with self._calls_lock:
            self._calls.append(call)
        if not wait:
            return None
        if not call.done.wait(timeout) and call.withdraw():
            raise TimeoutError(f"the worker is busy (a frame took over {timeout:g} s); the request was not "
                               "applied: try again")
        call.done.wait()
        if call.error is not None:
            raise call.error
        return call.result

    def _run_calls(self) -> None:
        with self._calls_lock:
            calls, self._calls = self._calls, []
        for call in calls:
            call.run()

    def _work(self) -> None:
        while not self._stop.is_set() and rclpy.ok(context=self.context):
            try:
                self._work_step()
            except Exception as error:  # the node's only model thread outlives any bug (the node reports it)
                if self._stop.is_set():
                    return  # stopping: handles may be gone; nothing to report
                self.stats.drop("error")
                self._log_drop("error", f"worker error: {type(error).__name__}: {error}\n{traceback.format_exc()}")

    def _work_step(self) -> None:
        """One turn of the worker: a (re)load of the model when asked (the first turn always), a
        reconfiguration, queued calls, then at most one frame."""
        if self._reload.is_set():
            self._reload.clear()
            self._reconfigure.clear()
            self._load_model()
        if self._reconfigure.is_set() and self.model is not None:
            self._reconfigure.clear()
            try:
                self.reconfigure_with(self.model)
            except ValueError as error:
                self.get_logger().error(f"parameters rejected: {error}")
        self._run_calls()
        item = self._slot.take(timeout=0.05)
        if item is None or self._stop.is_set():
            return
        if self.model is None:
            self.stats.drop("no_model")
            return
        started = time.perf_counter()
        try:
            inference_ms = self.process(item)
        except BadInputError as error:
            self.stats.drop(error.reason)
            self._log_drop(error.reason, f"dropped a frame ({error.reason}): {error}")
        except Exception as error:  # a bug or a model failure must not kill the node
            if self._stop.is_set():
                return  # a frame cut short by the node stopping is no failure
            self.stats.drop("error")
            self._log_drop("error", f"frame failed: {type(error).__name__}: {error}\n{traceback.format_exc()}")
        else:
            if inference_ms is None:
                self.stats.event("skipped")
            else:
                self.stats.done((time.perf_counter() - started) * 1e3, inference_ms)

    def _log_drop(self, reason: str, text: str) -> None:
        """Log a dropped frame at most every DROP_LOG_PERIOD_S per reason (counters stay exact), so a bad
        stream cannot flood the log and one bad input cannot hide another."""
        now = time.monotonic()
        if now - self._drop_logged.get(reason, -DROP_LOG_PERIOD_S) >= DROP_LOG_PERIOD_S:
            self._drop_logged[reason] = now
            self.get_logger().error(text)

    # -- diagnostics --------------------------------------------------------------------------------------

    def _publish_diagnostics(self) -> None:
        snapshot = self.stats.snapshot()
        status = DiagnosticStatus()
        status.name = f"{self.get_fully_qualified_name()}: {self.task}"
        status.hardware_id = getattr(self.model, "device", "") or ""
        bad_drops = {k: v for k, v in snapshot.items() if k.startswith("dropped_") and k != "dropped_stale"}
        recent = {k: v - self._reported_drops.get(k, 0) for k, v in bad_drops.items() if v > self._reported_drops.get(k, 0)}
        self._reported_drops = bad_drops
        warnings = []
        if recent:
            warnings.append("dropped bad frames: " + ", ".join(f"{k[8:]} {v}" for k, v in sorted(recent.items())))
        counters = {}
        for prefix, (source, what) in self._counter_sources.items():
            counts = {f"{prefix}_{reason}": int(count) for reason, count in sorted(source().items())}
            new = {k: v - self._reported_counters.get(k, 0) for k, v in counts.items()
                   if v > self._reported_counters.get(k, 0)}
            if new:
                warnings.append(f"{what}: " + ", ".join(f"{k[len(prefix) + 1:]} {v}" for k, v in new.items()))
            counters.update(counts)
        self._reported_counters = counters
        if self.model is None:
            status.level = DiagnosticStatus.ERROR
            status.message = self.model_error or "loading model"
        elif warnings:  # WARN while bad input keeps coming, OK again once it stops
            status.level = DiagnosticStatus.WARN
            status.message = "; ".join(warnings)
        else:
            status.level = DiagnosticStatus.OK
            status.message = "ok"
        values = {"model": self.model_name(), "weights": getattr(self.model, "weights", ""), **snapshot, **counters}
        status.values = [KeyValue(key=key, value=str(value)) for key, value in values.items()]
        message = DiagnosticArray()
        message.header.stamp = self.get_clock().now().to_msg()
        message.status = [status]
        self._diagnostics.publish(message)

    def worker_busy(self) -> bool:
        """True while the worker thread is still running (after destroy_node: it did not stop in time)."""
        return self._worker.is_alive()

    def destroy_node(self) -> None:
        """The stop handshake: no publish from here on, the worker told to stop and given WORKER_STOP_WAIT_S to
        finish a frame in flight; a worker still busy (a long model load) is left to die with the process."""
        self._stop.set()
        self._publish_gate.close()
        self._slot.close()
        if self._worker.is_alive():
            self._worker.join(timeout=WORKER_STOP_WAIT_S)
        if self._worker.is_alive():
            self.get_logger().info("stopping while the worker is still busy (loading the model or in a frame); "
                                   "not waiting for it")
        super().destroy_node()


def run_node(node_class, args=None) -> int:
    """Entry point used by every node executable: init, spin until SIGINT or SIGTERM, clean up, return 0
    (2 for a bad parameter).

    The signal handlers are ours, not rclpy's: rclpy's handler shuts the context down from the signal while the
    executor may be building its wait set ("RCLError: failed to initialize wait set: the given context is not
    valid"). Here a signal only sets a flag; the spin loop sees it within SPIN_POLL_S, the node is destroyed
    (ModelNode.destroy_node's stop handshake), and only then is the context shut down."""
    from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
    from rclpy.signals import SignalHandlerOptions

    from perception_fm.nodes.params import ParameterError, remember_arguments

    tune_malloc()  # steady per-frame buffers without page-fault storms (see perception_fm.core.memory)
    stop = threading.Event()
    previous = {number: signal.signal(number, lambda *_: stop.set()) for number in (signal.SIGINT, signal.SIGTERM)}
    node = None
    try:
        rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
        remember_arguments(rclpy.get_default_context(), args)  # params.declare reads the params files named
        try:
            node = node_class()  # starts its worker at the end of its constructor
        except ParameterError:  # a bad -p / params-file value: params.declare logged it as one line
            return 2
        executor = SingleThreadedExecutor(context=node.context)
        executor.add_node(node)
        try:
            while not stop.is_set() and rclpy.ok(context=node.context):
                executor.spin_once(timeout_sec=SPIN_POLL_S)
        except ExternalShutdownException:
            pass
        finally:
            executor.remove_node(node)
            executor.shutdown(timeout_sec=0)
    finally:
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
        for number, handler in previous.items():
            signal.signal(number, handler)
    if node is not None and node.worker_busy():
        # The worker is still inside torch (a model load or a long frame). Interpreter finalisation would tear
        # down torch's C++ state under it ("terminate called without an active exception", SIGABRT); the node
        # is destroyed and the context shut down, so end the process here, as a finished node would.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    return 0
