"""Node parameters as data: one table per node, used to declare ROS parameters (with descriptors) and to
validate the same parameters when the offline replay reads them from a config file without a ROS node.

Every value a user gives (config file, ``-p name:=value``, ``--params-file``, ``ros2 param set``) goes through
``Param.check``: the right type, finite, within int64 (what a ROS parameter can hold), within min/max and
choices. A value that fails, or a name no table knows, is an error naming the parameter (ParameterError at a
node's start: one log line and exit 2, like the config loader), never silently ignored.
"""
from __future__ import annotations

import difflib
import math
import sys
import weakref
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, ParameterType

_TYPES = {
    bool: ParameterType.PARAMETER_BOOL,
    int: ParameterType.PARAMETER_INTEGER,
    float: ParameterType.PARAMETER_DOUBLE,
    str: ParameterType.PARAMETER_STRING,
    tuple: ParameterType.PARAMETER_STRING_ARRAY,  # a list of strings (default: a tuple, immutable)
}
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1  # a ROS integer parameter is an int64
FLOAT_MAX = 1.7976931348623157e308
# Parameters rclpy declares on every node by itself (besides those it has declared before ours), or that a
# launch system may pass to every node; they are not ours to reject.
ROS_PARAM_PREFIXES = ("qos_overrides.",)
ROS_PARAMS = frozenset({"use_sim_time", "start_type_description_service", "start_parameter_event_publisher"})


class ParameterError(ValueError):
    """A parameter given to a node at start is unknown or has a bad value (the message is one line)."""


def _show(value: Any, limit: int = 60) -> str:
    """repr(value), shortened: messages stay one readable line whatever was passed."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def closest(name: str, known: Iterable[str]) -> str:
    """' (did you mean 'x'?)' for the known name closest to a typo, or ''."""
    match = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.6)
    return f" (did you mean {match[0]!r}?)" if match else ""


@dataclass(frozen=True)
class Param:
    name: str
    default: Any
    description: str
    choices: tuple[str, ...] = ()
    min: float | None = None
    max: float | None = None
    read_only: bool = False  # True: changing it needs a restart (e.g. topic names, QoS)
    validate: Callable[[Any], None] | None = None  # further checks of a checked value; raises ValueError

    @property
    def type(self) -> type:
        return type(self.default)

    def descriptor(self) -> ParameterDescriptor:
        descriptor = ParameterDescriptor(
            name=self.name,
            type=_TYPES[self.type],
            description=self.description,
            read_only=self.read_only,
        )
        if self.choices:
            descriptor.additional_constraints = "one of: " + ", ".join(self.choices)
        # A range's open side is the type's own limit, so that the descriptor refuses exactly what check() does.
        if self.type is int and (self.min is not None or self.max is not None):
            descriptor.integer_range = [IntegerRange(
                from_value=int(self.min if self.min is not None else INT64_MIN),
                to_value=int(self.max if self.max is not None else INT64_MAX), step=0)]
        if self.type is float and (self.min is not None or self.max is not None):
            descriptor.floating_point_range = [FloatingPointRange(
                from_value=float(self.min if self.min is not None else -FLOAT_MAX),
                to_value=float(self.max if self.max is not None else FLOAT_MAX), step=0.0)]
        return descriptor

    def check(self, value: Any) -> Any:
        """The value converted to this parameter's type, or ValueError naming the parameter (one line)."""
        name = self.name
        if self.type is float and isinstance(value, int) and not isinstance(value, bool):
            try:
                value = float(value)
            except OverflowError:
                raise ValueError(f"parameter {name!r} must be a finite float; got an integer of "
                                 f"{len(str(abs(value)))} digits") from None
        if self.type is tuple:  # a string array: ROS gives a list
            if not isinstance(value, (list, tuple)) or not all(isinstance(item, str) for item in value):
                raise ValueError(f"parameter {name!r} must be a list of strings, got {_show(value)}")
            value = tuple(value)
            if any("\0" in item for item in value):
                raise ValueError(f"parameter {name!r} must not contain NUL characters; got {_show(value)}")
        if not isinstance(value, self.type) or (self.type is int and isinstance(value, bool)):
            raise ValueError(f"parameter {name!r} must be {self.type.__name__}, got {_show(value)}")
        if self.type is float and not math.isfinite(value):
            raise ValueError(f"parameter {name!r} must be finite; got {value!r}")
        if self.type is int and not INT64_MIN <= value <= INT64_MAX:
            bound = f">= {INT64_MIN}" if value < 0 else f"<= {INT64_MAX}"
            raise ValueError(f"parameter {name!r} must be {bound} (a ROS integer is int64); got {_show(value)}")
        if self.type is str and "\0" in value:
            raise ValueError(f"parameter {name!r} must not contain NUL characters; got {_show(value)}")
        if self.choices and value not in self.choices:
            raise ValueError(f"parameter {name!r} must be one of {', '.join(self.choices)}; got {_show(value)}")
        if self.min is not None and value < self.min:
            raise ValueError(f"parameter {name!r} must be >= {self.min}; got {_show(value)}")
        if self.max is not None and value > self.max:
            raise ValueError(f"parameter {name!r} must be <= {self.max}; got {_show(value)}")
        if self.validate is not None:
            self.validate(value)
        return value


