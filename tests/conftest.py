"""Shared test set-up.

Every test session gets its own ROS domain and localhost-only discovery, so parallel sessions on the same
machine (CI, developers) never see each other's nodes.
"""
import os
import random

os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
os.environ.setdefault("ROS_DOMAIN_ID", str(random.SystemRandom().randint(1, 100)))
