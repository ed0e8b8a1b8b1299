"""Shared lifecycle plumbing of the two policy nodes: parameters, policy loading, auto start-up."""

from __future__ import annotations

from typing import Any

from rclpy.lifecycle import LifecycleNode, State, TransitionCallbackReturn

from insertion_vla_ros.nodes.policy_loading import load_policy
from insertion_vla_ros.ros_io.parameters import ParamSpec, declare_parameters, make_set_parameters_validator


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
        try:
            self.policy = load_policy(
                p["checkpoint"], device=p["device"], load_vlm=load_vlm, torch_threads=p["torch_threads"]
            )
            self._warm_up()
        except Exception as error:  # noqa: BLE001 - any load failure is reported, not raised
            self.last_error = f"cannot load the policy: {error}"
            self.get_logger().error(self.last_error)
            self.policy = None
            return False
        self.get_logger().info(f"policy loaded: fingerprint {self.policy.fingerprint}")
        return True

    def start_up(self) -> bool:
        """Configure and activate (the ``autostart`` path); True when the node is active."""
        if self.trigger_configure() != TransitionCallbackReturn.SUCCESS:
            return False
        return self.trigger_activate() == TransitionCallbackReturn.SUCCESS

    def stop_workers(self) -> None:
        """Stop background threads before the process exits (subclasses override)."""

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
