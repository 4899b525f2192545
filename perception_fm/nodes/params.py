"""Node parameters as data: one table per node, used to declare ROS parameters (with descriptors) and to
validate the same parameters when the offline replay reads them from a config file without a ROS node."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, ParameterType

_TYPES = {
    bool: ParameterType.PARAMETER_BOOL,
    int: ParameterType.PARAMETER_INTEGER,
    float: ParameterType.PARAMETER_DOUBLE,
    str: ParameterType.PARAMETER_STRING,
}


@dataclass(frozen=True)
class Param:
    name: str
    default: Any
    description: str
    choices: tuple[str, ...] = ()
    min: float | None = None
    max: float | None = None
    read_only: bool = False  # True: changing it needs a restart (e.g. topic names, QoS)

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
        if self.type is int and (self.min is not None or self.max is not None):
            descriptor.integer_range = [IntegerRange(
                from_value=int(self.min if self.min is not None else -(2**31)),
                to_value=int(self.max if self.max is not None else 2**31 - 1), step=0)]
        if self.type is float and (self.min is not None or self.max is not None):
            descriptor.floating_point_range = [FloatingPointRange(
                from_value=float(self.min if self.min is not None else -1e300),
                to_value=float(self.max if self.max is not None else 1e300), step=0.0)]
        return descriptor

    def check(self, value: Any) -> Any:
        """The value converted to this parameter's type, or ValueError naming the parameter."""
        if self.type is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, self.type) or (self.type is int and isinstance(value, bool)):
            raise ValueError(f"parameter {self.name!r} must be {self.type.__name__}, got {value!r}")
        if self.choices and value not in self.choices:
            raise ValueError(f"parameter {self.name!r} must be one of {', '.join(self.choices)}; got {value!r}")
        if self.min is not None and value < self.min:
            raise ValueError(f"parameter {self.name!r} must be >= {self.min}; got {value!r}")
        if self.max is not None and value > self.max:
            raise ValueError(f"parameter {self.name!r} must be <= {self.max}; got {value!r}")
        return value


def resolve(params: Iterable[Param], values: Mapping[str, Any]) -> dict[str, Any]:
    """Defaults overridden by `values` (e.g. from a config file), every value checked; unknown names are an
    error, so that a typo in a config file is never silently ignored."""
    table = {param.name: param for param in params}
    unknown = sorted(set(values) - set(table))
    if unknown:
        raise ValueError(f"unknown parameter(s) {', '.join(unknown)}; known: {', '.join(sorted(table))}")
    return {name: param.check(values[name]) if name in values else param.default for name, param in table.items()}


def declare(node, params: Iterable[Param]) -> dict[str, Any]:
    """Declare `params` on an rclpy node (with descriptors) and return their current values."""
    values = {}
    for param in params:
        node.declare_parameter(param.name, param.default, param.descriptor())
        values[param.name] = param.check(node.get_parameter(param.name).value)
    return values


# Parameters every model node has: which model, from where, on which device.
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
)
