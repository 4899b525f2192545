"""Managed (lifecycle) nodes over real DDS: every transition through the standard lifecycle_msgs services, outputs
only while active, the model's memory handed back by cleanup and taken again by configure, a failing configure
that leaves the node unconfigured saying why, autostart false, and ~/enable. One depth_node process (DA3-Small
architecture, random weights: ~100 MB of parameters, loaded in seconds) is shared by the depth tests; the other
four nodes run side by side in a second module-scoped group, each through its whole lifecycle."""
import os
import time
from pathlib import Path

import numpy as np
import pytest
from diagnostic_msgs.msg import DiagnosticArray
from lifecycle_msgs.msg import State, Transition
from lifecycle_msgs.srv import ChangeState, GetAvailableTransitions, GetState
from rcl_interfaces.msg import Parameter, ParameterType, ParameterValue
from rcl_interfaces.srv import SetParameters
from sensor_msgs.msg import CameraInfo, Image
from std_srvs.srv import SetBool, Trigger

from perception_fm.msg import DepthInfo
from perception_fm.ros.camera_info import make_camera_info
from perception_fm.ros.image_codec import numpy_to_image
from perception_fm.ros.tf import ns_to_time
from ros_probe import Probe, diagnostics_values, node_log, start_node, stop_node

pytestmark = pytest.mark.ros

TESTS = Path(__file__).resolve().parent
ERROR = 2  # diagnostic_msgs/DiagnosticStatus.ERROR
OK = 0


# Transitions' target states, to confirm a transition whose answer was lost (see call).
TARGET_STATE = {Transition.TRANSITION_CONFIGURE: "inactive", Transition.TRANSITION_ACTIVATE: "active",
                Transition.TRANSITION_DEACTIVATE: "inactive", Transition.TRANSITION_CLEANUP: "unconfigured"}
RESEND_S = 20.0


def call(probe, service_type, name, request, timeout=120.0, resend=False):
    """Call a service of the node under test and return the response, or None when no answer came (a load may
    take a while: generous). A fresh client's first answer can be lost on a loaded machine: the server answers
    once it has discovered the client's reply reader and waits only briefly for that (Fast DDS), so an idempotent
    request (`resend`) is sent again every RESEND_S seconds until one is answered."""
    client = probe.node.create_client(service_type, name)
    try:
        assert client.wait_for_service(timeout_sec=60), f"{name} not offered"
        deadline = time.monotonic() + timeout
        while True:
            future = client.call_async(request)
            window = min(RESEND_S if resend else timeout, deadline - time.monotonic())
            try:
                probe.wait_until(future.done, max(window, 0.0), f"{name} answered")
                return future.result()
            except AssertionError:
                if not resend or time.monotonic() >= deadline:
                    if resend:
                        raise
                    return None
    finally:
        probe.node.destroy_client(client)


def get_state(probe, node_name) -> str:
    return call(probe, GetState, f"/{node_name}/get_state", GetState.Request(), resend=True).current_state.label


def change_state(probe, node_name, transition_id) -> bool:
    """A transition is not idempotent, so it is sent once; when its answer is lost (see call), the node's state
    says whether it happened."""
    request = ChangeState.Request(transition=Transition(id=transition_id))
    answer = call(probe, ChangeState, f"/{node_name}/change_state", request, timeout=RESEND_S)
    if answer is not None:
        return answer.success
    target = TARGET_STATE[transition_id]
    try:
        probe.wait_until(lambda: get_state(probe, node_name) == target, 120.0, f"{node_name} {target}")
    except AssertionError:
        return False
    return True


def set_parameter(probe, node_name, name, value: str):
    request = SetParameters.Request(parameters=[Parameter(
        name=name, value=ParameterValue(type=ParameterType.PARAMETER_STRING, string_value=value))])
    result = call(probe, SetParameters, f"/{node_name}/set_parameters", request, resend=True)
    assert result.results[0].successful, result.results[0].reason


