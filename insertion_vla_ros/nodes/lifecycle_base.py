"""Shared lifecycle plumbing of the two policy nodes: parameters, policy loading, auto start-up, clock jumps.

Configure refuses parameter names the node does not declare (a misspelt ``force_gaurd_n`` in a YAML
would otherwise be ignored without a word and the guard stay at its default), naming the closest one.
Clock jumps (a sim reset, a looping or seeking bag replay) reach :meth:`ManagedNode.on_clock_jump`.
"""

from __future__ import annotations

from typing import Any

from rclpy.clock import JumpThreshold
from rclpy.duration import Duration
from rclpy.lifecycle import LifecycleNode, State, TransitionCallbackReturn

from insertion_vla_ros.nodes.policy_loading import load_policy
from insertion_vla_ros.ros_io.parameters import (
    ParamSpec,
    declare_parameters,
    make_set_parameters_validator,
    unknown_parameter_names,
)

FORWARD_JUMP_S = 1.0
"""A forward step of the clock at least this long is a jump, not time passing (sim /clock steps are ms)."""


class ManagedNode(LifecycleNode):
    """A ``LifecycleNode`` whose parameters come from ``ParamSpec``s and that can start itself."""

    def __init__(self, node_name: str, specs: list[ParamSpec], **kwargs: Any) -> None:
        super().__init__(node_name, **kwargs)
        self.param_specs = specs
        self.params = declare_parameters(self, specs)
        validator = make_set_parameters_validator(specs)
        has_post_set = hasattr(self, "add_post_set_parameters_callback")  # Iron and newer

        def on_set(parameters: list[Any]) -> Any:
            result = validator(parameters)
            if result.successful and not has_post_set:  # Humble: apply on acceptance
                self._after_set_parameters(parameters)
            return result

        self.add_on_set_parameters_callback(on_set)
        if has_post_set:
            self.add_post_set_parameters_callback(self._after_set_parameters)
        self.is_active = False
        self.last_error = ""
        self.process_notes: tuple[list[str], list[str]] | None = None  # set by node_main (process_tuning)
        self._jump_handle = self.get_clock().create_jump_callback(
            JumpThreshold(
                min_forward=Duration(seconds=FORWARD_JUMP_S), min_backward=Duration(nanoseconds=-1)
            ),
            post_callback=self._on_time_jump,
        )

    def _on_time_jump(self, jump: Any) -> None:
        delta_ns = int(jump.delta.nanoseconds)
        now_ns = self.get_clock().now().nanoseconds
        if delta_ns > 0 and now_ns - delta_ns <= 0:
            return  # sim time starting (from 0 to the first /clock): not a jump of a running clock
        self.on_clock_jump(now_ns, backward=delta_ns < 0)

    def on_clock_jump(self, now_ns: int, backward: bool) -> None:
        """The node's clock jumped back (any amount) or forward (>= ``FORWARD_JUMP_S``): hook."""

    def parameter_name_problem(self) -> str:
        """A configure error when the node was given parameter names it does not declare, else ``""``."""
        unknown = unknown_parameter_names(self._parameter_overrides, self.param_specs)
        if not unknown:
            return ""
        return f"unknown parameter(s) for {self.get_name()}: {', '.join(unknown)}"

    def check_configuration(self) -> bool:
        """Run at the start of configure: False (error logged, in ``last_error``) on unknown names."""
        problem = self.parameter_name_problem()
        if problem:
            self.last_error = problem
            self.get_logger().error(problem)
            return False
        return True

    @property
    def autostart(self) -> bool:
        """Whether ``main`` configures and activates the node by itself (``autostart`` parameter)."""
        return bool(self.params.get("autostart", False))

    def _after_set_parameters(self, parameters: list[Any]) -> None:
        for parameter in parameters:
            if parameter.name in self.params:
                self.params[parameter.name] = parameter.value
                self.on_parameter_changed(parameter.name, parameter.value)

    def on_parameter_changed(self, name: str, value: Any) -> None:
        """React to a dynamic parameter changed at run time (hook for subclasses)."""

    def load_policy_and_warm_up(self, load_vlm: bool) -> bool:
        """Load ``self.policy`` from the checkpoint parameter and run ``self._warm_up()``.

        Any failure is logged, kept in ``self.last_error`` for diagnostics, and returns False (configure
        then fails) instead of raising.
        """
        p = self.params
        if not self.check_configuration():
            return False
        try:
            self.policy = load_policy(
                p["checkpoint"], device=p["device"], load_vlm=load_vlm, torch_threads=p["torch_threads"]
            )
            self.prepare_policy()
            self._warm_up()
        except Exception as error:  # noqa: BLE001 - any load failure is reported, not raised
            self.last_error = f"cannot load the policy: {error}"
            self.get_logger().error(self.last_error)
            self.policy = None
            return False
        self.last_error = ""
        self.get_logger().info(f"policy loaded: fingerprint {self.policy.fingerprint}")
        return True

    def prepare_policy(self) -> None:
        """Set up the loaded ``self.policy`` for this node before the warm-up (fast path); default nothing."""

    def start_up(self) -> bool:
        """Configure and activate (the ``autostart`` path); True when the node is active."""
        if self.trigger_configure() != TransitionCallbackReturn.SUCCESS:
            return False
        return self.trigger_activate() == TransitionCallbackReturn.SUCCESS

    def stop_workers(self) -> None:
        """Stop background threads before the process exits (subclasses override)."""

    def before_exit(self, reason: str) -> None:
        """Last words while the ROS context is still valid (the action expert publishes a final HOLD)."""

    # Lifecycle publishers are enabled/disabled by the base class: always call super() (DESIGN.md).
    def on_activate(self, state: State) -> TransitionCallbackReturn:
        """Enable publishing."""
        result = super().on_activate(state)
        if result == TransitionCallbackReturn.SUCCESS:
            self.is_active = True
        return result

    def on_deactivate(self, state: State) -> TransitionCallbackReturn:
        """Stop publishing."""
        self.is_active = False
        return super().on_deactivate(state)
