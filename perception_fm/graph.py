"""The graph config: which nodes run, their topics and their parameters, in one YAML file read by the
launch files (robots), `perception-fm up` (launch-free) and `perception-fm replay` (offline)::

    nodes:
      depth_node:                    # node name
        executable: depth_node       # one of NODE_TYPES
        namespace: ""                # optional
        remappings:                  # node-relative topic -> graph topic
          image: /camera/color/image_raw
          camera_info: /camera/color/camera_info
        parameters:                  # checked against the node's parameter table
          model: da3-small
          window_size: 4
"""
from __future__ import annotations

import importlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from perception_fm.nodes.params import MODEL_PARAMS, Param, closest, resolve


@dataclass(frozen=True)
class NodeType:
    module: str  # has main(); `python -m module` runs the node
    params: str  # "module:NAME" of its parameter table besides MODEL_PARAMS (imported when needed)
    default_model: str  # used when the `model` parameter is empty
    # "module:function" checking the resolved values together (what no single parameter's check can see, e.g. a
    # rig's window without known poses); raises ValueError. Empty: none.
    values_check: str = ""

    def param_table(self) -> tuple[Param, ...]:
        module, name = self.params.split(":")
        return getattr(importlib.import_module(module), name)

    def check_values(self, values: dict[str, Any]) -> None:
        if self.values_check:
            module, name = self.values_check.split(":")
            getattr(importlib.import_module(module), name)(values)


NODE_TYPES = {
    "depth_node": NodeType("perception_fm.nodes.depth_node", "perception_fm.ros.depth_rig_io:DEPTH_NODE_PARAMS",
                           "da3-small", values_check="perception_fm.ros.depth_rig_io:check_rig_values"),
    "concept_node": NodeType("perception_fm.nodes.concept_node", "perception_fm.ros.concept_rig_io:CONCEPT_NODE_PARAMS",
                             "sam3"),
    "speech_node": NodeType("perception_fm.nodes.speech_node", "perception_fm.speech.params:SPEECH_PARAMS",
                            "pocketsphinx"),
    "object_mesh_node": NodeType("perception_fm.nodes.object_mesh_node", "perception_fm.ros.object_mesh_io:OBJECT_PARAMS",
                                 "sam3d-objects"),
    "body_node": NodeType("perception_fm.nodes.body_node", "perception_fm.ros.body_io:BODY_PARAMS", "sam3d-body"),
}
COMMON_PARAMS = (Param("use_sim_time", False, "Use /clock (simulation, bag playback) as the node's time."),)
COMMON_PARAM_NAMES = tuple(param.name for param in COMMON_PARAMS)  # ROS-wide parameters any node accepts
NODE_KEYS = ("executable", "namespace", "remappings", "parameters")
# ROS 2 name rules (rcl's validators): a node name is one token; a namespace is tokens joined by "/"; a topic
# may also be relative, private (~) or hold {node}/{ns} substitutions. Tokens do not start with a digit.
_TOKEN = r"[A-Za-z_][A-Za-z0-9_]*"
_NODE_NAME = re.compile(_TOKEN)
_NAMESPACE = re.compile(rf"/?{_TOKEN}(/{_TOKEN})*/?")
_TOPIC = re.compile(rf"(~/?|/)?({_TOKEN}|\{{{_TOKEN}\}})(/({_TOKEN}|\{{{_TOKEN}\}}))*")


@dataclass
class NodeConfig:
    name: str
    executable: str
    namespace: str = ""
    remappings: dict[str, str] = field(default_factory=dict)
    parameters: dict[str, Any] = field(default_factory=dict)

    @property
    def type(self) -> NodeType:
        return NODE_TYPES[self.executable]

    @property
    def module(self) -> str:
        return self.type.module

    def param_table(self) -> tuple[Param, ...]:
        return MODEL_PARAMS + self.type.param_table()

    def resolved_parameters(self) -> dict[str, Any]:
        """Every parameter with its value (defaults filled in, `model` included), checked; ValueError names
        the node."""
        own = {k: v for k, v in self.parameters.items() if k not in COMMON_PARAM_NAMES}
        try:
            values = resolve(self.param_table(), own)
            self.type.check_values(values)
        except ValueError as error:
            raise ValueError(f"node {self.name!r}: {error}") from None
        values["model"] = values["model"] or self.type.default_model
        return values

    def topic(self, relative: str) -> str:
        """The graph topic a node-relative topic name resolves to (remappings, then namespace)."""
        if relative in self.remappings:
            return self.remappings[relative]
        namespace = "/" + self.namespace.strip("/") if self.namespace.strip("/") else ""
        return f"{namespace}/{relative}"

    def ros_arguments(self, params_file: str | None = None) -> list[str]:
        args = ["--ros-args", "-r", f"__node:={self.name}"]
        if self.namespace:
            args += ["-r", f"__ns:=/{self.namespace.strip('/')}"]
        for source, target in self.remappings.items():
            args += ["-r", f"{source}:={target}"]
        if params_file:
            args += ["--params-file", params_file]
        return args


