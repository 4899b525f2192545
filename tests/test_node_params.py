"""Parameters of a node as `ros2 param describe` shows them: descriptors, constraints, licences."""
import pytest
import rclpy
from rclpy.context import Context
from rclpy.parameter import Parameter

from perception_fm.nodes.depth_node import DepthNode

pytestmark = pytest.mark.ros


@pytest.fixture
def node():
    context = Context()
    rclpy.init(context=context)
    node = DepthNode(context=context, parameter_overrides=[Parameter("model", value="none-such")])
    yield node
    node.destroy_node()
    rclpy.shutdown(context=context)


def test_model_parameter_lists_installed_models_with_licences(node):
    description = node.describe_parameter("model").description
    assert "da3-small (Apache-2.0)" in description and "da3-large (CC-BY-NC-4.0" in description


def test_descriptors_carry_ranges_choices_and_read_only(node):
    window = node.describe_parameter("window_size")
    assert window.integer_range[0].from_value == 1 and window.integer_range[0].to_value == 64
    assert node.describe_parameter("pose_method").additional_constraints == "one of: camera_head, ray"
    assert node.describe_parameter("image_transport").read_only
    results = node.set_parameters([Parameter("pose_method", value="magic"), Parameter("window_size", value=0),
                                   Parameter("cloud_stride", value=4)])
    assert [r.successful for r in results] == [False, False, True]
    assert "camera_head, ray" in results[0].reason
    assert node.values["cloud_stride"] == 4 and node.values["window_size"] == 1


# -- overrides given to a node (-p, --params-file, parameter_overrides) are checked like a config file ----------

def construct(*overrides):
    context = Context()
    rclpy.init(context=context)
    try:
        node = DepthNode(context=context, parameter_overrides=[Parameter("model", value="none-such"), *overrides])
        node.destroy_node()
    finally:
        rclpy.shutdown(context=context)


@pytest.mark.parametrize("override, pattern", [
    (Parameter("proces_res", value=56), r"unknown parameter 'proces_res'.*did you mean 'process_res'"),
    (Parameter("process_res", value="big"), r"'process_res' must be int, got 'big'"),
    (Parameter("process_res", value=5), r"'process_res' must be >= 14"),
    (Parameter("confidence_threshold", value=float("nan")), r"'confidence_threshold' must be finite"),
    (Parameter("max_cloud_depth", value=float("inf")), r"'max_cloud_depth' must be finite"),
    (Parameter("keyframe_every", value=2**64), r"'keyframe_every' must be <= 9223372036854775807"),
    (Parameter("pose_method", value="magic"), r"'pose_method' must be one of camera_head, ray"),
], ids=["typo", "wrong_type", "below_min", "nan", "inf", "beyond_int64", "choice"])
def test_bad_overrides_are_one_line_naming_node_and_parameter(override, pattern):
    from perception_fm.nodes.params import ParameterError

    with pytest.raises(ParameterError, match=pattern) as caught:
        construct(override)
    assert "\n" not in str(caught.value) and "depth_node" in str(caught.value)


def test_ros_own_parameters_and_an_int_for_a_float_are_accepted():
    context = Context()
    rclpy.init(context=context)
    node = DepthNode(context=context, parameter_overrides=[
        Parameter("model", value="none-such"), Parameter("use_sim_time", value=True),
        Parameter("confidence_threshold", value=1)])
    try:
        assert node.values["confidence_threshold"] == 1.0
        assert node.get_parameter("confidence_threshold").value == 1.0
        assert node.get_parameter("use_sim_time").value is True
    finally:
        node.destroy_node()
        rclpy.shutdown(context=context)


@pytest.mark.parametrize("argument, named", [("proces_res:=56", "proces_res"), ("process_res:=big", "process_res")])
def test_node_process_exits_2_with_one_error_line_on_a_bad_override(argument, named):
    import subprocess

    from ros_probe import start_node, stop_node

    process = start_node("perception_fm.nodes.depth_node", "-p", "model:=none-such", "-p", argument)
    try:
        code = process.wait(timeout=120)  # exits at start; a node that stays up fails here
    except subprocess.TimeoutExpired:
        code = None
    log = stop_node(process)
    assert code == 2, log
    assert "Traceback" not in log, log
    errors = [line for line in log.splitlines() if "ERROR" in line]
    assert len(errors) == 1 and named in errors[0], log


# -- speech_node: spoken commands are user intent; a burst must never be overwritten at the sender ---------------

@pytest.mark.parametrize("output_qos", ["reliable", "sensor_data"])
def test_speech_node_concepts_publisher_keeps_a_burst_of_commands(output_qos):
    from rclpy.qos import HistoryPolicy, ReliabilityPolicy

    from perception_fm.nodes.speech_node import SpeechNode

    context = Context()
    rclpy.init(context=context)
    node = SpeechNode(context=context, parameter_overrides=[Parameter("model", value="none-such"),
                                                            Parameter("output_qos", value=output_qos)])
    try:
        qos = node._concepts.qos_profile
        # KEEP_LAST 10 overwrote unsent commands when utterances came faster than DDS delivered them; best
        # effort would not even match concept_node's reliable keep-all subscription
        assert qos.reliability == ReliabilityPolicy.RELIABLE
        assert qos.history == HistoryPolicy.KEEP_ALL or qos.depth >= 1000, qos
    finally:
        node.destroy_node()
        rclpy.shutdown(context=context)


