"""What every model node shares: parameters, model creation through the plugin manager, the latest-frame
slot and its worker thread, drop counting, and /diagnostics.

Threading: subscription callbacks only store messages (cheap, never blocking on the model); one worker
thread loads the model, then takes the newest frame, runs the model and publishes. A frame arriving while
the worker is busy replaces the waiting one, which is counted as dropped_stale.
"""
from __future__ import annotations

import threading
import time
import traceback
from typing import Any

import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import SetParametersResult
from rclpy.node import Node
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


def model_options(values: dict[str, Any], extra_names: tuple[str, ...] = ()) -> ModelOptions:
    """ModelOptions from node parameter values; `extra_names` are model-specific parameters passed on."""
    return ModelOptions(
        weights=values["weights"], device=values["device"], offline=values["offline"],
        random_weights=values["random_weights"],
        extra={"precision": values["precision"], **{name: values[name] for name in extra_names}},
    )


class _WorkerCall:
    def __init__(self, function):
        self.function = function
        self.done = threading.Event()
        self.result = None
        self.error: Exception | None = None


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
        super().__init__(node_name, **kwargs)
        self._param_table = {param.name: param for param in MODEL_PARAMS + self.params}
        self._param_table["model"] = self._model_param()
        self.values = declare(self, self._param_table.values())
        self.stats = NodeStats()
        self.model = None
        self.model_error: str | None = None
        self._slot: LatestSlot = LatestSlot(self.queue_size, keyed=self.keyed_queue)
        self._drop_logged: dict[str, float] = {}
        self._calls: list[_WorkerCall] = []
        self._calls_lock = threading.Lock()
        self._reported_drops: dict[str, int] = {}
        self._reload = threading.Event()
        self._reconfigure = threading.Event()
        self._stop = threading.Event()
        self.add_on_set_parameters_callback(self._check_parameters)
        self.add_post_set_parameters_callback(self._parameters_changed)
        self.create_service(Trigger, "~/reload_model", self._reload_service)
        self._diagnostics = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.create_timer(1.0, self._publish_diagnostics)
        self._worker = threading.Thread(target=self._work, name=f"{node_name}_worker", daemon=True)

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
        except (PerceptionFmError, ValueError, ImportError, OSError, RuntimeError) as error:
            self.model_error = f"{type(error).__name__}: {error}"
            self.get_logger().error(
                f"{self.task} model {name!r} could not be configured: {error}. The node stays up without a "
                f"model; fix the parameters (ros2 param set) or call ~/reload_model."
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
        return its result; raises TimeoutError if the worker does not get to it in time. With wait=False
        it is queued and None returned at once."""
        call = _WorkerCall(function)
        with self._calls_lock:
            self._calls.append(call)
        if not wait:
            return None
        if not call.done.wait(timeout):
            raise TimeoutError("the worker is busy; try again")
        if call.error is not None:
            raise call.error
        return call.result

    def _run_calls(self) -> None:
        with self._calls_lock:
            calls, self._calls = self._calls, []
        for call in calls:
            try:
                call.result = call.function()
            except Exception as error:  # handed back to the caller
                call.error = error
            call.done.set()

    def _work(self) -> None:
        self._load_model()
        while not self._stop.is_set() and rclpy.ok(context=self.context):
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
            if item is None:
                continue
            if self.model is None:
                self.stats.drop("no_model")
                continue
            started = time.perf_counter()
            try:
                inference_ms = self.process(item)
            except BadInputError as error:
                self.stats.drop(error.reason)
                self._log_drop(error.reason, f"dropped a frame ({error.reason}): {error}")
            except Exception as error:  # a bug or a model failure must not kill the node
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
        if self.model is None:
            status.level = DiagnosticStatus.ERROR
            status.message = self.model_error or "loading model"
        elif recent:  # WARN while bad frames keep coming, OK again once they stop
            status.level = DiagnosticStatus.WARN
            status.message = "dropped bad frames: " + ", ".join(f"{k[8:]} {v}" for k, v in sorted(recent.items()))
        else:
            status.level = DiagnosticStatus.OK
            status.message = "ok"
        values = {"model": self.model_name(), "weights": getattr(self.model, "weights", ""), **snapshot}
        status.values = [KeyValue(key=key, value=str(value)) for key, value in values.items()]
        message = DiagnosticArray()
        message.header.stamp = self.get_clock().now().to_msg()
        message.status = [status]
        self._diagnostics.publish(message)

    def destroy_node(self) -> None:
        self._stop.set()
        self._slot.close()
        if self._worker.is_alive():
            self._worker.join(timeout=5.0)
        super().destroy_node()


def run_node(node_class, args=None) -> int:
    """Entry point used by every node executable: init, spin until Ctrl-C, clean up."""
    from rclpy.executors import ExternalShutdownException

    from perception_fm.nodes.params import ParameterError

    tune_malloc()  # steady per-frame buffers without page-fault storms (see perception_fm.core.memory)
    rclpy.init(args=args)
    try:
        node = node_class()  # starts its worker at the end of its constructor
    except ParameterError:  # a bad -p / params-file value: params.declare logged it as one line
        rclpy.try_shutdown()
        return 2
    try:
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    return 0
