"""Deterministic batch plans: which items (and staleness k) each rank sees at each optimizer step.

Epoch ``e`` is a permutation of the dataset drawn from ``(seed, e)``, cut into global batches (the
remainder is dropped). Each item also draws its k there. A global batch of ``world * accum * micro``
items is split so that micro-batch ``a`` of rank ``r`` holds items ``[(a*world + r)*micro, ...+micro)``.
The plan depends only on (seed, epoch, step), so a data position is just ``(epoch, step)``: resuming
replays exactly the batches an uninterrupted run would have seen, for any world size.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch


def sample_k(rng: np.random.Generator, max_k: np.ndarray, age_weights: Sequence[float] | None) -> np.ndarray:
    """Draw k per item in ``[0, max_k]``: uniform, or ``age_weights`` truncated to that range.

    An item whose allowed range holds only zero weights (a tick earlier than the VLM latency of a matched
    recipe) takes the oldest allowed k, the age closest to the distribution.
    """
    u = rng.random(max_k.shape[0])
    if not age_weights:
        return np.minimum(np.floor(u * (max_k + 1)).astype(np.int64), max_k)
    weights = np.asarray(age_weights, dtype=np.float64)
    if np.any(weights < 0) or weights.sum() <= 0:
        raise ValueError(f"age weights must be non-negative with a positive sum, got {list(age_weights)}")
    cdf = np.cumsum(weights)
    out = np.empty_like(max_k)
    for i, (ui, km) in enumerate(zip(u, max_k)):
        truncated = cdf[: km + 1]
        if truncated[-1] <= 0:  # all allowed ages have weight 0: the oldest allowed is the closest
            out[i] = int(km)
        else:
            out[i] = min(int(np.searchsorted(truncated, ui * truncated[-1], side="right")), int(km))
    return out


class BatchPlan:
    """The global batches of every epoch, fixed by a seed."""

    def __init__(
        self,
        max_k: np.ndarray,
        global_batch: int,
        seed: int,
        age_weights: Sequence[float] | None = None,
        shuffle: bool = True,
    ) -> None:
        self.max_k = np.asarray(max_k, dtype=np.int64)
        self.global_batch = int(global_batch)
        self.seed = int(seed)
        self.age_weights = tuple(age_weights) if age_weights else None
        self.shuffle = shuffle
        if self.steps_per_epoch == 0:
            raise ValueError(f"{len(self.max_k)} items cannot fill one global batch of {global_batch}")
        self._cached: tuple[int, np.ndarray, np.ndarray] | None = None

    @property
    def steps_per_epoch(self) -> int:
        """Optimizer steps in one epoch (incomplete last batch dropped)."""
        return len(self.max_k) // self.global_batch

    def _epoch(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        if self._cached is None or self._cached[0] != epoch:
            rng = np.random.default_rng([self.seed, epoch])
            order = rng.permutation(len(self.max_k)) if self.shuffle else np.arange(len(self.max_k))
            ks = sample_k(rng, self.max_k[order], self.age_weights)
            self._cached = (epoch, order, ks)
        return self._cached[1], self._cached[2]

    def global_items(self, epoch: int, step: int) -> list[tuple[int, int]]:
        """Return the ``(index, k)`` items of one global batch."""
        order, ks = self._epoch(epoch)
        lo = step * self.global_batch
        return [
            (int(i), int(k))
            for i, k in zip(order[lo : lo + self.global_batch], ks[lo : lo + self.global_batch])
        ]

    def micro_batches(
        self, epoch: int, step: int, rank: int, world: int, accum: int
    ) -> list[list[tuple[int, int]]]:
        """Return this rank's ``accum`` micro-batches of global step ``(epoch, step)``."""
        if self.global_batch % (world * accum):
            raise ValueError(
                f"global batch {self.global_batch} is not divisible by world {world} x accum {accum}"
            )
        micro = self.global_batch // (world * accum)
        items = self.global_items(epoch, step)
        return [items[(a * world + rank) * micro : (a * world + rank + 1) * micro] for a in range(accum)]


class RankBatchSampler(torch.utils.data.Sampler):
    """Yields this rank's micro-batches from a data position on, epoch after epoch (for a DataLoader)."""

    def __init__(
        self, plan: BatchPlan, rank: int, world: int, accum: int, start_epoch: int = 0, start_step: int = 0
    ) -> None:
        self.plan, self.rank, self.world, self.accum = plan, rank, world, accum
        self.start_epoch, self.start_step = start_epoch, start_step

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        epoch, step = self.start_epoch, self.start_step
        while True:
            if step >= self.plan.steps_per_epoch:
                epoch, step = epoch + 1, 0
            yield from self.plan.micro_batches(epoch, step, self.rank, self.world, self.accum)
            step += 1
