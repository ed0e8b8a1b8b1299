"""Helpers every benchmark shares: machine description, percentiles, and the one-JSON-object output."""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path
from typing import Any

import numpy as np


def machine_info() -> dict[str, Any]:
    """CPU model, core count, GPU name (if any), torch and Python versions."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = None
    torch_version = None
    try:
        import torch

        torch_version = torch.__version__
        if torch.cuda.is_available():
            gpu = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "gpu": gpu,
        "torch": torch_version,
        "python": platform.python_version(),
    }


def percentiles_ms(samples_s: list[float] | np.ndarray, prefix: str) -> dict[str, float]:
    """``{prefix}_p50_ms``, ``_p99_ms``, ``_mean_ms`` from samples in seconds."""
    values = np.asarray(samples_s, dtype=np.float64) * 1e3
    if values.size == 0:
        return {
            f"{prefix}_p50_ms": float("nan"),
            f"{prefix}_p99_ms": float("nan"),
            f"{prefix}_mean_ms": float("nan"),
        }
    return {
        f"{prefix}_p50_ms": float(np.percentile(values, 50)),
        f"{prefix}_p99_ms": float(np.percentile(values, 99)),
        f"{prefix}_mean_ms": float(values.mean()),
    }


def base_parser(description: str) -> argparse.ArgumentParser:
    """Argument parser with the flags every benchmark takes (``--quick``, ``--out``)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--quick", action="store_true", help="smaller run (< 60 s on a 2-core CPU), same keys"
    )
    parser.add_argument("--out", type=Path, default=None, help="folder for the JSON copy and PNG plots")
    return parser


def emit(
    name: str, config: dict[str, Any], metrics: dict[str, Any], out: Path | None = None
) -> dict[str, Any]:
    """Print the benchmark's single JSON object on stdout (and save it under ``out`` when given)."""
    result = {"bench": name, "machine": machine_info(), "config": config, "metrics": metrics}
    text = json.dumps(result, indent=None, sort_keys=False, default=float)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / f"{name}.json").write_text(text + "\n")
    sys.stdout.write(text + "\n")
    sys.stdout.flush()
    return result


def save_histogram(path: Path, series_ms: dict[str, Any], xlabel: str, ylabel: str = "count") -> Path:
    """Write overlaid histograms (one per label, values in ms) as a PNG at ``path``; return the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4))
    for label, values in series_ms.items():
        axis.hist(np.asarray(values, dtype=float), bins=30, alpha=0.6, label=label)
    axis.set_xlabel(xlabel)
    axis.set_ylabel(ylabel)
    if len(series_ms) > 1:
        axis.legend()
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
