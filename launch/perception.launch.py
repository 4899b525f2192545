"""Start the nodes of a graph config on a robot, each in its own process, as managed (lifecycle) nodes.

  ros2 launch perception_fm perception.launch.py config:=/path/to/graph.yaml [use_sim_time:=true] [rviz:=true]
                                                 [managed:=true] [activate:=false]

The graph config (perception_fm/graph.py; examples in share/perception_fm/config) is the same file that
`perception-fm up` and `perception-fm replay` read, so the launched nodes match the offline replay.

Lifecycle: every node is a launch_ros LifecycleNode (`ros2 lifecycle set`, and launch's ChangeState events, reach
it). A node brings itself up (autostart, its default) unless its config sets `autostart: false` or managed:=true
is given: then this launch file drives it, one node at a time in config order: configure, and once it is inactive
(its model loaded) activate it and configure the next, so that no two models load at the same time.
activate:=false stops the driven nodes at inactive (models loaded, nothing processed: ~/enable or
`ros2 lifecycle set <node> activate` later).
"""
import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, EmitEvent, OpaqueFunction, RegisterEventHandler
from launch.conditions import IfCondition
from launch.events import matches_action
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import LifecycleNode, Node
from launch_ros.event_handlers import OnStateTransition
from launch_ros.events.lifecycle import ChangeState
from lifecycle_msgs.msg import Transition

from perception_fm.graph import load_graph

SHARE = get_package_share_directory("perception_fm")


def _true(context, name: str) -> bool:
    return LaunchConfiguration(name).perform(context).lower() in ("true", "1")


def _change_state(node, transition_id: int) -> EmitEvent:
    return EmitEvent(event=ChangeState(lifecycle_node_matcher=matches_action(node), transition_id=transition_id))


def _graph_nodes(context):
    graph = load_graph(LaunchConfiguration("config").perform(context))
    use_sim_time = _true(context, "use_sim_time")
    managed_by_launch = _true(context, "managed")
    nodes, driven = [], []
    for config in graph.nodes:
        parameters = {**config.parameters, "use_sim_time": use_sim_time}
        drive = managed_by_launch or not config.resolved_parameters()["autostart"]
        if drive:
            parameters["autostart"] = False
        node = LifecycleNode(
            package="perception_fm",
            executable=config.executable,
            name=config.name,
            namespace=config.namespace or "",
            parameters=[parameters],
            remappings=list(config.remappings.items()),
            output="screen",
            emulate_tty=True,
        )
        nodes.append(node)
        if drive:
            driven.append(node)
    actions = list(nodes)
    if driven:
        # one model load at a time: each node's configure waits for the previous one's (success or not)
        actions.append(_change_state(driven[0], Transition.TRANSITION_CONFIGURE))
        activate = _true(context, "activate")
        for index, node in enumerate(driven):
            following = [_change_state(driven[index + 1], Transition.TRANSITION_CONFIGURE)] \
                if index + 1 < len(driven) else []
            actions.append(RegisterEventHandler(OnStateTransition(
                target_lifecycle_node=node, start_state="configuring", goal_state="inactive", handle_once=True,
                entities=([_change_state(node, Transition.TRANSITION_ACTIVATE)] if activate else []) + following)))
            if following:  # a failed configure (back to unconfigured) must not hold the others back
                actions.append(RegisterEventHandler(OnStateTransition(
                    target_lifecycle_node=node, start_state="configuring", goal_state="unconfigured",
                    handle_once=True, entities=following)))
    return actions


def generate_launch_description():
    return LaunchDescription([
        DeclareLaunchArgument("config", default_value=os.path.join(SHARE, "config", "depth.yaml"),
                              description="graph config: nodes, remappings, parameters"),
        DeclareLaunchArgument("use_sim_time", default_value="false",
                              description="use /clock (set true when playing a bag with --clock)"),
        DeclareLaunchArgument("rviz", default_value="false", description="start RViz with our display config"),
        DeclareLaunchArgument("managed", default_value="false",
                              description="true: this launch file configures and activates every node, one model "
                                          "load at a time (false: only the nodes whose config sets autostart false)"),
        DeclareLaunchArgument("activate", default_value="true",
                              description="false: the nodes this launch file drives stop at inactive (model loaded)"),
        OpaqueFunction(function=_graph_nodes),
        Node(
            package="rviz2", executable="rviz2", name="rviz2",
            arguments=["-d", os.path.join(SHARE, "config", "perception_fm.rviz")],
            parameters=[{"use_sim_time": LaunchConfiguration("use_sim_time")}],
            condition=IfCondition(LaunchConfiguration("rviz")),
        ),
    ])