# -- params files shared by every node of a robot (`/**:` sections) ---------------------------------------------

def wait_for_log(process, condition, timeout: float = 120.0) -> str:
    """The node's log once `condition(log)` holds (fails if the process ends first or the deadline passes)."""
    import time

    from ros_probe import node_log

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        log = node_log(process)
        if condition(log):
            return log
        assert process.poll() is None, f"node ended (exit {process.returncode}):\n{log}"
        time.sleep(0.1)
    raise AssertionError(f"log condition not met within {timeout} s:\n{node_log(process)}")


def params_file(tmp_path, document: dict):
    import yaml

    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(document))
    return str(path)


@pytest.mark.parametrize("document, named", [
    ({"/depth_node": {"ros__parameters": {"proces_res": 56}}}, "proces_res"),  # a typo addressed to this node
    ({"depth_node": {"ros__parameters": {"proces_res": 56}}}, "proces_res"),  # (its name without the slash)
    ({"/**/depth_node": {"ros__parameters": {"proces_res": 56}}}, "proces_res"),  # (in any namespace)
    ({"/**": {"ros__parameters": {"process_res": "big"}}}, "process_res"),  # ours, with a bad value
], ids=["own_section", "own_section_relative", "own_name_any_namespace", "wildcard_bad_value"])
def test_params_file_errors_for_this_node_stop_it(tmp_path, document, named):
    import subprocess

    from ros_probe import start_node, stop_node

    process = start_node("perception_fm.nodes.depth_node", "-p", "model:=none-such", "--params-file",
                         params_file(tmp_path, document))
    try:
        code = process.wait(timeout=120)
    except subprocess.TimeoutExpired:
        code = None
    log = stop_node(process)
    assert code == 2 and "Traceback" not in log, log
    errors = [line for line in log.splitlines() if "ERROR" in line]
    assert len(errors) == 1 and named in errors[0], log


def test_unknown_keys_of_a_wildcard_section_are_one_warning_and_the_node_starts(tmp_path):
    """A robot's shared params file: `/**` gives every node use_sim_time and other nodes' parameters. The
    node warns once, naming the keys it does not have, and runs (before: exit 2 on the first one)."""
    from ros_probe import start_node, stop_node

    document = {"/**": {"ros__parameters": {"use_sim_time": False, "concepts": "red mug", "phrase_list": "a,b",
                                            "window_size": 2}},
                "/*": {"ros__parameters": {"person_concepts": "person"}},
                "/depth_node": {"ros__parameters": {"model": "none-such"}},
                "/concept_node": {"ros__parameters": {"detect_every": 3}}}  # not for this node: not applied
    process = start_node("perception_fm.nodes.depth_node", "--params-file", params_file(tmp_path, document))
    try:
        # the node is up once its worker reports the (deliberately) unknown model
        log = wait_for_log(process, lambda log: "could not be configured" in log)
    finally:
        log = stop_node(process)
    assert process.returncode == 0 and "Traceback" not in log, log
    warnings = [line for line in log.splitlines() if "WARN" in line and "wildcard" in line]
    assert len(warnings) == 1, log
    assert all(name in warnings[0] for name in ("concepts", "phrase_list", "person_concepts")), warnings
    assert "window_size" not in warnings[0] and "detect_every" not in log, warnings


def test_which_params_file_names_are_shared_by_wildcard_sections(tmp_path):
    """In process, with the node's own arguments (Node(cli_args=)): nested and path forms, `*` (one name) and
    `**` (any names), sections for other nodes, `-p` and parameter_overrides always addressed."""
    from perception_fm.nodes.params import wildcard_only_names

    document = {"/**": {"ros__parameters": {"a": 1, "nested": {"b": 2}, "window_size": 3, "keyframe_every": 4}},
                "/*": {"ros__parameters": {"one_level": 1}},  # the root namespace: this node (no namespace)
                "/*/*": {"ros__parameters": {"two_levels": 1}},  # not this node
                "robot": {"depth_node": {"ros__parameters": {"other_ns": 1}}},  # /robot/depth_node: not this one
                "/depth_node": {"ros__parameters": {"window_size": 5}},
                "/**/depth_node": {"ros__parameters": {"cloud_stride": 2}}}
    path = params_file(tmp_path, document)
    context = Context()
    rclpy.init(context=context)
    args = ["--ros-args", "-p", "model:=none-such", "-p", "keyframe_every:=7", "--params-file", path]
    try:
        node = DepthNode(context=context, cli_args=args)
        try:
            assert wildcard_only_names(node, args) == {"a", "nested.b", "one_level"}
            assert (node.values["model"], node.values["window_size"], node.values["cloud_stride"]) == \
                ("none-such", 5, 2)
        finally:
            node.destroy_node()
        with pytest.raises(Exception, match="unknown parameter 'a'"):  # a name given in code is addressed
            DepthNode(context=context, cli_args=args, parameter_overrides=[Parameter("a", value=1)])
    finally:
        rclpy.shutdown(context=context)