def rss_bytes(process) -> int:
    """Resident memory of the node process (VmRSS)."""
    with open(f"/proc/{process.pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


# -- depth_node: one process, autostart false ------------------------------------------------------------------

@pytest.fixture(scope="module")
def probe():
    probe = Probe("managed_probe")
    probe.record(DiagnosticArray, "/diagnostics")
    probe.record(DepthInfo, "/depth/info")
    yield probe
    probe.close()


@pytest.fixture(scope="module")
def depth(probe, da3_small_checkpoint):
    node = start_node("perception_fm.nodes.depth_node", "-p", "autostart:=false",
                      "-p", f"weights:={da3_small_checkpoint}", "-p", "process_res:=28", "-p", "input_qos:=reliable",
                      "-r", "image:=/managed/image", "-r", "camera_info:=/managed/camera_info")
    yield node
    log = stop_node(node)
    assert node.returncode == 0 and "Traceback" not in log, log


@pytest.fixture(scope="module")
def camera(probe):
    return probe.publisher(Image, "/managed/image"), probe.publisher(CameraInfo, "/managed/camera_info")


def send_frame(camera, stamp_ns):
    images, infos = camera
    rgb = np.zeros((24, 32, 3), np.uint8)
    rgb[:, :16] = 200
    image = numpy_to_image(rgb, "rgb8")
    info = make_camera_info(np.array([[30.0, 0, 16], [0, 30.0, 12], [0, 0, 1]]), 32, 24)
    for message in (image, info):
        message.header.stamp = ns_to_time(stamp_ns)
        message.header.frame_id = "camera"
    infos.publish(info)
    images.publish(image)


def outputs(probe) -> set[int]:
    return {m.header.stamp.sec * 10**9 + m.header.stamp.nanosec for m in probe.received("/depth/info")}


def subscribed(camera) -> bool:
    return all(publisher.get_subscription_count() > 0 for publisher in camera)


def depth_diagnostics(probe, depth, since: float = 0.0) -> dict:
    assert depth.poll() is None, "depth_node died:\n" + stop_node(depth)
    for message in reversed(probe.received("/diagnostics")):
        stamp = message.header.stamp.sec + message.header.stamp.nanosec * 1e-9
        if stamp < since:
            break
        for status in message.status:
            if "depth_node" in status.name:
                values = {kv.key: kv.value for kv in status.values}
                values["_level"] = int.from_bytes(status.level, "little") if isinstance(status.level, bytes) \
                    else int(status.level)
                values["_message"] = status.message
                return values
    return {}


def wait_diagnostics(probe, depth, predicate, what):
    """Wait for a depth_node diagnostic published after now that satisfies `predicate`."""
    since = time.time()
    probe.wait_until(lambda: predicate(depth_diagnostics(probe, depth, since)), 60, what)
    return depth_diagnostics(probe, depth, since)


def frame_goes_through(probe, camera, stamp_ns) -> None:
    """Send frames (new stamps from `stamp_ns`) until one comes out: the subscription may match late."""
    probe.wait_until(lambda: subscribed(camera), 60, "the node subscribed to its inputs")
    stamps = iter(range(stamp_ns, stamp_ns + 10**12, 10**6))

    def came_out():
        if outputs(probe) & sent:
            return True
        stamp = next(stamps)
        sent.add(stamp)
        send_frame(camera, stamp)
        return False
    sent: set[int] = set()
    probe.wait_until(came_out, 60, "a frame processed")


def test_autostart_false_comes_up_unconfigured_without_inputs(probe, depth, camera):
    assert get_state(probe, "depth_node") == "unconfigured"
    values = wait_diagnostics(probe, depth, lambda v: v.get("lifecycle_state") == "unconfigured", "diagnostics")
    assert values["_level"] == OK and "no model loaded" in values["_message"], values
    assert not any(publisher.get_subscription_count() for publisher in camera)  # nothing received, unconfigured
    available = call(probe, GetAvailableTransitions, "/depth_node/get_available_transitions",
                     GetAvailableTransitions.Request()).available_transitions
    assert {t.transition.label for t in available} == {"configure", "shutdown"}


def test_transitions_outputs_and_memory(probe, depth, camera, da3_small_checkpoint):
    parameter_bytes = (da3_small_checkpoint / "model.safetensors").stat().st_size
    assert parameter_bytes > 50e6  # a drop of this size stands far above the process's own noise
    if get_state(probe, "depth_node") != "unconfigured":
        pytest.skip("needs the node unconfigured (the test above)")
    unloaded = rss_bytes(depth)

    # configure: the model is loaded (inactive: no inputs, no outputs)
    assert change_state(probe, "depth_node", Transition.TRANSITION_CONFIGURE)
    assert get_state(probe, "depth_node") == "inactive"
    loaded = rss_bytes(depth)
    values = wait_diagnostics(probe, depth, lambda v: v.get("lifecycle_state") == "inactive", "inactive diagnostics")
    assert values["weights"] == str(da3_small_checkpoint) and "not processing" in values["_message"], values
    assert not any(publisher.get_subscription_count() for publisher in camera)

    # activate: inputs subscribed, frames processed and published
    assert change_state(probe, "depth_node", Transition.TRANSITION_ACTIVATE)
    assert get_state(probe, "depth_node") == "active"
    frame_goes_through(probe, camera, 1_000_000_000)

    # deactivate: the inputs go (a frame sent now reaches nobody), the model stays
    assert change_state(probe, "depth_node", Transition.TRANSITION_DEACTIVATE)
    assert get_state(probe, "depth_node") == "inactive"
    probe.wait_until(lambda: not any(publisher.get_subscription_count() for publisher in camera), 60,
                     "the node unsubscribed")
    unseen = 5_000_000_000
    send_frame(camera, unseen)
    before = len(outputs(probe))

    # activate again: outputs resume; the frame sent while inactive never came out
    assert change_state(probe, "depth_node", Transition.TRANSITION_ACTIVATE)
    frame_goes_through(probe, camera, 6_000_000_000)
    assert unseen not in outputs(probe) and len(outputs(probe)) > before

    # deactivate + cleanup: the model's memory (and what its frames built) is handed back to the system
    assert change_state(probe, "depth_node", Transition.TRANSITION_DEACTIVATE)
    deactivated = rss_bytes(depth)
    cuda_before = depth_diagnostics(probe, depth).get("cuda_allocated_mb")
    assert change_state(probe, "depth_node", Transition.TRANSITION_CLEANUP)
    assert get_state(probe, "depth_node") == "unconfigured"
    cleaned = rss_bytes(depth)
    values = wait_diagnostics(probe, depth, lambda v: v.get("lifecycle_state") == "unconfigured", "unconfigured")
    assert values["weights"] == "" and values["_level"] == OK, values
    if cuda_before is not None:  # on a GPU: torch's own count of the memory it holds
        assert float(values["cuda_allocated_mb"]) < float(cuda_before) - 0.8 * parameter_bytes / 2**20, values

    # configure again: the model comes back
    assert change_state(probe, "depth_node", Transition.TRANSITION_CONFIGURE)
    reloaded = rss_bytes(depth)
    print(f"depth_node RSS: unconfigured {unloaded / 1e6:.0f} MB, configured {loaded / 1e6:.0f} MB, after frames "
          f"and deactivate {deactivated / 1e6:.0f} MB, after cleanup {cleaned / 1e6:.0f} MB, configured again "
          f"{reloaded / 1e6:.0f} MB; parameters {parameter_bytes / 1e6:.0f} MB")
    assert loaded - unloaded > parameter_bytes  # torch, the plugin and the model came in with configure
    assert deactivated - cleaned > 0.8 * parameter_bytes, (deactivated, cleaned, parameter_bytes)
    assert reloaded - cleaned > 0.8 * parameter_bytes, (reloaded, cleaned, parameter_bytes)
    assert "model released" in node_log(depth)


def test_a_failing_configure_stays_unconfigured_with_the_reason(probe, depth, tmp_path, da3_small_checkpoint):
    state = get_state(probe, "depth_node")
    if state == "active":
        assert change_state(probe, "depth_node", Transition.TRANSITION_DEACTIVATE)
    if state in ("active", "inactive"):
        assert change_state(probe, "depth_node", Transition.TRANSITION_CLEANUP)
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    (damaged / "config.json").write_text((da3_small_checkpoint / "config.json").read_text())
    (damaged / "model.safetensors").write_bytes(b"\0" * 100)
    set_parameter(probe, "depth_node", "weights", str(damaged))
    assert get_state(probe, "depth_node") == "unconfigured"  # a parameter change configures nothing by itself

    assert not change_state(probe, "depth_node", Transition.TRANSITION_CONFIGURE)
    assert get_state(probe, "depth_node") == "unconfigured"  # the node is alive, and says why
    values = wait_diagnostics(probe, depth, lambda v: v.get("_level") == ERROR, "an ERROR diagnostic")
    assert str(damaged) in values["_message"] and "safetensors" in values["_message"], values
    assert values["lifecycle_state"] == "unconfigured"

    # Fixed: the node was asked to be configured, so good weights configure it
    set_parameter(probe, "depth_node", "weights", str(da3_small_checkpoint))
    probe.wait_until(lambda: get_state(probe, "depth_node") == "inactive", 120, "configured with good weights")
    values = wait_diagnostics(probe, depth, lambda v: v.get("lifecycle_state") == "inactive", "inactive")
    assert values["_level"] == OK, values


def test_enable_and_reload_model_services(probe, depth, camera):
    state = get_state(probe, "depth_node")
    if state in ("active", "inactive"):
        if state == "active":
            assert change_state(probe, "depth_node", Transition.TRANSITION_DEACTIVATE)
        assert change_state(probe, "depth_node", Transition.TRANSITION_CLEANUP)
    # ~/enable true from unconfigured: configure, then activate
    answer = call(probe, SetBool, "/depth_node/enable", SetBool.Request(data=True), resend=True)
    assert answer.success and answer.message == "active", answer
    frame_goes_through(probe, camera, 20_000_000_000)
    # ~/reload_model in place keeps the state
    answer = call(probe, Trigger, "/depth_node/reload_model", Trigger.Request())
    assert answer.success and get_state(probe, "depth_node") == "active", answer
    frame_goes_through(probe, camera, 30_000_000_000)
    # ~/enable false: inactive, the model kept
    answer = call(probe, SetBool, "/depth_node/enable", SetBool.Request(data=False), resend=True)
    assert answer.success and get_state(probe, "depth_node") == "inactive", answer
    values = wait_diagnostics(probe, depth, lambda v: v.get("lifecycle_state") == "inactive", "inactive")
    assert values["weights"] != ""


def test_shutdown_finalizes_and_the_process_stops_cleanly(probe, depth):
    """Last: the shared node is finalized (shutdown is the one transition out of every primary state)."""
    assert get_state(probe, "depth_node") in ("unconfigured", "inactive", "active")
    request = ChangeState.Request(transition=Transition(label="shutdown"))
    assert call(probe, ChangeState, "/depth_node/change_state", request).success
    assert get_state(probe, "depth_node") == "finalized"
    assert depth.poll() is None  # finalized, not gone: stopped by its supervisor like any node


# -- `perception-fm up` drives the nodes whose config sets autostart false -------------------------------------

def test_up_configures_and_activates_nodes_with_autostart_false(probe, tmp_path, da3_small_checkpoint):
    import signal
    import subprocess
    import sys

    import yaml

    config = tmp_path / "graph.yaml"
    config.write_text(yaml.safe_dump({"nodes": {"up_depth": {"executable": "depth_node", "parameters": {
        "weights": str(da3_small_checkpoint), "process_res": 28, "autostart": False},
        "remappings": {"image": "/up/image", "camera_info": "/up/camera_info"}}}}))
    log = open(tmp_path / "up.log", "w+")
    up = subprocess.Popen([sys.executable, "-m", "perception_fm.cli", "up", str(config), "--no-budget"],
                          stdout=log, stderr=subprocess.STDOUT)
    try:
        def active():
            assert up.poll() is None, "up ended"
            return "perception-fm up: /up_depth active" in open(tmp_path / "up.log").read()
        probe.wait_until(active, 120, "up reporting the node active")
        assert get_state(probe, "up_depth") == "active"
        images = probe.publisher(Image, "/up/image")
        probe.wait_until(lambda: images.get_subscription_count() > 0, 60, "the active node subscribed")
        up.send_signal(signal.SIGINT)
        up.wait(timeout=120)
    finally:
        if up.poll() is None:
            up.kill()
            up.wait()
        log.seek(0)
        text = log.read()
        log.close()
    assert up.returncode == 0 and "Traceback" not in text, text


# -- the other four nodes: each through its whole lifecycle, side by side -------------------------------------

# node -> (its arguments, an input topic it subscribes to only while active)
OTHER_NODES = {
    "concept_node": (("-r", "image:=/m4/image", "-r", "concepts:=/m4/concepts"), "/m4/image"),
    "object_mesh_node": (("-p", "model:=scripted-objects", "-r", "instances:=/m4/om_instances"), "/m4/om_instances"),
    "body_node": (("-p", "model:=scripted-body", "-r", "instances:=/m4/body_instances"), "/m4/body_instances"),
    "speech_node": (("-r", "audio:=/m4/audio"), "/m4/audio"),
}


@pytest.fixture(scope="module")
def other_nodes(probe, tmp_path_factory):
    from sam3_tiny import save_tiny_sam3
    from scripted_meshes import plugin_path

    sam3 = save_tiny_sam3(tmp_path_factory.mktemp("sam3"))
    plugins = plugin_path(tmp_path_factory.mktemp("plugins"))
    env = {"PYTHONPATH": os.pathsep.join([str(plugins), str(TESTS), os.environ.get("PYTHONPATH", "")]),
           "HF_HUB_OFFLINE": "1"}
    nodes = {}
    for name, (args, _) in OTHER_NODES.items():
        extra = ("-p", f"weights:={sam3}") if name == "concept_node" else ()
        nodes[name] = start_node(f"perception_fm.nodes.{name}", "-p", "autostart:=false", *extra, *args, env=env)
    yield nodes
    logs = {name: stop_node(node) for name, node in nodes.items()}
    for name, node in nodes.items():
        assert node.returncode == 0 and "Traceback" not in logs[name], f"{name}:\n{logs[name]}"


@pytest.mark.parametrize("name", list(OTHER_NODES))
def test_every_node_goes_through_its_lifecycle(probe, other_nodes, name):
    node, (_, input_topic) = other_nodes[name], OTHER_NODES[name]

    def inputs() -> int:
        assert node.poll() is None, f"{name} died:\n" + stop_node(node)
        return probe.node.count_subscribers(input_topic)

    def diagnostics() -> dict:
        return diagnostics_values(probe, name) or {}

    assert get_state(probe, name) == "unconfigured" and inputs() == 0
    if name == "concept_node":  # commands are kept in every state: subscribed while unconfigured too
        probe.wait_until(lambda: probe.node.count_subscribers("/m4/concepts") > 0, 60, "concepts subscribed")
    assert change_state(probe, name, Transition.TRANSITION_CONFIGURE), node_log(node)
    probe.wait_until(lambda: diagnostics().get("lifecycle_state") == "inactive" and diagnostics().get("weights"),
                     60, f"{name} inactive with a model")
    assert inputs() == 0
    assert change_state(probe, name, Transition.TRANSITION_ACTIVATE)
    probe.wait_until(lambda: inputs() > 0, 60, f"{name} subscribed to {input_topic}")
    assert change_state(probe, name, Transition.TRANSITION_DEACTIVATE)
    probe.wait_until(lambda: inputs() == 0, 60, f"{name} unsubscribed from {input_topic}")
    assert change_state(probe, name, Transition.TRANSITION_CLEANUP)
    probe.wait_until(lambda: diagnostics().get("lifecycle_state") == "unconfigured"
                     and diagnostics().get("weights") == "", 60, f"{name} unconfigured without a model")
    # ~/enable brings it all the way up again
    assert call(probe, SetBool, f"/{name}/enable", SetBool.Request(data=True), resend=True).success
    probe.wait_until(lambda: inputs() > 0, 60, f"{name} subscribed again")
