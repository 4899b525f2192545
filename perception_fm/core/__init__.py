"""Building blocks without ROS or model dependencies."""