def resolve(params: Iterable[Param], values: Mapping[str, Any]) -> dict[str, Any]:
    """Defaults overridden by `values` (e.g. from a config file), every value checked; unknown names are an
    error, so that a typo in a config file is never silently ignored."""
    table = {param.name: param for param in params}
    unknown = sorted((name for name in values if name not in table), key=str)
    if unknown:
        raise ValueError(f"unknown parameter(s) {', '.join(map(str, unknown))}"
                         f"{closest(str(unknown[0]), table) if len(unknown) == 1 else ''}; "
                         f"known: {', '.join(sorted(table))}")
    return {name: param.check(values[name]) if name in values else param.default for name, param in table.items()}


# The arguments each rclpy context was initialised with (run_node records them; rclpy keeps none of them). A
# context not recorded here was initialised from sys.argv, rclpy's own default.
_CONTEXT_ARGS: "weakref.WeakKeyDictionary[Any, list[str]]" = weakref.WeakKeyDictionary()


def remember_arguments(context, args: list[str] | None) -> None:
    """Record the arguments `rclpy.init(args=args, context=context)` was given (None: sys.argv)."""
    _CONTEXT_ARGS[context] = list(sys.argv if args is None else args)


def _ros_arguments(args: Iterable[str]) -> list[str]:
    """The arguments inside `--ros-args ... [--]` regions."""
    inside, found = False, []
    for arg in args:
        if arg == "--ros-args":
            inside = True
        elif arg == "--":
            inside = False
        elif inside:
            found.append(arg)
    return found


def _flat_names(parameters: Mapping, prefix: str = "") -> set[str]:
    """Parameter names of a ros__parameters mapping (nested mappings are dotted names, as rcl reads them)."""
    names = set()
    for key, value in parameters.items():
        name = f"{prefix}{key}"
        names |= _flat_names(value, name + ".") if isinstance(value, Mapping) else {name}
    return names


def _sections(document: Any, path: tuple[str, ...] = ()):
    """(node name tokens, parameter names) of each ros__parameters section of a params file; node names may be
    nested mappings (`ns: node: ros__parameters:`) or paths (`/ns/node:`)."""
    if not isinstance(document, Mapping):
        return
    for key, value in document.items():
        if key == "ros__parameters" and isinstance(value, Mapping):
            yield path, _flat_names(value)
        elif isinstance(key, str):
            yield from _sections(value, path + tuple(token for token in key.split("/") if token))


def _matches(pattern: tuple[str, ...], name: tuple[str, ...]) -> bool:
    """rcl's node-name wildcards: `*` is one token of the fully qualified name, `**` any number of them."""
    if not pattern:
        return not name
    if pattern[0] == "**":
        return any(_matches(pattern[1:], name[i:]) for i in range(len(name) + 1))
    return bool(name) and pattern[0] in ("*", name[0]) and _matches(pattern[1:], name[1:])


def wildcard_only_names(node, args: Iterable[str]) -> set[str]:
    """Names this node gets from wildcard sections of its params files (`/**:`, `/*:`, `/ns/*:`) and from
    nothing addressed to it: no `-p`, no section naming the node (`/name`, `name`, `/**/name`). A params file
    shared by all nodes of a robot carries other nodes' parameters; such names are not typos of this node's.
    Unreadable files count as addressed (the names stay errors)."""
    import yaml

    ros_args = _ros_arguments(args)
    fqn = tuple(token for token in node.get_fully_qualified_name().split("/") if token)
    addressed, wildcard = set(), set()
    for flag, value in zip(ros_args, ros_args[1:]):
        if flag in ("-p", "--param"):
            addressed.add(value.split(":=", 1)[0].rsplit(":", 1)[-1])
        elif flag == "--params-file":
            try:
                with open(value) as file:
                    document = yaml.safe_load(file)
            except (OSError, UnicodeDecodeError, yaml.YAMLError):
                return set()
            for pattern, names in _sections(document):
                if _matches(pattern, fqn):  # `/**/depth_node` still names this node; `/**`, `/ns/*` do not
                    (wildcard if pattern and pattern[-1] in ("*", "**") else addressed).update(names)
    return wildcard - addressed


