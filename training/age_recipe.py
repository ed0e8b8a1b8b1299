"""Which feature ages training draws: the staleness recipe, in one place (Stage 1 and Stage 2 alike).

A feature captured at t0 is computed by the VLM in ``latency`` and then serves every tick until the next
one is ready a ``period`` later, so the node sees ages ``latency + U[0, period)``. Training samples a tick
t and a feature time t0 = t - k * dt; the recipe chooses the distribution of k:

* ``fresh``: k = 0 (a policy for a VLM that keeps up with the ticks);
* ``reuse``: k uniform in [0, R), R = period / dt (one period of reuse, from fresh);
* ``matched``: k uniform in [k0, k0 + R), k0 = round(latency / dt): the deployed ages.

The timing comes from the flags, or from ``profile_vlm``'s JSON (its measured p50 latency and the period it
recommends), or from the model config's ``vlm_period_s``. :func:`staleness_config` is what the checkpoint
records, so the node knows which ages a policy was trained on.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from models.config import AGE_RECIPES, PolicyConfig, StalenessConfig


@dataclass(frozen=True)
class AgePlan:
    """The k range a recipe samples: weights over k = 0..len-1 (``None``: uniform over [0, R))."""

    recipe: str
    latency_s: float
    period_s: float
    dt_s: float
    first_k: int
    reuse: int

    @property
    def age_weights(self) -> tuple[float, ...] | None:
        """Probabilities of k = 0, 1, ... for the samplers (zero before ``first_k``)."""
        if self.recipe == "reuse":
            return None
        return (0.0,) * self.first_k + (1.0,) * self.reuse

    @property
    def ages_s(self) -> tuple[float, float]:
        """Youngest and oldest age trained on (seconds; ticks and frames share the 100 ms grid)."""
        return self.first_k * self.dt_s, (self.first_k + self.reuse - 1) * self.dt_s


def load_profile(path: str | Path) -> tuple[float, float]:
    """``(latency_s, period_s)`` from ``profile_vlm --json``: its p50 latency and recommended period."""
    data = json.loads(Path(path).read_text())
    data = data.get("metrics", data)  # the JSON object itself, or a bench-style wrapper around it
    try:
        return float(data["latency_p50_ms"]) / 1000.0, float(data["recommended_vlm_period_s"])
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(
            f"{path}: not profile_vlm --json output (needs latency_p50_ms, recommended_vlm_period_s): {error}"
        ) from None


def age_plan(
    recipe: str,
    model: PolicyConfig,
    latency_s: float | None = None,
    period_s: float | None = None,
    profile: str | None = None,
) -> AgePlan:
    """The k range of ``recipe`` for ``model`` (timing from the flags, else the profile, else the config)."""
    if recipe not in AGE_RECIPES or recipe == "unknown":
        raise ValueError(f"age recipe must be one of {AGE_RECIPES[1:]}, got {recipe!r}")
    if profile is not None:
        measured_latency, measured_period = load_profile(profile)
        latency_s = measured_latency if latency_s is None else latency_s
        period_s = measured_period if period_s is None else period_s
    dt = model.action_period_s
    period = model.vlm_period_s if period_s is None else float(period_s)
    latency = 0.0 if latency_s is None else float(latency_s)
    if period <= 0 or latency < 0:
        raise ValueError(f"need a positive VLM period and a non-negative latency, got {period}, {latency}")
    reuse = max(1, round(period / dt))
    if recipe == "fresh":
        return AgePlan(recipe, 0.0, period, dt, 0, 1)
    first = round(latency / dt) if recipe == "matched" else 0
    return AgePlan(recipe, latency if recipe == "matched" else 0.0, period, dt, first, reuse)


def staleness_config(plan: AgePlan) -> StalenessConfig:
    """What the checkpoint records about the ages a policy was trained on."""
    youngest, oldest = plan.ages_s
    return StalenessConfig(
        recipe=plan.recipe,
        vlm_latency_s=plan.latency_s,
        vlm_period_s=plan.period_s,
        min_age_s=youngest,
        max_age_s=oldest,
    )
