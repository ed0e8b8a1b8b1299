"""Declarative ROS 2 parameters: every one declared with a descriptor, validated with its name in errors.

A node lists ``ParamSpec``s; :func:`declare_parameters` declares them (description, range, read-only,
constraints shown by ``ros2 param describe``), reads the values, and checks what ROS descriptors cannot
express (choices, array lengths, element ranges). Any problem raises :class:`ParameterError` naming the
parameter, so a node with a bad YAML fails at start-up with a clear message. The same checks guard run-time
``set_parameters`` calls through :func:`make_set_parameters_validator`.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

_FLOAT_MAX = sys.float_info.max
_INT64_MAX = 2**63 - 1


class ParameterError(ValueError):
    """A parameter has a value the node cannot run with; the message starts with its name."""


@dataclass(frozen=True)
class ParamSpec:
    """One parameter: default (its type fixes the parameter type), description and constraints.

    ``minimum``/``maximum`` become a ROS range for scalars and an element check for numeric arrays;
    ``choices`` restricts strings; ``length`` fixes an array's length (``None``: any, but not empty).
    """

    name: str
    default: Any
    description: str
    read_only: bool = False
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] | None = None
    length: int | None = None
    allow_empty: bool = False

    def constraints_text(self) -> str:
        """Human-readable constraints for ``ParameterDescriptor.additional_constraints``."""
        parts = []
        if self.choices:
            parts.append("one of: " + ", ".join(self.choices))
        if self.length is not None:
            parts.append(f"exactly {self.length} values")
        if isinstance(self.default, (list, tuple)) and (self.minimum is not None or self.maximum is not None):
            parts.append(f"each value in [{self.minimum}, {self.maximum}]")
        if self.read_only:
            parts.append("read-only: set at start-up (YAML or --ros-args -p)")
        return "; ".join(parts)

    def check(self, value: Any) -> None:
        """Raise :class:`ParameterError` if ``value`` breaks a constraint of this spec."""
        if self.choices is not None and value not in self.choices:
            raise ParameterError(
                f"parameter '{self.name}': {value!r} is not one of {', '.join(self.choices)}"
            )
        if isinstance(self.default, (list, tuple)):
            values = list(value)
            if self.length is not None and len(values) != self.length:
                raise ParameterError(
                    f"parameter '{self.name}': needs {self.length} values, got {len(values)}"
                )
            if not values and not self.allow_empty:
                raise ParameterError(f"parameter '{self.name}': must not be empty")
            items = values
        else:
            items = [value]
        for item in items:
            if isinstance(item, float) and math.isnan(item):
                raise ParameterError(f"parameter '{self.name}': NaN is not allowed")
            if isinstance(item, (int, float)) and not isinstance(item, bool):
                if self.minimum is not None and item < self.minimum:
                    raise ParameterError(
                        f"parameter '{self.name}': {item} is below the minimum {self.minimum}"
                    )
                if self.maximum is not None and item > self.maximum:
                    raise ParameterError(
                        f"parameter '{self.name}': {item} is above the maximum {self.maximum}"
                    )


def descriptor_for(spec: ParamSpec) -> Any:
    """Build the ``rcl_interfaces/ParameterDescriptor`` of ``spec`` (ROS range for numeric scalars)."""
    from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor

    descriptor = ParameterDescriptor(
        name=spec.name,
        description=spec.description,
        additional_constraints=spec.constraints_text(),
        read_only=spec.read_only,
    )
    ranged = spec.minimum is not None or spec.maximum is not None
    if ranged and isinstance(spec.default, float):
        low = -_FLOAT_MAX if spec.minimum is None else float(spec.minimum)
        high = _FLOAT_MAX if spec.maximum is None else float(spec.maximum)
        descriptor.floating_point_range = [FloatingPointRange(from_value=low, to_value=high, step=0.0)]
    elif ranged and isinstance(spec.default, int) and not isinstance(spec.default, bool):
        low = -_INT64_MAX if spec.minimum is None else int(spec.minimum)
        high = _INT64_MAX if spec.maximum is None else int(spec.maximum)
        descriptor.integer_range = [IntegerRange(from_value=low, to_value=high, step=1)]
    return descriptor


def declare_parameters(node: Any, specs: Iterable[ParamSpec]) -> dict[str, Any]:
    """Declare every spec on ``node`` and return ``{name: value}``; raises :class:`ParameterError`."""
    from rclpy.exceptions import ParameterException

    values: dict[str, Any] = {}
    for spec in specs:
        default = list(spec.default) if isinstance(spec.default, tuple) else spec.default
        try:
            parameter = node.declare_parameter(spec.name, default, descriptor_for(spec))
        except ParameterException as error:
            raise ParameterError(f"parameter '{spec.name}': {_type_hint(spec, error)}") from error
        except (TypeError, ValueError) as error:
            raise ParameterError(f"parameter '{spec.name}': {_type_hint(spec, error)}") from error
        value = parameter.value
        if isinstance(spec.default, (list, tuple)):
            value = list(value)
        spec.check(value)
        values[spec.name] = value
    return values


def _type_hint(spec: ParamSpec, error: Exception) -> str:
    text = str(error)
    if isinstance(spec.default, float) and "type" in text.lower():
        text += " (write floating-point values with a decimal point, e.g. 2.0)"
    return text


def make_set_parameters_validator(
    specs: Sequence[ParamSpec], extra: Callable[[dict[str, Any]], None] | None = None
) -> Callable[[list[Any]], Any]:
    """Build an ``add_on_set_parameters_callback`` callback applying the specs' checks at run time.

    ``extra`` gets ``{name: new value}`` and may raise :class:`ParameterError` for cross-parameter checks.
    """
    by_name = {spec.name: spec for spec in specs}

    def validate(parameters: list[Any]) -> Any:
        from rcl_interfaces.msg import SetParametersResult

        try:
            changes = {}
            for parameter in parameters:
                spec = by_name.get(parameter.name)
                if spec is not None:
                    value = parameter.value
                    spec.check(list(value) if isinstance(spec.default, (list, tuple)) else value)
                changes[parameter.name] = parameter.value
            if extra is not None:
                extra(changes)
        except ParameterError as error:
            return SetParametersResult(successful=False, reason=str(error))
        return SetParametersResult(successful=True)

    return validate


BUILT_IN_PARAMETERS = frozenset({"use_sim_time", "start_type_description_service"})
"""Parameters rclpy declares on every node itself."""


def unknown_parameter_names(overrides: Iterable[str], specs: Iterable[ParamSpec]) -> list[str]:
    """Names given to a node (YAML section, ``/**`` or ``-p``) that it does not declare, each with a hint.

    ``qos_overrides.*`` (rclpy's QoS parameter overrides) and rclpy's own parameters are known. A hint
    names the closest declared name: ``'force_gaurd_n' (did you mean 'force_guard_n'?)``.
    """
    import difflib

    declared = {spec.name for spec in specs} | BUILT_IN_PARAMETERS
    problems = []
    for name in sorted(set(overrides) - declared):
        if name.startswith("qos_overrides."):
            continue
        close = difflib.get_close_matches(name, sorted(declared), n=1)
        problems.append(f"{name!r} (did you mean {close[0]!r}?)" if close else repr(name))
    return problems


def runtime_param_specs(hardware_id: str, status_period_s: float) -> list[ParamSpec]:
    """Parameters both policy nodes declare: monitoring periods, hardware id, executor and autostart."""
    return [
        ParamSpec(
            "diagnostics_period_s",
            1.0,
            "Period of /diagnostics, s.",
            read_only=True,
            minimum=0.05,
            maximum=60.0,
        ),
        ParamSpec(
            "status_period_s",
            status_period_s,
            "Period of ~/status, s.",
            read_only=True,
            minimum=0.01,
            maximum=60.0,
        ),
        ParamSpec("hardware_id", hardware_id, "diagnostic hardware_id.", read_only=True),
        ParamSpec(
            "executor_threads",
            1,
            "Executor threads: 1 = SingleThreadedExecutor (default; rclpy's MultiThreadedExecutor "
            "busy-waits and starved the sensor stream in tests), >= 2 = MultiThreadedExecutor "
            "(separate callback groups).",
            read_only=True,
            minimum=1,
            maximum=64,
        ),
        ParamSpec(
            "autostart",
            False,
            "Configure and activate at start-up (demo); on a robot the operator activates.",
            read_only=True,
        ),
    ]
