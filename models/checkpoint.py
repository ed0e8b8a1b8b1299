"""Policy checkpoints: a directory, never a pickle, never the base VLM.

Layout::

    config.json            format version, model config, fingerprint, LoRA hash, action names, window and
                           horizon, normalisation statistics (a readable copy; the exact values live in
                           policy.safetensors), sha256 of every weight file, library versions, ``extra``
    policy.safetensors     sensor encoder + action expert + normalisation buffers
    lora/                  optional peft adapter (adapter_config.json + adapter_model.safetensors)

``config.json`` is written last (via a rename), so a directory without it is an unfinished save.
``load_checkpoint`` checks, in order: files present, JSON valid and keys known, model config keys known,
weight checksums, safetensors parse, tensor names and shapes against a freshly built policy, every tensor
finite, and the stored fingerprint against the one recomputed from the loaded contents. Each failure is a
``CheckpointError`` naming the file, key or tensor. ``read_checkpoint_info`` reads ``config.json`` only.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
from pathlib import Path
from typing import Any

import torch

from models import lora as lora_utils
from models.config import ConfigError, PolicyConfig

FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "policy.safetensors"
LORA_DIR = "lora"
INFO_KEYS = frozenset(
    {
        "format_version",
        "model_config",
        "fingerprint",
        "vlm_weights_identity",
        "feature_layout",
        "lora_hash",
        "has_lora",
        "action_names",
        "sensor_window",
        "sensor_channels",
        "horizon",
        "action_dim",
        "vl_hidden_size",
        "normalization",
        "checksums",
        "versions",
        "extra",
    }
)


class CheckpointError(ValueError):
    """A checkpoint directory is missing, incomplete, corrupt or does not match the model code."""


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {"python": platform.python_version(), "torch": torch.__version__}
    for name in ("transformers", "peft", "safetensors"):
        try:
            versions[name] = __import__(name).__version__
        except ImportError:
            versions[name] = None
    return versions


def save_checkpoint(policy, directory: str | os.PathLike, extra: dict[str, Any] | None = None) -> Path:
    """Write ``policy`` (an ``AsyncVLAPolicy``) to ``directory``; returns the directory path.

    The LoRA adapter is saved when the policy carries one (attached VLM with peft adapters, or an adapter
    folder it was loaded from); the base VLM weights are never written.
    """
    from safetensors.torch import save_file

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    (out / CONFIG_FILE).unlink(missing_ok=True)  # the directory is "unfinished" until config.json lands
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in policy.head_state_dict().items()}
    save_file(tensors, str(out / WEIGHTS_FILE), metadata={"format_version": str(FORMAT_VERSION)})
    checksums = {WEIGHTS_FILE: _sha256(out / WEIGHTS_FILE)}
    lora_out = out / LORA_DIR
    if lora_out.exists():
        shutil.rmtree(lora_out)
    has_lora = False
    if policy.vlm_model is not None and hasattr(policy.vlm_model, "peft_config"):
        lora_utils.save_lora_adapter(policy.vlm_model, lora_out)
        has_lora = True
    elif getattr(policy, "lora_source_dir", None) is not None:
        shutil.copytree(policy.lora_source_dir, lora_out)
        has_lora = True
    if has_lora:
        checksums[f"{LORA_DIR}/{lora_utils.ADAPTER_WEIGHTS}"] = _sha256(lora_out / lora_utils.ADAPTER_WEIGHTS)
    config = policy.config
    info = {
        "format_version": FORMAT_VERSION,
        "model_config": config.to_dict(),
        "fingerprint": policy.fingerprint,
        "vlm_weights_identity": policy.vlm_weights_identity,
        "feature_layout": policy.feature_layout,
        "lora_hash": policy.lora_hash,
        "has_lora": has_lora,
        "action_names": list(policy.action_names),
        "sensor_window": config.sensor.window,
        "sensor_channels": config.sensor.channels,
        "horizon": config.action_expert.horizon,
        "action_dim": config.action_expert.action_dim,
        "vl_hidden_size": config.vlm.hidden_size,
        "normalization": {
            "stored_in": WEIGHTS_FILE,
            "sensor_mean": policy.sensor_encoder.mean.tolist(),
            "sensor_std": policy.sensor_encoder.std.tolist(),
            "action_mean": policy.action_mean.tolist(),
            "action_std": policy.action_std.tolist(),
            **(
                {"state_mean": policy.state_mean.tolist(), "state_std": policy.state_std.tolist()}
                if policy.state_dim
                else {}
            ),
            **(
                {"motion_mean": policy.motion_mean.tolist(), "motion_std": policy.motion_std.tolist()}
                if policy.motion_input
                else {}
            ),
        },
        "checksums": checksums,
        "versions": _versions(),
        "extra": dict(extra or {}),
    }
    staging = out / (CONFIG_FILE + ".tmp")
    staging.write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    staging.replace(out / CONFIG_FILE)
    return out


def read_checkpoint_info(directory: str | os.PathLike) -> dict[str, Any]:
    """``config.json`` of a checkpoint (fingerprint, action names, window, horizon, ...); no weights read."""
    path = Path(directory)
    if not path.is_dir():
        raise CheckpointError(f"checkpoint directory not found: {path}")
    config_path = path / CONFIG_FILE
    if not config_path.is_file():
        raise CheckpointError(f"checkpoint {path} has no {CONFIG_FILE} (missing file or unfinished save)")
    try:
        info = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{config_path} is not valid JSON: {error}") from None
    if not isinstance(info, dict):
        raise CheckpointError(f"{config_path} must hold a JSON object")
    unknown = sorted(set(info) - INFO_KEYS)
    if unknown:
        raise CheckpointError(f"{config_path}: unknown key {unknown[0]!r}; known keys: {sorted(INFO_KEYS)}")
    missing = sorted({"format_version", "model_config", "fingerprint", "checksums"} - set(info))
    if missing:
        raise CheckpointError(f"{config_path}: missing key {missing[0]!r}")
    if info["format_version"] != FORMAT_VERSION:
        raise CheckpointError(
            f"{config_path}: format_version {info['format_version']!r} is not supported "
            f"(expected {FORMAT_VERSION})"
        )
    return info


def _verify_checksum(path: Path, info: dict[str, Any], name: str) -> None:
    if not path.is_file():
        raise CheckpointError(f"checkpoint file missing: {path}")
    expected = info["checksums"].get(name)
    if expected is None:
        raise CheckpointError(f"{CONFIG_FILE} has no checksum for {name}")
    actual = _sha256(path)
    if actual != expected:
        raise CheckpointError(f"{path} is corrupt: sha256 {actual[:12]}... does not match {expected[:12]}...")


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as error:  # safetensors raises its own error types for malformed headers/data
        raise CheckpointError(f"{path} is not a readable safetensors file: {error}") from None


def _check_tensors(loaded: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], path: Path) -> None:
    missing = sorted(set(expected) - set(loaded))
    if missing:
        raise CheckpointError(f"{path}: missing tensor {missing[0]!r} ({len(missing)} missing)")
    unexpected = sorted(set(loaded) - set(expected))
    if unexpected:
        raise CheckpointError(f"{path}: unexpected tensor {unexpected[0]!r} (config and weights disagree)")
    for name, tensor in loaded.items():
        if tensor.shape != expected[name].shape:
            raise CheckpointError(
                f"{path}: shape mismatch for {name!r}: checkpoint {list(tensor.shape)}, "
                f"model config expects {list(expected[name].shape)}"
            )
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise CheckpointError(f"{path}: tensor {name!r} contains non-finite values (NaN/Inf)")


def load_checkpoint(directory: str | os.PathLike, device: str | torch.device = "cpu", load_vlm: bool = False):
    """Load an ``AsyncVLAPolicy`` (eval mode) from ``directory``; validates everything (module docstring).

    With ``load_vlm=False`` (the action-expert node) the VLM is never touched; the fingerprint then comes
    from the config and the stored LoRA hash. With ``load_vlm=True`` the VLM named in the config is loaded,
    the adapter attached, and the recomputed LoRA hash must match the stored one.
    """
    from models.policy import AsyncVLAPolicy

    path = Path(directory)
    info = read_checkpoint_info(path)
    try:
        config = PolicyConfig.from_dict(info["model_config"])
    except ConfigError as error:
        raise CheckpointError(f"{path / CONFIG_FILE}: model_config: {error}") from None
    weights_path = path / WEIGHTS_FILE
    _verify_checksum(weights_path, info, WEIGHTS_FILE)
    tensors = _read_weights(weights_path)
    policy = AsyncVLAPolicy(config)
    _check_tensors(tensors, policy.head_state_dict(), weights_path)
    policy.load_state_dict(tensors, strict=False)
    lora_dir = None
    if info.get("has_lora"):
        lora_dir = path / LORA_DIR
        for name in (lora_utils.ADAPTER_CONFIG, lora_utils.ADAPTER_WEIGHTS):
            if not (lora_dir / name).is_file():
                raise CheckpointError(
                    f"checkpoint file missing: {lora_dir / name} (config.json says has_lora)"
                )
        _verify_checksum(
            lora_dir / lora_utils.ADAPTER_WEIGHTS, info, f"{LORA_DIR}/{lora_utils.ADAPTER_WEIGHTS}"
        )
        policy.lora_source_dir = lora_dir
    policy._stored_lora_hash = str(info.get("lora_hash", lora_utils.NO_LORA_HASH))
    stored_identity = info.get("vlm_weights_identity")
    policy._vlm_identity = stored_identity  # None (older checkpoints): computed from the weight files
    policy.to(device)
    if load_vlm:
        policy.attach_vlm(device=device, lora_dir=None if lora_dir is None else str(lora_dir))
        if policy.lora_hash != policy._stored_lora_hash:
            raise CheckpointError(
                f"{path}: LoRA weights hash {policy.lora_hash} does not match "
                f"config.json ({policy._stored_lora_hash})"
            )
        if stored_identity is not None and policy.vlm_weights_identity != stored_identity:
            raise CheckpointError(
                f"{path}: the VLM weights at {policy.config.vlm.model_name_or_path!r} (identity "
                f"{policy.vlm_weights_identity}) are not the ones it was trained on ({stored_identity})"
            )
    if stored_identity is None:
        if policy.vlm_weights_identity.startswith("absent:"):
            raise CheckpointError(
                f"{path} predates weight-content fingerprints and the VLM weights "
                f"({policy.config.vlm.model_name_or_path!r}) are not here: re-save it where they are"
            )
    elif policy.fingerprint != info["fingerprint"]:
        raise CheckpointError(
            f"{path}: fingerprint {policy.fingerprint} recomputed from the checkpoint does not match "
            f"config.json ({info['fingerprint']}); the file was edited or written by incompatible code"
        )
    return policy.eval()
