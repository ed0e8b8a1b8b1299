"""Rank-0 run logging: tensorboard scalars, ``history.json`` and ``curves.png`` beside it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


class RunLog:
    """Scalars by tag: kept as ``{tag: [[step, value], ...]}``, mirrored to tensorboard."""

    def __init__(self, out_dir: Path, history: dict[str, list[list[float]]] | None = None) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.history: dict[str, list[list[float]]] = {
            k: [list(p) for p in v] for k, v in (history or {}).items()
        }
        self.writer = SummaryWriter(str(self.out_dir / "tensorboard"))

    def add(self, step: int, scalars: dict[str, float]) -> None:
        """Record scalars at ``step``."""
        for tag, value in scalars.items():
            self.history.setdefault(tag, []).append([int(step), float(value)])
            self.writer.add_scalar(tag, float(value), int(step))

    def last(self, tag: str) -> float | None:
        """Most recent value of ``tag``."""
        points = self.history.get(tag)
        return points[-1][1] if points else None

    def save(self, extra: dict[str, Any] | None = None) -> None:
        """Write ``history.json`` and ``curves.png``; flush tensorboard."""
        data = {"history": self.history, **(extra or {})}
        (self.out_dir / "history.json").write_text(json.dumps(data, indent=1))
        self.plot(self.out_dir / "curves.png")
        self.writer.flush()

    def plot(self, path: Path) -> None:
        """Loss curves (train and validation) and per-dimension validation MAE."""
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        for tag in ("train/loss", "val/loss"):
            if self.history.get(tag):
                steps, values = zip(*self.history[tag])
                axes[0].plot(steps, values, label=tag, marker="." if tag.startswith("val") else None)
        axes[0].set_xlabel("step")
        axes[0].set_ylabel("loss (normalised MSE)")
        axes[0].set_yscale("log")
        axes[0].legend()
        for tag in sorted(t for t in self.history if t.startswith("val/mae_")):
            steps, values = zip(*self.history[tag])
            axes[1].plot(steps, values, label=tag.removeprefix("val/mae_"), marker=".")
        axes[1].set_xlabel("step")
        axes[1].set_ylabel("validation MAE (mm / rad / unit)")
        axes[1].set_yscale("log")
        if any(t.startswith("val/mae_") for t in self.history):
            axes[1].legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(path, dpi=90)
        plt.close(fig)

    def close(self) -> None:
        """Close the tensorboard writer."""
        self.writer.close()
