"""Grounding head: reads from VL features where the instructed target is (Stage 0 of the embedded VLM).

The head sits on exactly the tokens vlm_node publishes (``[B, T, Hvl]``, ``views x tokens_per_view``
vision tokens in merged-patch raster order) and keeps their positions: a learned embedding per token
index, then per-token linear read-outs only, so whatever it reads must already be in the features, in a
form the action expert's resampler (also position-embedded cross-attention) can read as well:

* ``cell_logits [B, V, P]``: per view, which token's cell holds the instructed target (softmax over P);
* ``within [B, V, P, 2]``: per token, the target's position inside that cell, in cell units (-0.5..0.5);
* ``view_offsets_mm [B, V, 2]``: per view, target - tip in the base frame (mm): each token's estimate,
  weighted by the view's cell softmax (so the estimate comes from where the target is seen);
* ``offset_mm [B, 2]``: the views' estimates weighted by a learned per-view confidence;
* ``colour_logits [B, T, K]``: per token, which of the K target colours the instruction names. A training
  aid only: it makes every vision token read the instruction early, which is the first half of binding
  "the instructed colour" to "this cell" (without it the cell loss sat for thousands of steps at the
  level of "some target is here").

Dense per-view targets (cell, within-cell position and offset of the instructed target in every view it
is visible in) train much faster than one global regression. Saved beside the VLM weights as
``grounding_head.safetensors`` + ``grounding_head.json`` (see :func:`save_grounding_head`).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

HEAD_WEIGHTS = "grounding_head.safetensors"
HEAD_CONFIG = "grounding_head.json"
OFFSET_SCALE_MM = 10.0
"""The offset read-out works in units of 10 mm, so its outputs start near the targets' scale."""


@dataclass(frozen=True)
class GroundingHeadConfig:
    """Shape of the features the head reads."""

    hidden_size: int
    num_views: int
    grid_h: int
    grid_w: int
    num_colours: int = 5

    @property
    def tokens_per_view(self) -> int:
        """Vision tokens of one view."""
        return self.grid_h * self.grid_w


def token_grid(tokens_per_view: int, image_hw: tuple[int, int]) -> tuple[int, int]:
    """The (rows, cols) grid of a view's ``tokens_per_view`` tokens for an image of ``image_hw`` (H, W).

    Raises ``ValueError`` when no grid of that aspect ratio holds exactly that many tokens.
    """
    rows = max(1, round(math.sqrt(tokens_per_view * image_hw[0] / image_hw[1])))
    cols = tokens_per_view // rows
    if rows * cols != tokens_per_view:
        raise ValueError(
            f"{tokens_per_view} tokens per view form no grid for a {image_hw[0]}x{image_hw[1]} image"
        )
    return rows, cols


class GroundingOutput(NamedTuple):
    """What the head predicts for a batch (see the module docstring)."""

    cell_logits: torch.Tensor
    within: torch.Tensor
    view_offsets_mm: torch.Tensor
    offset_mm: torch.Tensor
    colour_logits: torch.Tensor


class GroundingTargets(NamedTuple):
    """Ground truth of a batch.

    ``cell [B, V]`` (long), ``within [B, V, 2]``, ``visible [B, V]``, ``offset_mm [B, 2]``, ``colour [B]``
    (index of the instructed colour).
    """

    cell: torch.Tensor
    within: torch.Tensor
    visible: torch.Tensor
    offset_mm: torch.Tensor
    colour: torch.Tensor


class GroundingHead(nn.Module):
    """Position-aware per-token read-outs of VL features; see the module docstring."""

    def __init__(self, config: GroundingHeadConfig) -> None:
        super().__init__()
        self.config = config
        hidden, tokens = config.hidden_size, config.num_views * config.tokens_per_view
        self.norm = nn.LayerNorm(hidden)
        self.positions = nn.Parameter(torch.zeros(tokens, hidden))
        self.cell = nn.Linear(hidden, 1)
        self.within = nn.Linear(hidden, 2)
        self.offset = nn.Linear(hidden, 2)
        self.view_confidence = nn.Linear(hidden, 1)
        self.colour = nn.Linear(hidden, config.num_colours)

    def forward(self, features: torch.Tensor) -> GroundingOutput:
        """``[B, T, H]`` features with T = views x tokens_per_view -> :class:`GroundingOutput`."""
        cfg = self.config
        expected = cfg.num_views * cfg.tokens_per_view
        if features.ndim != 3 or features.shape[1] != expected or features.shape[2] != cfg.hidden_size:
            raise ValueError(
                f"grounding head expects [B, {expected}, {cfg.hidden_size}], got {list(features.shape)}"
            )
        x = self.norm(features.float()) + self.positions
        batch = x.shape[0]
        per_view = x.reshape(batch, cfg.num_views, cfg.tokens_per_view, -1)
        cells = self.cell(per_view).squeeze(-1)
        # Detached: the offset read-outs learn from where the cell loss says the target is, and never pull
        # the cell logits towards "wherever the offset error is smallest" (that slowed the cells down).
        where = torch.softmax(cells, dim=-1).detach()
        view_offsets = torch.einsum("bvp,bvpc->bvc", where, self.offset(per_view)) * OFFSET_SCALE_MM
        seen = torch.einsum("bvp,bvph->bvh", where, per_view)  # the feature where each view sees the target
        trust = torch.softmax(self.view_confidence(seen).squeeze(-1), dim=-1)
        offset = torch.einsum("bv,bvc->bc", trust, view_offsets)
        return GroundingOutput(cells, self.within(per_view), view_offsets, offset, self.colour(x))


