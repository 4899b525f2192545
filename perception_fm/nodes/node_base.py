"""What every model node shares: parameters, the managed-node lifecycle, model creation through the plugin
manager, the latest-frame slot and its worker thread, drop counting, and /diagnostics.

Lifecycle (rclpy.lifecycle, the standard lifecycle_msgs services, so `ros2 lifecycle set` works):
  configure   the worker loads the model onto its device; a failure (missing or damaged weights, CUDA out of
              memory, a bad parameter) is FAILURE: the node stays unconfigured, the reason on /diagnostics (ERROR)
  activate    the node's input subscriptions are created and its outputs publish: frames are processed
  deactivate  the input subscriptions are destroyed (no more traffic is received) and outputs stop; the model
              stays loaded
  cleanup     the worker drops the model and everything built on it, collects, returns the freed heap to the
              system (malloc_trim) and empties torch's CUDA cache
  shutdown    from any state: as deactivate + cleanup, then finalized
`autostart` (default true) takes the node to active on its own, as a plain node came up; `~/enable`
(std_srvs/SetBool) is a shortcut for activate (configuring first when needed) / deactivate. Every subscription a
model node creates is an input (live only while active), except those made with `always=True` (user commands,
kept in every state); every publisher it creates is gated the same way, except /diagnostics.

Threading: subscription callbacks only store messages (cheap, never blocking on the model); one worker thread
takes the newest frame, runs the model and publishes. A frame arriving while the worker is busy replaces the
waiting one, which is counted as dropped_stale. Model loads and releases run on the worker too (model state is
the worker's alone): a transition requested over a service waits for it in the lifecycle callback group, so
under a multi-threaded executor (run_node, the one-process container) every other callback keeps running.
Transitions are serialised by one lock; the worker's own ones (autostart, a reload after a parameter change)
never wait for it (a transition in progress may be waiting for the worker): they retry on its next turn.
The node pursues a goal state: autostart's (active) at first, then whatever was last requested. A model
parameter change or ~/reload_model reloads a configured node in place (a failure takes it down to unconfigured,
saying why) and retries an unconfigured one whose goal needs a model.

Stopping (SIGINT or SIGTERM, at any moment): run_node stops spinning, then destroy_node closes the publish gate
(every publisher of the node publishes through it, so no publish can touch a handle being destroyed), tells the
worker to stop and waits a bounded time for it. A transition waiting for the worker gives up as soon as the node
is stopping (or removed from its executor). A worker still inside a long model load is a daemon thread and
does not hold the process: the node exits 0 without a traceback.
"""
from __future__ import annotations

import ctypes
import gc
import os
import signal
import sys
import threading
import time
import traceback
from typing import Any, Callable, Mapping

import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from lifecycle_msgs.msg import Transition
from rcl_interfaces.msg import SetParametersResult
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.lifecycle.node import LifecycleNodeMixin
from rclpy.node import Node
from rclpy.publisher import Publisher
from std_srvs.srv import SetBool, Trigger

from perception_fm.core.latest import LatestSlot
from perception_fm.core.memory import tune_malloc
from perception_fm.core.stats import NodeStats
from perception_fm.errors import BadInputError, PerceptionFmError
from perception_fm.hookspecs import ModelOptions, Task
from perception_fm.nodes.params import MODEL_PARAMS, Param, declare
from perception_fm.plugin_manager import default_manager

MODEL_PARAM_NAMES = {param.name for param in MODEL_PARAMS} - {"autostart"}  # a change of these reloads the model
DROP_LOG_PERIOD_S = 5.0
WORKER_STOP_WAIT_S = 3.0  # how long destroy_node lets a frame in flight finish before it goes on without it
SPIN_POLL_S = 0.1  # the executor wakes this often to see a stop request (a Python signal handler runs only then)
STOP_POLL_S = 0.1  # how often a transition waiting for the worker (or for another transition) looks for a stop
EXECUTOR_THREADS = 2  # run_node: one for a transition waiting on a model load, one for everything else
SWITCH_INTERVAL_S = 0.0005  # run_node: how long a thread may hold the GIL while another waits (Python: 5 ms)

