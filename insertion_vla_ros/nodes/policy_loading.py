"""Checkpoint checks and policy loading for the nodes (clear errors naming the ``checkpoint`` parameter)."""

from __future__ import annotations

from typing import Any


def checkpoint_info(path: str) -> dict[str, Any]:
    """Read ``config.json`` of the checkpoint at ``path``; raise ``CheckpointError`` if unusable."""
    from models.checkpoint import CheckpointError, read_checkpoint_info

    if not path:
        raise CheckpointError(
            "parameter 'checkpoint' is empty: give the policy checkpoint directory "
            "(YAML, `-p checkpoint:=DIR`, or the launch/bringup `checkpoint` argument)"
        )
    try:
        return read_checkpoint_info(path)
    except CheckpointError as error:
        raise CheckpointError(f"parameter 'checkpoint': {error}") from None


def load_policy(path: str, *, device: str, load_vlm: bool, torch_threads: int = 0) -> Any:
    """Load the ``AsyncVLAPolicy`` in eval mode (the VLM only when ``load_vlm``).

    Errors name the ``checkpoint`` parameter (``CheckpointError``).
    """
    import torch

    from models.checkpoint import CheckpointError, load_checkpoint

    checkpoint_info(path)
    if torch_threads > 0:
        torch.set_num_threads(torch_threads)
    try:
        return load_checkpoint(path, device=device, load_vlm=load_vlm).eval()
    except CheckpointError as error:
        raise CheckpointError(f"parameter 'checkpoint': {error}") from None
