"""Start the nodes of a graph config on a robot, each in its own process.

  ros2 launch perception_fm perception.launch.py config:=/path/to/graph.yaml [use_sim_time:=true] [rviz:=true]

The graph config (perception_fm/graph.py; examples in share/perception_fm/config) is the same file that
`perception-fm up` and `perception-fm replay` read, so the launched nodes match the offline replay.
"""
import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from perception_fm.graph import load_graph

SHARE = get_package_share_directory("perception_fm")


def _graph_nodes(context):
    graph = load_graph(LaunchConfiguration("config").perform(context))
    use_sim_time = LaunchConfiguration("use_sim_time").perform(context).lower() in ("true", "1")
    return [
        Node(
            package="perception_fm",
            executable=node.executable,
            name=node.name,
            namespace=node.namespace or "",
            parameters=[{**node.parameters, "use_sim_time": use_sim_time}],
            remappings=list(node.remappings.items()),
            output="screen",
            emulate_tty=True,
        )
        for node in graph.nodes
    ]


def generate_launch_description():
    return LaunchDescription([
        DeclareLaunchArgument("config", default_value=os.path.join(SHARE, "config", "depth.yaml"),
                              description="graph config: nodes, remappings, parameters"),
        DeclareLaunchArgument("use_sim_time", default_value="false",
                              description="use /clock (set true when playing a bag with --clock)"),
        DeclareLaunchArgument("rviz", default_value="false", description="start RViz with our display config"),
        OpaqueFunction(function=_graph_nodes),
        Node(
            package="rviz2", executable="rviz2", name="rviz2",
            arguments=["-d", os.path.join(SHARE, "config", "perception_fm.rviz")],
            parameters=[{"use_sim_time": LaunchConfiguration("use_sim_time")}],
            condition=IfCondition(LaunchConfiguration("rviz")),
        ),
    ])
