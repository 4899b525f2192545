"""Graph configs (shared by launch files, `perception-fm up` and `replay`) and the CLI around them."""
import py_compile
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from perception_fm.cli import main
from perception_fm.graph import load_graph

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "config").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_bundled_configs_are_valid(path):
    graph = load_graph(path)
    for node in graph.nodes:
        values = node.resolved_parameters()
        assert values["model"], "every bundled config names its model"
        assert node.topic("image").startswith("/") or values.get("cameras")  # a rig names its cameras' topics


def write(tmp_path, document) -> Path:
    path = tmp_path / "graph.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


def test_parameter_typo_and_bad_values_are_rejected_with_the_node_name(tmp_path):
    with pytest.raises(ValueError, match=r"node 'depth_node'.*unknown parameter\(s\) windw_size"):
        load_graph(write(tmp_path, {"nodes": {"depth_node": {"parameters": {"windw_size": 3}}}}))
    with pytest.raises(ValueError, match="window_size.*>= 1"):
        load_graph(write(tmp_path, {"nodes": {"depth_node": {"parameters": {"window_size": 0}}}}))
    with pytest.raises(ValueError, match="pose_method.*camera_head, ray"):
        load_graph(write(tmp_path, {"nodes": {"depth_node": {"parameters": {"pose_method": "magic"}}}}))
    with pytest.raises(ValueError, match="unknown executable 'mapper_node'"):
        load_graph(write(tmp_path, {"nodes": {"x": {"executable": "mapper_node"}}}))
    with pytest.raises(ValueError, match="non-empty 'nodes'"):
        load_graph(write(tmp_path, {"nodes": {}}))


def test_topics_resolve_through_remappings_and_namespace(tmp_path):
    graph = load_graph(write(tmp_path, {"nodes": {"depth_node": {
        "namespace": "front", "remappings": {"image": "/cam/image"}, "parameters": {"window_size": 2}}}}))
    node = graph.nodes[0]
    assert node.topic("image") == "/cam/image"
    assert node.topic("depth/image") == "/front/depth/image"
    params = yaml.safe_load(graph.ros_params_yaml())
    assert params == {"/front/depth_node": {"ros__parameters": {"window_size": 2}}}


def test_up_dry_run_prints_one_process_per_node_with_ros_arguments(tmp_path, capsys):
    config = write(tmp_path, {"nodes": {"depth_node": {
        "remappings": {"image": "/cam/image", "camera_info": "/cam/info"}, "parameters": {"model": "da3-small"}}}})
    assert main(["up", str(config), "--dry-run"]) == 0
    out = capsys.readouterr().out
    command = next(line for line in out.splitlines() if "perception_fm.nodes.depth_node" in line)
    assert "-r __node:=depth_node" in command and "-r image:=/cam/image" in command
    assert "--params-file" in command