def grounding_loss(
    output: GroundingOutput, targets: GroundingTargets, offset_weight: float = 1.0
) -> tuple[torch.Tensor, dict[str, float]]:
    """The Stage 0 loss of a batch and its terms.

    Per visible view: cell cross-entropy, within-cell L1 and the view's offset error; overall: the offset
    error (smooth L1 in mm, weighted by ``offset_weight``) and the per-token instruction cross-entropy.

    Returns ``(loss, metrics)``: every term and the mean offset error in mm.
    """
    visible = targets.visible.float()
    # Per (pair, view) slot, not per visible view: a fixed denominator keeps the loss a plain mean over pairs,
    # so ranks that split a step's frames average to exactly the single-process loss.
    count = float(visible.numel())
    logits = output.cell_logits.flatten(0, 1)
    cell = targets.cell.flatten().clamp_min(0)
    cell_ce = (F.cross_entropy(logits, cell, reduction="none") * visible.flatten()).sum() / count
    picked = output.within.flatten(0, 1)[torch.arange(cell.shape[0]), cell]
    within_l1 = ((picked - targets.within.flatten(0, 1)).abs().sum(-1) * visible.flatten()).sum() / count
    per_view = F.smooth_l1_loss(
        output.view_offsets_mm,
        targets.offset_mm[:, None].expand_as(output.view_offsets_mm),
        beta=0.5,
        reduction="none",
    ).sum(-1)
    view_l1 = (per_view * visible).sum() / count
    offset_l1 = F.smooth_l1_loss(output.offset_mm, targets.offset_mm, beta=0.5)
    tokens = output.colour_logits.shape[1]
    colour_ce = F.cross_entropy(output.colour_logits.flatten(0, 1), targets.colour.repeat_interleave(tokens))
    loss = cell_ce + within_l1 + offset_weight * (offset_l1 + 0.5 * view_l1) + colour_ce
    error = (output.offset_mm - targets.offset_mm).norm(dim=-1).mean()
    return loss, {
        "cell_ce": float(cell_ce.detach()),
        "colour_ce": float(colour_ce.detach()),
        "within_l1": float(within_l1.detach()),
        "view_offset_l1": float(view_l1.detach()),
        "offset_l1": float(offset_l1.detach()),
        "offset_error_mm": float(error.detach()),
    }


def cell_targets(
    pixels: torch.Tensor, visible: torch.Tensor, image_hw: tuple[int, int], grid_hw: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pixel centres ``[..., 2]`` (u, v) -> (cell index, within-cell position in cell units, visible).

    ``image_hw`` is the image size the pixels refer to, ``grid_hw`` the view's token grid.
    """
    cell_h, cell_w = image_hw[0] / grid_hw[0], image_hw[1] / grid_hw[1]
    col = torch.clamp((pixels[..., 0] / cell_w).floor(), 0, grid_hw[1] - 1)
    row = torch.clamp((pixels[..., 1] / cell_h).floor(), 0, grid_hw[0] - 1)
    within = torch.stack([pixels[..., 0] / cell_w - col - 0.5, pixels[..., 1] / cell_h - row - 0.5], dim=-1)
    cell = (row * grid_hw[1] + col).long()
    return torch.where(visible, cell, torch.full_like(cell, -1)), within.float(), visible.bool()


def save_grounding_head(head: GroundingHead, directory: str | Path) -> None:
    """Write the head beside a model's weights (safetensors + JSON config)."""
    from safetensors.torch import save_file

    directory = Path(directory)
    state = {k: v.detach().cpu().contiguous() for k, v in head.state_dict().items()}
    save_file(state, str(directory / HEAD_WEIGHTS))
    (directory / HEAD_CONFIG).write_text(json.dumps(asdict(head.config), indent=1) + "\n")


def load_grounding_head(directory: str | Path) -> GroundingHead:
    """Read the head :func:`save_grounding_head` wrote; ``FileNotFoundError`` when the model has none."""
    from safetensors.torch import load_file

    directory = Path(directory)
    config_path = directory / HEAD_CONFIG
    if not config_path.is_file():
        raise FileNotFoundError(f"{directory} has no grounding head ({HEAD_CONFIG}); only Stage 0 models do")
    head = GroundingHead(GroundingHeadConfig(**json.loads(config_path.read_text())))
    head.load_state_dict(load_file(str(directory / HEAD_WEIGHTS)))
    return head.eval()