# lifecycle states (labels, as `ros2 lifecycle get` prints them)
UNCONFIGURED, INACTIVE, ACTIVE, FINALIZED = "unconfigured", "inactive", "active", "finalized"
SUCCESS, FAILURE = TransitionCallbackReturn.SUCCESS, TransitionCallbackReturn.FAILURE
# the state each requested transition aims at (by id and by label): the node's goal from then on
TRANSITION_GOALS = {
    Transition.TRANSITION_CONFIGURE: INACTIVE, Transition.TRANSITION_CLEANUP: UNCONFIGURED,
    Transition.TRANSITION_ACTIVATE: ACTIVE, Transition.TRANSITION_DEACTIVATE: INACTIVE,
    Transition.TRANSITION_UNCONFIGURED_SHUTDOWN: FINALIZED, Transition.TRANSITION_INACTIVE_SHUTDOWN: FINALIZED,
    Transition.TRANSITION_ACTIVE_SHUTDOWN: FINALIZED,
}
TRANSITION_LABEL_GOALS = {"configure": INACTIVE, "cleanup": UNCONFIGURED, "activate": ACTIVE,
                          "deactivate": INACTIVE, "shutdown": FINALIZED}
_STOPPED = object()  # what _in_worker returns when the node stopped before the worker finished


def _initialised_torch_cuda():
    """torch.cuda when a model plugin imported torch and CUDA is in use in this process, else None. Never
    imports torch (a node may have none), and copes with the worker being in the middle of importing it."""
    torch = sys.modules.get("torch")
    cuda = getattr(torch, "cuda", None)
    try:
        return cuda if cuda is not None and cuda.is_initialized() else None
    except AttributeError:  # torch.cuda itself still importing
        return None


