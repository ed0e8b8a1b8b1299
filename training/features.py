"""Where Stage 1 gets VL features: the cache (``on``/``build``) or the VLM itself (``off``).

A miss with ``cache_mode="on"`` computes and stores the feature only when ``compute_on_miss`` is set;
otherwise it raises :class:`~training.feature_cache.CacheMissError`. There is no other fallback.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from tqdm import tqdm

from training.dataset import FeatureRef
from training.feature_cache import CACHE_MODES, CacheMissError, FeatureCache, unique_refs

Extractor = Callable[[list[list[np.ndarray]], list[str]], list[torch.Tensor]]
"""Batched VL feature extraction: (image groups, instructions) -> one [T, Hvl] tensor per group."""
ImageLoader = Callable[[FeatureRef], list[np.ndarray]]


def pad_features(features: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack ``[T_i, H]`` tensors into ``[N, T_max, H]`` and a bool mask ``[N, T_max]`` (True = real)."""
    longest = max(f.shape[0] for f in features)
    out = features[0].new_zeros((len(features), longest, features[0].shape[1]))
    mask = torch.zeros((len(features), longest), dtype=torch.bool)
    for i, f in enumerate(features):
        out[i, : f.shape[0]] = f
        mask[i, : f.shape[0]] = True
    return out, mask


def build_cache(
    cache: FeatureCache,
    refs: Sequence[FeatureRef],
    extract: Extractor,
    load_images: ImageLoader,
    batch_size: int = 8,
    rank: int = 0,
    world: int = 1,
    progress: bool = True,
) -> int:
    """Compute this rank's missing features; returns how many.

    A rank owns ``unique_refs(refs)[rank::world]`` (decided before looking at the cache), so ranks that
    start at different times never skip or duplicate an entry.
    """
    cache.verify()
    todo = cache.missing(unique_refs(refs)[rank::world])
    with torch.no_grad():
        for start in tqdm(
            range(0, len(todo), batch_size), desc=f"build cache r{rank}", unit="batch", disable=not progress
        ):
            chunk = todo[start : start + batch_size]
            features = extract([load_images(r) for r in chunk], [r.instruction for r in chunk])
            for ref, feature in zip(chunk, features):
                cache.put(ref, feature)
    cache.flush()
    return len(todo)


class FeatureSource:
    """Resolve feature refs to padded feature tensors according to ``cache_mode``."""

    def __init__(
        self,
        mode: str,
        cache: FeatureCache | None,
        extract: Extractor | None,
        load_images: ImageLoader,
        compute_on_miss: bool = False,
    ) -> None:
        if mode not in CACHE_MODES:
            raise ValueError(f"cache_mode must be one of {CACHE_MODES}, got {mode!r}")
        if mode != "off" and cache is None:
            raise ValueError(f"cache_mode={mode!r} needs a cache directory")
        if (mode == "off" or compute_on_miss) and extract is None:
            raise ValueError("computing features needs the VLM (an extractor)")
        self.mode, self.cache, self.extract = mode, cache, extract
        self.load_images, self.compute_on_miss = load_images, compute_on_miss

    def _compute(self, refs: Sequence[FeatureRef]) -> list[torch.Tensor]:
        with torch.no_grad():
            return [
                f.detach().cpu()
                for f in self.extract([self.load_images(r) for r in refs], [r.instruction for r in refs])
            ]

    def features(self, refs: Sequence[FeatureRef]) -> tuple[torch.Tensor, torch.Tensor]:
        """Return padded features ``[N, T, H]`` and mask ``[N, T]`` for ``refs`` (each distinct ref once)."""
        distinct = unique_refs(refs)
        if self.mode == "off":
            found = dict(zip(distinct, self._compute(distinct)))
        else:
            found = {r: self.cache.get(r) for r in distinct}
            missing = [r for r, f in found.items() if f is None]
            if missing and not self.compute_on_miss:
                raise CacheMissError(
                    f"{len(missing)} VL features not in cache {self.cache.directory} (first: episode "
                    f"{missing[0].episode}, frames {missing[0].frame_stamps_ns}); run build-cache or pass "
                    "--compute-on-miss"
                )
            if missing:
                for ref, feature in zip(missing, self._compute(missing)):
                    self.cache.put(ref, feature)
                    found[ref] = feature
        return pad_features([found[r] for r in refs])