@dataclass
class Graph:
    nodes: list[NodeConfig]
    source: str = ""

    def ros_params_yaml(self) -> str:
        """The nodes' parameters as a ROS 2 parameters file (for --params-file)."""
        document = {}
        for node in self.nodes:
            key = f"/{node.namespace.strip('/')}/{node.name}" if node.namespace.strip("/") else node.name
            document[key] = {"ros__parameters": dict(node.parameters)}
        return yaml.safe_dump(document, sort_keys=False)


def load_graph(path: str | os.PathLike) -> Graph:
    """Read and check a graph config: the type of every field, ROS names, and every parameter against its
    node's table (so that `up --dry-run` refuses what a node would refuse at start). ValueError: one line
    saying where (file, node, field) and what is wrong."""
    path = Path(path)
    try:
        document = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        reason = " ".join(str(error).split())  # YAML errors span several lines
        raise ValueError(f"cannot read graph config {str(path)!r}: {reason}") from None
    if not isinstance(document, dict) or not isinstance(document.get("nodes"), dict) or not document["nodes"]:
        raise ValueError(f"{path}: expected a mapping with a non-empty 'nodes' mapping")
    unknown = sorted(map(str, set(document) - {"nodes"}))
    if unknown:
        raise ValueError(f"{path}: unknown top-level key(s) {', '.join(unknown)}{closest(unknown[0], ['nodes'])}; "
                         "a graph config has only 'nodes'")
    nodes = []
    for name, entry in document["nodes"].items():
        try:
            node = _node_config(name, entry)
            node.parameters = _checked_parameters(node)
        except ValueError as error:
            raise ValueError(f"{path}: {error}") from None
        nodes.append(node)
    return Graph(nodes=nodes, source=str(path))


def _show(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _node_config(name: Any, entry: Any) -> NodeConfig:
    """One `nodes` entry, its structure checked (ValueError names the node and the field)."""
    if not isinstance(name, str) or not _NODE_NAME.fullmatch(name):
        raise ValueError(f"node {_show(name)}: a node name is a string of letters, digits and _ that does not "
                         "start with a digit")
    where = f"node {name!r}"
    if entry is None:
        entry = {}
    if not isinstance(entry, dict):
        raise ValueError(f"{where}: expected a mapping (executable, namespace, remappings, parameters), "
                         f"got {type(entry).__name__} {_show(entry)}")
    unknown = sorted(map(str, set(entry) - set(NODE_KEYS)))
    if unknown:
        raise ValueError(f"{where} has unknown key(s) {', '.join(unknown)}{closest(unknown[0], NODE_KEYS)}; "
                         f"known: {', '.join(NODE_KEYS)}")
    executable = entry.get("executable", name)
    if not isinstance(executable, str) or executable not in NODE_TYPES:
        raise ValueError(f"{where} has unknown executable {_show(executable)}; known: {', '.join(sorted(NODE_TYPES))}")
    namespace = entry.get("namespace") or ""
    if not isinstance(namespace, str) or (namespace.strip("/") and not _NAMESPACE.fullmatch(namespace)):
        raise ValueError(f"{where}: namespace must be a ROS namespace such as /robot1 (tokens of letters, digits "
                         f"and _ joined by /), got {_show(namespace)}")
    remappings = entry.get("remappings") or {}
    if not isinstance(remappings, dict):
        raise ValueError(f"{where}: remappings must be a mapping of node topic -> graph topic (e.g. image: "
                         f"/camera/image_raw), got {type(remappings).__name__} {_show(remappings)}")
    for source, target in remappings.items():
        for what, topic in (("remapping", source), (f"remapping {_show(source)} ->", target)):
            if not isinstance(topic, str) or not _TOPIC.fullmatch(topic):
                raise ValueError(f"{where}: {what} {_show(topic)} is not a ROS topic name (tokens of letters, "
                                 "digits and _ joined by /, optionally starting with / or ~/)")
    parameters = entry.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise ValueError(f"{where}: parameters must be a mapping of name: value, got {type(parameters).__name__} "
                         f"{_show(parameters)}")
    return NodeConfig(name=name, executable=executable, namespace=namespace, remappings=dict(remappings),
                      parameters=dict(parameters))


def _checked_parameters(node: NodeConfig) -> dict[str, Any]:
    """The node's given parameters, each checked against its table and converted to its type (e.g. 1 -> 1.0
    for a float: the ROS parameters file must carry the type the node declares)."""
    node.resolved_parameters()  # unknown names and bad values, with the node's name
    table = {param.name: param for param in node.param_table() + COMMON_PARAMS}
    checked = {}
    for name, value in node.parameters.items():
        try:
            checked[name] = table[name].check(value)
        except ValueError as error:
            raise ValueError(f"node {node.name!r}: {error}") from None
    return checked
