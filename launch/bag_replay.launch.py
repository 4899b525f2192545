"""Live replay on a robot or workstation: `ros2 bag play --clock` feeding the graph's nodes on sim time.

  ros2 launch perception_fm bag_replay.launch.py bag:=/path/to/bag config:=/path/to/graph.yaml [rate:=0.5] [rviz:=true]

Unlike `perception-fm replay` (offline, every frame, deterministic), this runs the real nodes at the bag's
rate: the latest-frame policy drops frames the model cannot keep up with, as it would on the robot.
"""
import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, ExecuteProcess, IncludeLaunchDescription
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import LaunchConfiguration

SHARE = get_package_share_directory("perception_fm")


def generate_launch_description():
    return LaunchDescription([
        DeclareLaunchArgument("bag", description="rosbag2 to play"),
        DeclareLaunchArgument("config", default_value=os.path.join(SHARE, "config", "depth.yaml")),
        DeclareLaunchArgument("rate", default_value="1.0", description="playback rate"),
        DeclareLaunchArgument("rviz", default_value="false"),
        ExecuteProcess(
            cmd=["ros2", "bag", "play", LaunchConfiguration("bag"), "--clock", "--rate", LaunchConfiguration("rate")],
            output="screen",
        ),
        IncludeLaunchDescription(
            PythonLaunchDescriptionSource(os.path.join(SHARE, "launch", "perception.launch.py")),
            launch_arguments={"config": LaunchConfiguration("config"), "use_sim_time": "true",
                              "rviz": LaunchConfiguration("rviz")}.items(),
        ),
    ])
