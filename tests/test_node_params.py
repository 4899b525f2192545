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
