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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from perception_fm.nodes.params import MODEL_PARAMS, Param, resolve


@dataclass(frozen=True)
class NodeType:
    module: str  # has main(); `python -m module` runs the node
    params: str  # "module:NAME" of its parameter table besides MODEL_PARAMS (imported when needed)
    default_model: str  # used when the `model` parameter is empty

    def param_table(self) -> tuple[Param, ...]:
        module, name = self.params.split(":")
        return getattr(importlib.import_module(module), name)


NODE_TYPES = {
    "depth_node": NodeType("perception_fm.nodes.depth_node", "perception_fm.ros.depth_io:DEPTH_PARAMS", "da3-small"),
    "concept_node": NodeType("perception_fm.nodes.concept_node", "perception_fm.ros.segmentation_io:CONCEPT_PARAMS",
                             "sam3"),
    "speech_node": NodeType("perception_fm.nodes.speech_node", "perception_fm.speech.params:SPEECH_PARAMS",
                            "pocketsphinx"),
    "object_mesh_node": NodeType("perception_fm.nodes.object_mesh_node", "perception_fm.ros.object_mesh_io:OBJECT_PARAMS",
                                 "sam3d-objects"),
    "body_node": NodeType("perception_fm.nodes.body_node", "perception_fm.ros.body_io:BODY_PARAMS", "sam3d-body"),
}
COMMON_PARAMS = ("use_sim_time",)  # ROS-wide parameters any node accepts


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
        own = {k: v for k, v in self.parameters.items() if k not in COMMON_PARAMS}
        try:
            values = resolve(self.param_table(), own)
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
    """Read and check a graph config; ValueError says what is wrong and where."""
    path = Path(path)
    try:
        document = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as error:
        raise ValueError(f"cannot read graph config {str(path)!r}: {error}") from None
    if not isinstance(document, dict) or not isinstance(document.get("nodes"), dict) or not document["nodes"]:
        raise ValueError(f"{path}: expected a mapping with a non-empty 'nodes' mapping")
    nodes = []
    for name, entry in document["nodes"].items():
        entry = entry or {}
        unknown = set(entry) - {"executable", "namespace", "remappings", "parameters"}
        if unknown:
            raise ValueError(f"{path}: node {name!r} has unknown keys {sorted(unknown)}")
        executable = entry.get("executable", name)
        if executable not in NODE_TYPES:
            raise ValueError(f"{path}: node {name!r} has unknown executable {executable!r}; "
                             f"known: {', '.join(sorted(NODE_TYPES))}")
        node = NodeConfig(
            name=str(name), executable=executable, namespace=str(entry.get("namespace") or ""),
            remappings={str(k): str(v) for k, v in (entry.get("remappings") or {}).items()},
            parameters=dict(entry.get("parameters") or {}),
        )
        node.resolved_parameters()  # fail early on typos and bad values
        nodes.append(node)
    return Graph(nodes=nodes, source=str(path))
