"""Bring managed nodes up from outside, over their lifecycle services: configure each in turn (one model load at
a time: the peak memory of one load, not of all at once), then activate it. `perception-fm up` does this for
the nodes whose graph config sets `autostart: false`; launch/perception.launch.py does the same with launch
events. A node whose configure fails stays up, unconfigured, saying why on /diagnostics; the others go on."""
from __future__ import annotations

import os
import threading
from typing import Callable

CALL_POLL_S = 0.1  # how often a wait for a service (or its answer) looks at the stop request


def fully_qualified_name(name: str, namespace: str = "") -> str:
    """/namespace/name of a node (a graph config's namespace may come with or without slashes)."""
    namespace = namespace.strip("/")
    return f"/{namespace}/{name}" if namespace else f"/{name}"


def bring_up(node_names: list[str], stop: threading.Event, activate: bool = True,
             say: Callable[[str], None] = print) -> dict[str, str]:
    """Configure, then (with `activate`) activate each node of `node_names` (fully qualified), in order, waiting
    as long as each takes (a node may still be starting, or loading a large model) unless `stop` is set.
    Returns each node's state when it was left (what was reached, or "stopped")."""
    import rclpy
    from lifecycle_msgs.msg import Transition
    from lifecycle_msgs.srv import ChangeState, GetState
    from rclpy.context import Context
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.signals import SignalHandlerOptions

    context = Context()
    rclpy.init(context=context, signal_handler_options=SignalHandlerOptions.NO)
    node = rclpy.create_node(f"perception_fm_lifecycle_manager_{os.getpid()}", context=context,
                             start_parameter_services=False)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)

    def call(service_type, name: str, request):
        client = node.create_client(service_type, name)
        try:
            while not client.wait_for_service(timeout_sec=CALL_POLL_S):
                if stop.is_set():
                    return None
            future = client.call_async(request)
            while not future.done():
                if stop.is_set():
                    return None
                executor.spin_once(timeout_sec=CALL_POLL_S)
            return future.result()
        finally:
            node.destroy_client(client)

    def state_of(name: str) -> str | None:
        answer = call(GetState, f"{name}/get_state", GetState.Request())
        return None if answer is None else answer.current_state.label

    def change(name: str, transition_id: int) -> bool | None:
        answer = call(ChangeState, f"{name}/change_state", ChangeState.Request(transition=Transition(id=transition_id)))
        return None if answer is None else answer.success

    reached: dict[str, str] = {}
    try:
        for name in node_names:
            state = state_of(name)
            if state == "unconfigured":
                done = change(name, Transition.TRANSITION_CONFIGURE)
                if done is False:
                    say(f"perception-fm up: {name}: configure failed; it stays up, unconfigured (its log and "
                        "/diagnostics say why)")
                state = state_of(name) if done is not None else None
            if activate and state == "inactive":
                done = change(name, Transition.TRANSITION_ACTIVATE)
                if done is False:
                    say(f"perception-fm up: {name}: activate failed (see its log)")
                state = state_of(name) if done is not None else None
            if state is None:  # stop requested
                reached[name] = "stopped"
                break
            reached[name] = state
            say(f"perception-fm up: {name} {state}")
    finally:
        executor.remove_node(node)
        executor.shutdown(timeout_sec=0)
        node.destroy_node()
        rclpy.try_shutdown(context=context)
    return reached