def declare(node, params: Iterable[Param], reject_unknown: bool = True, cli_args: Iterable[str] = (),
            addressed: Iterable[str] = ()) -> dict[str, Any]:
    """Declare `params` (the node's whole table) on an rclpy node, with descriptors, and return their values.

    The values given at start (``-p``, ``--params-file``, ``parameter_overrides``) are checked here first, so a
    bad one is one ERROR line naming the node and parameter and a ParameterError (node executables exit 2)
    instead of rclpy's traceback; an int given for a float parameter is taken as that float (rclpy itself would
    refuse it). With `reject_unknown`, a given name that is in no table and is not ROS's own is an error too:
    rclpy would ignore it, and a typo such as ``proces_res`` would silently leave the default in place. Names
    that come only from wildcard sections of a params file (`/**:` shared by every node; see
    wildcard_only_names) are one WARN line instead. `cli_args`: the node's own arguments (Node(cli_args=));
    `addressed`: names given to this node in code (Node(parameter_overrides=)), always checked.
    """
    params = list(params)
    # rclpy keeps the start-time values of this node in _parameter_overrides (public API offers no way to
    # list values given for names not declared yet).
    given = {name: parameter.value for name, parameter in getattr(node, "_parameter_overrides", {}).items()}
    table = {param.name: param for param in params}

    def fail(message: str):
        message = f"node {node.get_name()!r}: {message}"
        node.get_logger().error(message)
        # The node's constructor will not finish: destroy it as a plain rclpy node now, since the context
        # destroys the nodes it tracks at shutdown, and a subclass's destroy_node expects a finished node.
        from rclpy.node import Node

        Node.destroy_node(node)
        raise ParameterError(message)

    if reject_unknown:
        unknown = [name for name in sorted(given) if not (
            name in table or name in ROS_PARAMS or name.startswith(ROS_PARAM_PREFIXES) or node.has_parameter(name))]
        shared: set[str] = set()
        if unknown:
            args = [*_CONTEXT_ARGS.get(node.context, sys.argv), *cli_args]
            shared = wildcard_only_names(node, args) - set(addressed)
            ignored = [name for name in unknown if name in shared]
            if ignored:
                node.get_logger().warning(
                    f"node {node.get_name()!r}: ignoring {', '.join(ignored)}: given by a wildcard section (/**, "
                    "/*) of a params file, and not parameters of this node (a file shared by several nodes)")
        for name in unknown:
            if name in shared:
                continue
            fail(f"unknown parameter {name!r}{closest(name, table)}; `ros2 param list` or the node's parameter "
                 "table (README) lists the known ones")
    values = {}
    for param in params:
        value = param.default
        if param.name in given:
            try:
                value = param.check(given[param.name])
            except ValueError as error:
                fail(str(error))
        try:
            node.declare_parameter(param.name, list(value) if isinstance(value, tuple) else value,
                                   param.descriptor(), ignore_override=True)
        except Exception as error:  # rclpy's ParameterException & co: a value check() let through
            fail(f"parameter {param.name!r}: {type(error).__name__}: {' '.join(str(error).split())}")
        values[param.name] = param.check(node.get_parameter(param.name).value)
    return values


# Parameters of every node that decodes camera images (depth, concept, object_mesh, body); the replay reads the
# same. The default is the process's limit: 8K, or PERCEPTION_FM_MAX_IMAGE_PIXELS.
def _image_params() -> tuple[Param, ...]:
    from perception_fm.ros.image_codec import MAX_IMAGE_PIXELS

    return (
        Param("max_image_pixels", MAX_IMAGE_PIXELS, "Images with more pixels (width x height) are dropped, counted "
              "as too_large; compressed ones before decoding, from the size their header declares (a small PNG "
              "may declare 10000x10000). 0 = no limit. Default: 8K (33.2 Mpx) or PERCEPTION_FM_MAX_IMAGE_PIXELS.",
              min=0),
    )


IMAGE_PARAMS = _image_params()

# Parameters every model node has: which model, from where, on which device; whether it starts on its own.
MODEL_PARAMS = (
    Param("model", "", "Model name (see `perception-fm plugins`); the node's default when empty."),
    Param("weights", "", "Hugging Face hub id or local directory with the weights; the model's default hub "
                         "repo when empty."),
    Param("device", "auto", "Torch device: auto (first GPU, else CPU), cpu, cuda, cuda:N."),
    Param("offline", False, "Never contact the model hub (local directories and the hub cache only). "
                            "HF_HUB_OFFLINE=1 has the same effect."),
    Param("random_weights", False, "Run the architecture with random weights: for plumbing checks and "
                                   "benchmarks only. Outputs are labelled weights=random-init."),
    Param("precision", "auto", "auto (bf16/fp16 on GPU, fp32 on CPU), fp32, fp16 or bf16.",
          choices=("auto", "fp32", "fp16", "bf16")),
    # lifecycle (perception_fm.nodes.node_base): here so that graph configs and `perception-fm up` accept it
    Param("autostart", True, "Configure and activate on start (a managed node's own way up). false: the node "
                             "waits unconfigured for `ros2 lifecycle set <node> configure` / activate, ~/enable, "
                             "`perception-fm up` or a launch file.", read_only=True),
)
