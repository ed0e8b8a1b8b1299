"""A picture of closed-loop episodes, since people would rather look at a trajectory than read a table.

Per episode: the tip's path over the targets from above, depth and force over time, and the feature age
with the holds, from sim_node's per-episode ``trace`` (ground truth, plotted after the fact).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from sim.scene import TARGET_RGB


def plot_episodes(
    results: list[dict[str, Any]], path: Path, force_limit_n: float, force_guard_n: float
) -> Path:
    """One row per episode (top view, depth + force, VL age + holds); writes ``path`` (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in results if r.get("trace") and r["trace"]["t_s"]]
    fig, axes = plt.subplots(max(len(rows), 1), 3, figsize=(15, 3.6 * max(len(rows), 1)), squeeze=False)
    for (top, depth_axis, age_axis), result in zip(axes, rows):
        trace = result["trace"]
        t = np.asarray(trace["t_s"])
        tip = np.asarray(trace["tip_mm"])
        for name, xy in result["targets_xy_mm"].items():
            colour = np.asarray(TARGET_RGB[name]) / 255.0
            instructed = name == result["target"]
            top.add_patch(
                plt.Circle(
                    xy, 2.0, color=colour, ec="black" if instructed else "none", lw=2 if instructed else 0
                )
            )
            if instructed:  # the 1 mm lateral tolerance
                top.add_patch(plt.Circle(xy, 1.0, fill=False, ls=":", color="black"))
        top.plot(tip[:, 0], tip[:, 1], "-", color="tab:gray", lw=1)
        top.plot(tip[0, 0], tip[0, 1], "o", color="tab:green", label="start")
        top.plot(tip[-1, 0], tip[-1, 1], "x", color="tab:red", ms=9, label="end")
        top.set_aspect("equal")
        top.set_xlim(-22, 22)
        top.set_ylim(-22, 22)
        verdict = "success" if result["success"] else "failure"
        lateral = result["lateral_error_mm"]
        top.set_title(
            f"episode {result['episode'] + 1}: {result['target']}, {verdict}, lateral {lateral:.2f} mm"
        )
        top.legend(loc="lower right", fontsize=7)
        depth_axis.plot(t, -tip[:, 2], color="tab:blue", label="tip depth (mm)")
        depth_axis.axhline(result["target_depth_mm"], color="tab:blue", ls="--", lw=0.8, label="target depth")
        depth_axis.set_xlabel("time (s)")
        depth_axis.set_ylabel("depth below surface (mm)")
        force_axis = depth_axis.twinx()
        force_axis.plot(t, trace["force_n"], color="tab:red", lw=0.8, label="force (N)")
        force_axis.axhline(force_limit_n, color="black", ls="--", lw=0.8)
        if force_guard_n > 0:
            force_axis.axhline(force_guard_n, color="gray", ls=":", lw=0.8)
        force_axis.set_ylabel("force (N); limit --, guard ..")
        depth_axis.legend(loc="upper left", fontsize=7)
        ages = np.array([np.nan if a is None else a for a in trace["vl_age_s"]], dtype=float)
        age_axis.plot(t, ages, ".", ms=2, color="tab:purple")
        held = np.asarray(trace["chunk_status"]) != 0
        for start, end in _spans(held):
            age_axis.axvspan(t[start], t[min(end, len(t) - 1)], color="tab:orange", alpha=0.25, lw=0)
        age_axis.set_xlabel("time (s)")
        age_axis.set_ylabel("VL feature age (s); orange: HOLD/WAITING")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def _spans(mask: np.ndarray) -> list[tuple[int, int]]:
    """``(start, end)`` index pairs of the runs of True in ``mask``."""
    spans, start = [], None
    for i, value in enumerate(mask):
        if value and start is None:
            start = i
        elif not value and start is not None:
            spans.append((start, i))
            start = None
    if start is not None:
        spans.append((start, len(mask)))
    return spans
