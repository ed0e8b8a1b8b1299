"""Exact-resume checkpoints without pickle: tensors in safetensors, everything else in JSON.

A resume checkpoint ``<out>/checkpoints/step_<n>/`` holds:

- ``trainable.safetensors``: the policy's state except the frozen base VLM (heads, normalisation, LoRA);
- ``optimizer.safetensors`` + ``optimizer.json``: optimizer tensors by ``state.<param>.<name>`` and the
  rest of its state dict (param groups, scalars);
- ``rng-rank<r>.safetensors`` + ``rng-rank<r>.json``: torch CPU/CUDA generator states, numpy and Python
  ``random`` states of each rank;
- ``state.json`` (written last, the commit record): step, scheduler state, data position, history.

The folder is written under a temporary name and renamed; ``latest`` names the newest complete one.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from models.lora import is_lora_parameter

STATE_FILE = "state.json"
LATEST_FILE = "latest"


def trainable_state(policy: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Policy tensors that training changes: all but the base VLM weights (LoRA tensors included)."""
    return {
        k: v.detach().cpu().contiguous().clone()
        for k, v in policy.state_dict().items()
        if not k.startswith("vlm_model.") or is_lora_parameter(k)
    }


def load_trainable_state(policy: torch.nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """Load :func:`trainable_state` output; every saved key must exist, every trainable key must be saved."""
    expected = set(trainable_state(policy))
    missing, unexpected = expected - set(tensors), set(tensors) - expected
    if missing or unexpected:
        raise ValueError(
            f"resume weights do not fit the policy: missing {sorted(missing)[:5]}, "
            f"unexpected {sorted(unexpected)[:5]}"
        )
    policy.load_state_dict(tensors, strict=False)


def _optimizer_split(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for pid, entries in state["state"].items():
        for name, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{pid}.{name}"] = value.detach().cpu().contiguous().clone()
            else:
                scalars.setdefault(str(pid), {})[name] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _optimizer_join(tensors: dict[str, torch.Tensor], meta: dict[str, Any], device: torch.device) -> dict:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        _, pid, name = key.split(".", 2)
        # Adam's "step" stays on the CPU unless the optimizer is capturable/fused, like torch's own load.
        state.setdefault(int(pid), {})[name] = value if name == "step" else value.to(device)
    for pid, entries in meta["scalars"].items():
        state.setdefault(int(pid), {}).update(entries)
    groups = [dict(g, betas=tuple(g["betas"])) if "betas" in g else g for g in meta["param_groups"]]
    return {"state": state, "param_groups": groups}


def _rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"torch_cuda_{i}"] = s
    np_state = np.random.get_state(legacy=False)
    py_state = random.getstate()
    return tensors, {"numpy": np_state, "python": [py_state[0], list(py_state[1]), py_state[2]]}


def _set_rng_state(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    torch.set_rng_state(tensors["torch_cpu"])
    cuda = [tensors[k] for k in sorted(k for k in tensors if k.startswith("torch_cuda_"))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    np_state = dict(meta["numpy"])
    np_state["state"] = dict(np_state["state"], key=np.asarray(np_state["state"]["key"], dtype=np.uint32))
    np.random.set_state(np_state)
    version, internal, gauss = meta["python"]
    random.setstate((version, tuple(internal), gauss))


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=1, default=_jsonable))


def _jsonable(value: Any) -> Any:
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, (torch.Tensor, np.ndarray)):
        return value.tolist()
    raise TypeError(f"not JSON-serialisable: {type(value).__name__}")


def save_rank_rng(directory: Path, rank: int) -> None:
    """Write this rank's RNG states into ``directory`` (every rank calls this)."""
    tensors, meta = _rng_state()
    save_file(tensors, str(directory / f"rng-rank{rank}.safetensors"))
    _write_json(directory / f"rng-rank{rank}.json", meta)


def staging_dir(root: Path, step: int) -> Path:
    """Temporary folder a checkpoint of ``step`` is assembled in."""
    return root / f".step_{step:08d}.partial"


def save_resume_checkpoint(
    root: Path,
    step: int,
    policy: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    state: dict[str, Any],
    keep: int = 2,
) -> Path:
    """Rank 0: write weights, optimizer and ``state.json`` into the staging folder and commit it.

    Other ranks' RNG files must already be in the staging folder (see :func:`save_rank_rng`).
    """
    tmp = staging_dir(root, step)
    save_file(trainable_state(policy), str(tmp / "trainable.safetensors"))
    tensors, meta = _optimizer_split(optimizer.state_dict())
    save_file(tensors, str(tmp / "optimizer.safetensors"))
    _write_json(tmp / "optimizer.json", meta)
    _write_json(tmp / STATE_FILE, dict(state, step=step, scheduler=scheduler.state_dict()))
    final = root / f"step_{step:08d}"
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    latest_tmp = root / f".{LATEST_FILE}.tmp"
    latest_tmp.write_text(final.name)
    os.replace(latest_tmp, root / LATEST_FILE)
    for old in sorted(root.glob("step_*"))[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(root: Path) -> Path | None:
    """The newest committed resume checkpoint under ``root`` (None when there is none)."""
    pointer = root / LATEST_FILE
    if not pointer.is_file():
        return None
    path = root / pointer.read_text().strip()
    return path if (path / STATE_FILE).is_file() else None


def load_resume_checkpoint(
    path: Path,
    policy: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    rank: int,
    world: int,
) -> dict[str, Any]:
    """Restore weights, optimizer, scheduler and this rank's RNG; returns ``state.json``."""
    state = json.loads((path / STATE_FILE).read_text())
    if state.get("world") != world:
        raise ValueError(
            f"{path} was written by {state.get('world')} ranks; resuming with {world} would change the RNG "
            "streams (the data order would still match)"
        )
    load_trainable_state(policy, load_file(str(path / "trainable.safetensors")))
    device = next(p.device for p in policy.parameters())
    optimizer.load_state_dict(
        _optimizer_join(
            load_file(str(path / "optimizer.safetensors")),
            json.loads((path / "optimizer.json").read_text()),
            device,
        )
    )
    scheduler.load_state_dict(state["scheduler"])
    _set_rng_state(
        load_file(str(path / f"rng-rank{rank}.safetensors")),
        json.loads((path / f"rng-rank{rank}.json").read_text()),
    )
    return state
