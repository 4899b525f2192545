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