def test_cli_reports_config_errors_without_a_traceback(tmp_path):
    config = write(tmp_path, {"nodes": {"depth_node": {"parameters": {"device": 3}}}})
    result = subprocess.run([sys.executable, "-m", "perception_fm.cli", "up", str(config), "--dry-run"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "device" in result.stderr and "must be str" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("path", sorted((ROOT / "launch").glob("*.launch.py")), ids=lambda p: p.name)
def test_launch_files_compile(path):
    py_compile.compile(str(path), doraise=True)


def test_launch_file_builds_the_graph_where_ros2_launch_exists():
    pytest.importorskip("launch_ros", reason="launch_ros comes from a ROS distro (apt), not from PyPI")
    import importlib.util

    from launch import LaunchContext
    from launch_ros.actions import LifecycleNode

    spec = importlib.util.spec_from_file_location("perception_launch", ROOT / "launch" / "perception.launch.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    description = module.generate_launch_description()
    context = LaunchContext()
    context.launch_configurations.update({"config": str(ROOT / "config" / "depth.yaml"), "use_sim_time": "true"})
    opaque = next(entity for entity in description.entities if type(entity).__name__ == "OpaqueFunction")
    nodes = opaque.execute(context)
    assert [type(n) for n in nodes] == [LifecycleNode]  # managed nodes; the config's node brings itself up


# -- every field of a graph config is checked at load: one line naming the node and the field, exit 2 ------

BAD_CONFIGS = {
    "entry_is_an_int": ("nodes:\n  depth_node: 3\n", r"node 'depth_node'.*mapping"),
    "node_name_is_an_int": ("nodes:\n  5:\n    executable: depth_node\n", r"node 5.*name"),
    "remappings_as_a_list": ("nodes:\n  depth_node:\n    remappings: [image, /cam/image]\n",
                             r"node 'depth_node'.*remappings.*mapping"),
    "remapping_target_not_a_name": ("nodes:\n  depth_node:\n    remappings: {image: 'a b'}\n",
                                    r"node 'depth_node'.*remapping 'image'"),
    "parameters_as_a_string": ("nodes:\n  depth_node:\n    parameters: window_size=3\n",
                               r"node 'depth_node'.*parameters.*mapping"),
    "namespace_as_a_list": ("nodes:\n  depth_node:\n    namespace: [a]\n", r"node 'depth_node'.*namespace"),
    "executable_as_a_list": ("nodes:\n  depth_node:\n    executable: [depth_node]\n",
                             r"node 'depth_node'.*executable"),
    "int_beyond_int64": ("nodes:\n  depth_node:\n    parameters: {keyframe_every: 100000000000000000000000}\n",
                         r"node 'depth_node'.*'keyframe_every'"),
    "int_as_a_huge_float": ("nodes:\n  depth_node:\n    parameters: {keyframe_every: 1.0e+23}\n",
                            r"node 'depth_node'.*'keyframe_every'"),
    "int_as_exponent_string": ("nodes:\n  depth_node:\n    parameters: {keyframe_every: 1e23}\n",
                               r"node 'depth_node'.*'keyframe_every'"),
    "float_nan": ("nodes:\n  depth_node:\n    parameters: {confidence_threshold: .nan}\n",
                  r"node 'depth_node'.*'confidence_threshold'.*finite"),
    "float_inf": ("nodes:\n  depth_node:\n    parameters: {max_cloud_depth: .inf}\n",
                  r"node 'depth_node'.*'max_cloud_depth'.*finite"),
    "float_as_a_huge_int": ("nodes:\n  depth_node:\n    parameters: {max_cloud_depth: " + "9" * 400 + "}\n",
                            r"node 'depth_node'.*'max_cloud_depth'"),
    "list_value": ("nodes:\n  depth_node:\n    parameters: {process_res: [504]}\n",
                   r"node 'depth_node'.*'process_res'.*int"),
    "sim_time_not_bool": ("nodes:\n  depth_node:\n    parameters: {use_sim_time: 'yes please'}\n",
                          r"node 'depth_node'.*'use_sim_time'.*bool"),
    "unknown_top_level_key": ("nodes:\n  depth_node: {}\nnodse: {}\n", r"nodse"),
    "document_is_a_list": ("- depth_node\n", r"mapping"),
}


@pytest.mark.parametrize("name", sorted(BAD_CONFIGS))
def test_bad_configs_are_one_line_naming_the_node_and_field(tmp_path, name, capsys):
    text, pattern = BAD_CONFIGS[name]
    config = tmp_path / "graph.yaml"
    config.write_text(text)
    with pytest.raises(ValueError, match=pattern) as caught:
        load_graph(config)
    assert "\n" not in str(caught.value)
    assert main(["up", str(config), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_unknown_parameter_suggests_the_closest_name(tmp_path):
    with pytest.raises(ValueError, match=r"proces_res.*did you mean 'process_res'"):
        load_graph(write(tmp_path, {"nodes": {"depth_node": {"parameters": {"proces_res": 56}}}}))


def test_params_file_carries_checked_values_ros_accepts(tmp_path):
    """An int for a float parameter is written as a float: ROS would refuse an INTEGER for a DOUBLE."""
    graph = load_graph(write(tmp_path, {"nodes": {"depth_node": {"parameters": {"confidence_threshold": 1}}}}))
    params = yaml.safe_load(graph.ros_params_yaml())
    value = params["depth_node"]["ros__parameters"]["confidence_threshold"]
    assert value == 1.0 and isinstance(value, float)