def return_freed_memory() -> None:
    """Hand the heap's free pages back to the system (glibc malloc_trim; elsewhere nothing). tune_malloc keeps
    freed heap memory for the per-frame buffers; a released model must leave the process's RSS for real."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def model_options(values: dict[str, Any], extra_names: tuple[str, ...] = ()) -> ModelOptions:
    """ModelOptions from node parameter values; `extra_names` are model-specific parameters passed on."""
    return ModelOptions(
        weights=values["weights"], device=values["device"], offline=values["offline"],
        random_weights=values["random_weights"],
        extra={"precision": values["precision"], **{name: values[name] for name in extra_names}},
    )


class _PublishGate:
    """Shared by the publishers of one node: once closed, publish() is a no-op, and closing waits for a publish
    in progress, so the worker can never publish on a handle destroy_node is destroying. `active` is the
    lifecycle's: the node's outputs (managed publishers) publish only while it is true, and switching it off
    waits for a publish in progress too, so nothing is published after on_deactivate returns."""

    def __init__(self):
        self.lock = threading.Lock()
        self.closed = False
        self.active = False

    def close(self) -> None:
        with self.lock:
            self.closed = True

    def set_active(self, active: bool) -> None:
        with self.lock:
            self.active = active


class GatedPublisher(Publisher):
    """rclpy's Publisher whose publish() passes through the node's _PublishGate (a lifecycle publisher when
    `managed`: it publishes only while the node is active)."""

    gate: _PublishGate | None = None
    managed = False

    def publish(self, msg) -> None:
        gate = self.gate
        if gate is None:
            super().publish(msg)
            return
        with gate.lock:
            if not gate.closed and (gate.active or not self.managed):
                super().publish(msg)


class InputSubscription:
    """An input of a managed node: an rclpy Subscription while the node is active, none otherwise (a deactivated
    node receives and deserialises nothing). `topic_name` is the resolved name in either case."""

    def __init__(self, node: Node, msg_type, topic: str, callback, qos_profile, kwargs: dict):
        self._node = node
        self._spec = (msg_type, topic, callback, qos_profile)
        self._kwargs = kwargs
        self.topic_name = node.resolve_topic_name(topic)
        self.subscription = None

    def open(self) -> None:
        if self.subscription is None:
            self.subscription = Node.create_subscription(self._node, *self._spec, **self._kwargs)

    def close(self) -> None:
        subscription, self.subscription = self.subscription, None
        if subscription is not None:
            Node.destroy_subscription(self._node, subscription)


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


class ModelNode(LifecycleNode):
    """Base class of the task nodes (managed nodes: see the module's docstring). Subclasses set `task`,
    `default_model`, `params` and implement `reconfigure_with(model)` (build whatever depends on the model and
    parameters), `process(item)` and, when they keep more than `handler`, `release_model()`."""

    task: Task
    default_model: str
    params: tuple[Param, ...] = ()
    model_extra_params: tuple[str, ...] = ()  # parameters that are passed to the model and need a reload
    queue_size: int = 1  # items waiting for the worker; 1 = latest-frame policy (older ones dropped as stale)
    keyed_queue: bool = False  # items with the same `key` replace each other in the queue (one job per track)

    def __init__(self, node_name: str, **kwargs):
        self._publish_gate = _PublishGate()  # before Node.__init__, which creates publishers already
        self._managing_entities = False  # publishers and subscriptions made from here on are the node's outputs/inputs
        self._inputs: list[InputSubscription] = []
        # Lifecycle services, ~/enable and ~/reload_model: their own group, so that a transition waiting for a
        # model load blocks one executor thread, never the node's other callbacks. rclpy's LifecycleNode.__init__
        # takes no callback group; it is Node.__init__ then the mixin's, which does.
        self._lifecycle_group = MutuallyExclusiveCallbackGroup()
        Node.__init__(self, node_name, **kwargs)
        LifecycleNodeMixin.__init__(self, enable_communication_interface=True, callback_group=self._lifecycle_group)
        self._transition_lock = threading.Lock()  # one transition at a time, whichever thread asks
        change_state = self._service_change_state.callback
        self._service_change_state.callback = lambda request, response: self._change_state_service(
            change_state, request, response)
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
        self._reload = threading.Event()  # model parameters changed: reload (worker)
        self._pursue = threading.Event()  # bring the state to the goal (worker)
        self._goal = ACTIVE if self.values["autostart"] else UNCONFIGURED
        self._reconfigure = threading.Event()
        self._stop = threading.Event()
        self.add_on_set_parameters_callback(self._check_parameters)
        self.add_post_set_parameters_callback(self._parameters_changed)
        self.create_service(Trigger, "~/reload_model", self._reload_service, callback_group=self._lifecycle_group)
        self.create_service(SetBool, "~/enable", self._enable_service, callback_group=self._lifecycle_group)
        self._diagnostics = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.create_timer(1.0, self._publish_diagnostics)
        self._worker = threading.Thread(target=self._work, name=f"{node_name}_worker", daemon=True)
        self._managing_entities = True

    def create_publisher(self, *args, **kwargs):
        """Every publisher of a model node (tf2's broadcasters included) goes through the publish gate; those
        a subclass creates (its outputs) publish only while the node is active."""
        kwargs.setdefault("publisher_class", GatedPublisher)
        publisher = super().create_publisher(*args, **kwargs)
        if isinstance(publisher, GatedPublisher):
            publisher.gate = self._publish_gate
            publisher.managed = self._managing_entities
        return publisher

    def create_subscription(self, msg_type, topic, callback, qos_profile, *, always: bool = False, **kwargs):
        """A subclass's subscriptions (tf2's listener's included) are inputs: an InputSubscription, subscribed
        only while the node is active. `always`: a plain subscription, kept in every state (commands, which are
        user intent and apply to the model whenever it comes)."""
        if always or not self._managing_entities:
            return super().create_subscription(msg_type, topic, callback, qos_profile, **kwargs)
        subscription = InputSubscription(self, msg_type, topic, callback, qos_profile, kwargs)
        self._inputs.append(subscription)
        if self._publish_gate.active:  # created while active (none of ours is): live at once
            subscription.open()
        return subscription

    def destroy_subscription(self, subscription) -> bool:
        if isinstance(subscription, InputSubscription):
            subscription.close()
            if subscription in self._inputs:
                self._inputs.remove(subscription)
                return True
            return False
        return super().destroy_subscription(subscription)

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
        """Start the worker (with autostart, its first turn configures and activates the node). Subclasses call
        it last in __init__."""
        if self._goal != UNCONFIGURED:
            self._pursue.set()
        else:
            self.get_logger().info("autostart is false: unconfigured until configured (ros2 lifecycle set "
                                   f"{self.get_fully_qualified_name()} configure, or ~/enable)")
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
            self._reload.set()  # the worker reloads a configured model, or retries a configure that failed
        elif changed:
            self._reconfigure.set()

    # -- lifecycle: requests ------------------------------------------------------------------------------

    def lifecycle_state(self) -> str:
        """The current state's label (unconfigured, inactive, active, finalized, or a transition's)."""
        return self._state_machine.current_state[1]

    def _stopping(self) -> bool:
        """True once the node is being stopped: destroy_node began, the context ended, or the node was taken out
        of its executor (which run_node and the container do first when a stop is requested)."""
        if self._stop.is_set() or not self.context.ok():
            return True
        executor = self.executor
        return executor is not None and self not in executor.get_nodes()

    def _acquire_transitions(self) -> bool:
        """Wait for the transition lock (another transition may be loading a model); False if the node is
        stopping meanwhile."""
        while not self._transition_lock.acquire(timeout=STOP_POLL_S):
            if self._stopping():
                return False
        if self._stopping():
            self._transition_lock.release()
            return False
        return True

    def _change_state_service(self, change_state, request, response):
        """~/change_state (ros2 lifecycle set): rclpy's handler, one transition at a time; the requested
        transition's target becomes the node's goal."""
        goal = TRANSITION_GOALS.get(request.transition.id)
        if request.transition.label:
            goal = TRANSITION_LABEL_GOALS.get(request.transition.label)
        if not self._acquire_transitions():
            response.success = False
            return response
        try:
            if goal is not None:
                self._goal = goal
            return change_state(request, response)
        finally:
            self._transition_lock.release()

    def _enable_service(self, request, response):
        """~/enable (std_srvs/SetBool): true = activate (configuring first when unconfigured), false =
        deactivate (the model stays loaded)."""
        if not self._acquire_transitions():
            response.success, response.message = False, "stopping"
            return response
        try:
            state = self.lifecycle_state()
            # false keeps a loaded model (inactive) and stops an unconfigured node from configuring on its own
            self._goal = ACTIVE if request.data else INACTIVE if state in (ACTIVE, INACTIVE) else UNCONFIGURED
            if request.data:
                response.success = self._settle(reload=False) == ACTIVE
            else:
                if state == ACTIVE:
                    self.trigger_deactivate()
                response.success = self.lifecycle_state() in (INACTIVE, UNCONFIGURED)
            response.message = self._state_summary()
        finally:
            self._transition_lock.release()
        return response

    def _reload_service(self, request, response):
        """~/reload_model: reload a configured model from the current parameters (e.g. weights replaced on
        disk); an unconfigured node whose goal needs a model is configured (and activated) again."""
        if not self._acquire_transitions():
            response.success, response.message = False, "stopping"
            return response
        try:
            if self.lifecycle_state() == UNCONFIGURED and self._goal == UNCONFIGURED:
                response.success = False
                response.message = ("unconfigured: nothing to reload (ros2 lifecycle set "
                                    f"{self.get_fully_qualified_name()} configure)")
                return response
            self._reload.clear()  # this reload applies the parameters of now
            response.success = self._settle(reload=True) in (INACTIVE, ACTIVE)
            response.message = self._state_summary()
        finally:
            self._transition_lock.release()
        return response

    def _state_summary(self) -> str:
        state = self.lifecycle_state()
        if state == UNCONFIGURED and self.model_error:
            return f"{state}: {self.model_error}"
        return state

    def _settle(self, reload: bool) -> str:
        """With the transition lock held: reload the model in place if asked (a failure takes the node down to
        unconfigured), then take the node towards its goal (configure, activate). Returns the state reached."""
        state = self.lifecycle_state()
        if reload and state in (INACTIVE, ACTIVE):
            if self._in_worker(self._load_model) is _STOPPED:
                return self.lifecycle_state()
            if self.model is None:  # the new parameters give no model: down to unconfigured, saying why
                if state == ACTIVE:
                    self.trigger_deactivate()
                self.trigger_cleanup()
                return self.lifecycle_state()
        if self.lifecycle_state() == UNCONFIGURED and self._goal in (INACTIVE, ACTIVE):
            self.trigger_configure()
        if self.lifecycle_state() == INACTIVE and self._goal == ACTIVE:
            self.trigger_activate()
        return self.lifecycle_state()

    def _settle_from_worker(self) -> None:
        """The worker's turn at autostart or a reload after a parameter change. It never waits for the
        transition lock: the transition holding it may be waiting for this very worker; the flags stay set and
        the next turn tries again."""
        if self._stopping() or not self._transition_lock.acquire(blocking=False):
            return
        try:
            reload = self._reload.is_set()
            self._reload.clear()
            self._pursue.clear()
            self._settle(reload)
        finally:
            self._transition_lock.release()

    # -- lifecycle: transitions (rclpy calls them; the lock is held) --------------------------------------

    def _in_worker(self, function):
        """Run `function` on the worker (model state is the worker's alone) and return its result, waiting as
        long as it takes unless the node stops (then _STOPPED). Directly when called from the worker."""
        if threading.current_thread() is self._worker:
            return function()
        call = _WorkerCall(function)
        with self._calls_lock:
            self._calls.append(call)
        while not call.done.wait(STOP_POLL_S):
            if self._stopping() or not self._worker.is_alive():
                call.withdraw()
                return _STOPPED
        if call.error is not None:
            raise call.error
        return call.result

    def _transition_failed(self, name: str, error: Exception) -> TransitionCallbackReturn:
        # rclpy turns an exception in a transition callback into ERROR without a word: say it here
        self.get_logger().error(f"{name} failed: {type(error).__name__}: {error}\n{traceback.format_exc()}")
        return TransitionCallbackReturn.ERROR

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Load the model on the worker. FAILURE (the node stays unconfigured, the reason on /diagnostics and
        in the log) when it cannot be loaded or the node is stopping."""
        try:
            if self._in_worker(self._load_model) is _STOPPED or self.model is None:
                return FAILURE
        except Exception as error:
            return self._transition_failed("configure", error)
        return super().on_configure(state)

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Outputs on, then the input subscriptions (so the first frame's outputs are published)."""
        try:
            self._publish_gate.set_active(True)
            for subscription in self._inputs:
                subscription.open()
            self.inputs_opened()
        except Exception as error:  # e.g. a microphone that cannot open: FAILURE, the node stays inactive
            self._close_inputs()
            self.get_logger().error(f"activate failed: {type(error).__name__}: {error}")
            return FAILURE
        self.get_logger().info("active")
        return super().on_activate(state)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Inputs off, then outputs (waiting for a publish in progress); frames still queued are dropped
        (counted as inactive); the model stays loaded."""
        self._close_inputs()
        self.get_logger().info("inactive: model loaded, not processing")
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Free the model: on the worker, every reference dropped, collected, memory returned."""
        try:
            if self._in_worker(self._release_model) is _STOPPED:
                return FAILURE
        except Exception as error:
            return self._transition_failed("cleanup", error)
        self.get_logger().info("unconfigured: model released")
        return super().on_cleanup(state)

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._close_inputs()
        if self.model is not None and not self._stopping():
            self._in_worker(self._release_model)
        self._goal = FINALIZED
        self.get_logger().info("finalized (shut down through the lifecycle; the process stays until stopped)")
        return super().on_shutdown(state)

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        """After a transition raised: back to a clean unconfigured node."""
        self._close_inputs()
        if self.model is not None and not self._stopping():
            self._in_worker(self._release_model)
        return super().on_error(state)

    def _close_inputs(self) -> None:
        for subscription in self._inputs:
            subscription.close()
        try:
            self.inputs_closed()
        finally:
            self._publish_gate.set_active(False)

    def inputs_opened(self) -> None:
        """Hook: inputs that are no subscription (e.g. a microphone) start here (raise to fail activate)."""

    def inputs_closed(self) -> None:
        """Hook: inputs that are no subscription stop here."""

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
        """On the worker: (re)load the model (the old one released first: two never share the device); a
        failure is logged and kept in model_error, the node stays up."""
        if self.model is not None:
            self._release_model()
        self._reload.clear()  # the load takes the parameters of now: earlier changes need no reload after it
        self._reconfigure.clear()
        self.model, self.model_error = None, None
        name = self.model_name()
        started = time.perf_counter()
        try:
            model = default_manager().create(self.task, name, model_options(self.values, self.model_extra_params))
            self.reconfigure_with(model)
        except Exception as error:  # whatever a plugin or a damaged file raises, the node stays up and says why
            self.model_error = f"{type(error).__name__}: {' '.join(str(error).split()).rstrip('.')}"
            expected = isinstance(error, (PerceptionFmError, ValueError, ImportError, OSError, RuntimeError))
            self.release_model()  # whatever reconfigure_with built before it failed
            self.get_logger().error(
                f"{self.task} model {name!r} could not be configured: {self.model_error}. The node stays up, "
                "unconfigured; fix the parameters (ros2 param set) or call ~/reload_model."
                + ("" if expected else f"\n{traceback.format_exc()}")  # an unexpected error: a bug to report
            )
            return
        self.model = model
        self._start_memory_estimate(name, getattr(model, "device", self.values["device"]))
        warning = " (RANDOM WEIGHTS: outputs are not meaningful)" if getattr(model, "weights", "") == "random-init" else ""
        self.get_logger().info(
            f"{self.task} model {name!r} ready on {getattr(model, 'device', '?')} from "
            f"{getattr(model, 'weights', '?')} in {time.perf_counter() - started:.1f} s{warning}"
        )

    def _start_memory_estimate(self, name: str, device: str) -> None:
        """The loaded model's memory estimate (plugins' estimate_memory hook) for /diagnostics, computed on a
        thread of its own: it takes up to seconds, which the worker's first frames must not wait for."""
        from dataclasses import replace

        from perception_fm.runtime.budget import estimate_values, node_workload

        self._memory_values = {}  # the previous model's figures are gone with it
        options = replace(model_options(self.values, self.model_extra_params), device=str(device), offline=True)
        workload = node_workload(self.task, self.values)

        def estimate() -> None:
            try:
                values = estimate_values(default_manager().estimate_memory(self.task, name, options, workload))
            except Exception as error:  # an estimate is information; its failure must not touch the node
                values = {"memory_estimate": f"failed: {type(error).__name__}: {error}"}
            self._memory_values = dict(values) or {"memory_estimate": "none from the model's plugin"}

        thread = threading.Thread(target=estimate, name=f"{self.get_name()}_memory_estimate", daemon=True)
        self._memory_estimate_thread = thread  # inside torch while it runs: worker_busy() counts it
        thread.start()

    def reconfigure_with(self, model) -> None:
        """Build what depends on the model and parameters (e.g. the pipeline); raise ValueError if the
        parameters do not fit the model."""
        raise NotImplementedError

    def release_model(self) -> None:
        """Drop every reference to the model that reconfigure_with built (worker; cleanup). The nodes keep
        them in `handler`; a subclass that keeps more overrides this."""
        self.handler = None

    def _release_model(self) -> None:
        """On the worker: no reference to the model left, collected, the heap's free pages and torch's cached
        CUDA blocks handed back."""
        self.model = None
        self.release_model()
        gc.collect()
        return_freed_memory()
        cuda = _initialised_torch_cuda()
        if cuda is not None:
            cuda.empty_cache()

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
        if self._reload.is_set() or self._pursue.is_set():
            self._settle_from_worker()
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
        if not self._publish_gate.active:  # queued before the node was deactivated
            self.stats.drop("inactive")
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
        state = self.lifecycle_state()
        if self.model is None and self.model_error:  # a configure (or reload) failed: the reason, until fixed
            status.level = DiagnosticStatus.ERROR
            status.message = self.model_error
        elif self.model is None and (state in ("configuring", ACTIVE)
                                     or state == UNCONFIGURED and self._goal in (INACTIVE, ACTIVE)):
            status.level = DiagnosticStatus.WARN
            status.message = "loading model"
        elif state != ACTIVE:  # unconfigured or inactive on request: nothing wrong
            status.level = DiagnosticStatus.OK
            status.message = f"{state}: model loaded, not processing" if self.model is not None else \
                f"{state}: no model loaded"
        elif warnings:  # WARN while bad input keeps coming, OK again once it stops
            status.level = DiagnosticStatus.WARN
            status.message = "; ".join(warnings)
        else:
            status.level = DiagnosticStatus.OK
            status.message = "ok"
        values = {"lifecycle_state": state, "model": self.model_name(), "weights": getattr(self.model, "weights", ""),
                  **snapshot, **counters}
        if self.model is not None:  # the estimate of the loaded model (computed once per load)
            values.update(getattr(self, "_memory_values", {}))
        cuda = _initialised_torch_cuda()  # CUDA memory torch holds in this process (cleanup empties its cache)
        if cuda is not None:
            values["cuda_allocated_mb"] = f"{cuda.memory_allocated() / 2**20:.1f}"
            values["cuda_reserved_mb"] = f"{cuda.memory_reserved() / 2**20:.1f}"
        status.values = [KeyValue(key=key, value=str(value)) for key, value in values.items()]
        message = DiagnosticArray()
        message.header.stamp = self.get_clock().now().to_msg()
        message.status = [status]
        self._diagnostics.publish(message)

    def worker_busy(self) -> bool:
        """True while the worker thread is still running (after destroy_node: it did not stop in time), or a
        memory estimate is: both may be inside torch, which interpreter finalisation would tear down under them
        (SIGABRT, "terminate called without an active exception")."""
        estimate = getattr(self, "_memory_estimate_thread", None)
        return self._worker.is_alive() or (estimate is not None and estimate.is_alive())

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
    valid"). Here a signal only sets a flag; the spin loop sees it within SPIN_POLL_S, the node is taken out of
    the executor (a transition waiting for the worker sees that and gives up), the executor's threads are
    joined, the node is destroyed (ModelNode.destroy_node's stop handshake), and only then is the context shut
    down.

    A multi-threaded executor (EXECUTOR_THREADS): a lifecycle transition waiting for a model load holds one
    thread (the lifecycle callback group's), the node's other callbacks run on the other."""
    from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
    from rclpy.signals import SignalHandlerOptions

    from perception_fm.nodes.params import ParameterError, remember_arguments

    tune_malloc()  # steady per-frame buffers without page-fault storms (see perception_fm.core.memory)
    # The model's worker gives the GIL up in every torch op and must win it back from the executor's threads
    # (/tf at hundreds of Hz) each time: at Python's default 5 ms switch interval that convoy stretched a 50 ms
    # forward to seconds under a busy /tf. A shorter interval bounds each wait.
    sys.setswitchinterval(SWITCH_INTERVAL_S)
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
        executor = MultiThreadedExecutor(num_threads=EXECUTOR_THREADS, context=node.context)
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
