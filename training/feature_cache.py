"""On-disk cache of VL features, keyed by episode, frame stamps, instruction and VLM fingerprint.

The episode is its folder name and its ``Episode.content_id`` (another recording under the same name
never shares an entry).

Layout::

    <root>/<sha256(fingerprint)[:16]>/
        fingerprint.json                       the full fingerprint this folder serves
        shard-r<rank>-<uuid>.safetensors       tensors named by entry key, [T, Hvl] each
        shard-r<rank>-<uuid>.json              the shard's index: keys, byte size and sha256 of the shard

A shard is written to a temporary file and renamed into place, then its JSON index the same way; the
index is the commit record, so a shard without one (a crash mid-write) is partial and is deleted. A shard
whose size or sha256 does not match its index is corrupt: it is deleted with its index, its entries
become misses, and they are rebuilt on the next build (or computed on demand when allowed). Shards are
verified once per process, on first use. Ranks write their own shards, so a sharded build needs no locks.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from training.dataset import FeatureRef

LOG = logging.getLogger(__name__)
CACHE_MODES = ("on", "off", "build")


class CacheMissError(KeyError):
    """A feature is not in the cache and computing it on a miss was not allowed."""


def entry_key(ref: FeatureRef, fingerprint: str) -> str:
    """Stable key of one feature: sha256 of episode, content id, cameras, stamps, instruction, fingerprint."""
    payload = {
        "episode": ref.episode,
        "content_id": ref.content_id,
        "cameras": list(ref.cameras),
        "frame_stamps_ns": [int(s) for s in ref.frame_stamps_ns],
        "instruction": ref.instruction,
        "fingerprint": fingerprint,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    with tmp.open("w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


class FeatureCache:
    """Read and append VL features for one VLM fingerprint."""

    def __init__(self, root: str | os.PathLike, fingerprint: str, rank: int = 0, shard_entries: int = 256):
        self.fingerprint = fingerprint
        self.directory = Path(root) / hashlib.sha256(fingerprint.encode()).hexdigest()[:16]
        self.directory.mkdir(parents=True, exist_ok=True)
        self.rank = rank
        self.shard_entries = shard_entries
        marker = self.directory / "fingerprint.json"
        if not marker.is_file():
            _atomic_write_text(marker, json.dumps({"fingerprint": fingerprint}))
        self._index: dict[str, str] = {}  # key -> shard file name
        self._shards: dict[str, dict] = {}  # shard name -> its index JSON
        self._verified: dict[str, object] = {}  # shard name -> open safetensors handle
        self._pending: dict[str, torch.Tensor] = {}
        self.stats = {"hits": 0, "misses": 0, "written": 0, "corrupt_shards": 0}
        self.reload()

    # ---- index -----------------------------------------------------------------------------------
    def _owned(self, shard_name: str) -> bool:
        """Whether this rank wrote the shard (only its own files are ever deleted)."""
        return shard_name.startswith(f"shard-r{self.rank}-")

    def reload(self) -> None:
        """Re-read every shard index (other ranks may have written shards).

        A shard without its index is a write in progress (another rank's, between the two renames of
        :meth:`flush`) or one that never finished (this rank's, from a crash): only this rank's own are
        deleted; another rank's are left alone and picked up by a later reload once their index lands.
        """
        self._index.clear()
        self._shards.clear()
        self._verified.clear()
        indexed = set()
        for index_file in sorted(self.directory.glob("shard-*.json")):
            shard = index_file.with_suffix(".safetensors")
            try:
                info = json.loads(index_file.read_text())
                keys = list(info["keys"])
            except (OSError, ValueError, KeyError):
                self._discard(shard.name, "unreadable index")
                continue
            if not shard.is_file():
                self._discard(shard.name, "shard file missing", rebuild=self._owned(shard.name))
                continue
            indexed.add(shard.name)
            self._shards[shard.name] = info
            for key in keys:
                self._index[key] = shard.name
        for shard in self.directory.glob("shard-*.safetensors"):
            if shard.name not in indexed and self._owned(shard.name):  # this rank's write that never finished
                self._discard(shard.name, "partial shard (no index)")

    def _discard(self, shard_name: str, why: str, rebuild: bool = True) -> None:
        """Forget a shard's entries; delete its files only if this rank wrote them."""
        if rebuild:
            LOG.warning("feature cache: discarding %s (%s); its entries will be rebuilt", shard_name, why)
            self.stats["corrupt_shards"] += 1
        if self._owned(shard_name):
            for path in (self.directory / shard_name, (self.directory / shard_name).with_suffix(".json")):
                path.unlink(missing_ok=True)
        info = self._shards.pop(shard_name, None)
        for key in (info or {}).get("keys", []):
            self._index.pop(key, None)
        self._verified.pop(shard_name, None)

    def _open(self, shard_name: str):
        handle = self._verified.get(shard_name)
        if handle is not None:
            return handle
        path = self.directory / shard_name
        info = self._shards[shard_name]
        try:
            ok = path.stat().st_size == info["bytes"] and _sha256_file(path) == info["sha256"]
            handle = safe_open(str(path), framework="pt") if ok else None
        except (OSError, ValueError, RuntimeError):
            handle = None
        if handle is None:
            self._discard(shard_name, "size/sha256 mismatch or unreadable")
            return None
        self._verified[shard_name] = handle
        return handle

    def verify(self) -> int:
        """Check every shard now; returns how many were corrupt (and discarded)."""
        before = self.stats["corrupt_shards"]
        for name in list(self._shards):
            self._open(name)
        return self.stats["corrupt_shards"] - before

    # ---- access ----------------------------------------------------------------------------------
    def key(self, ref: FeatureRef) -> str:
        """Entry key of ``ref`` under this cache's fingerprint."""
        return entry_key(ref, self.fingerprint)

    def __contains__(self, ref: FeatureRef) -> bool:
        key = self.key(ref)
        return key in self._pending or key in self._index

    def __len__(self) -> int:
        return len(self._index) + len(self._pending)

    def get(self, ref: FeatureRef) -> torch.Tensor | None:
        """Return the cached feature ``[T, Hvl]`` or None (a corrupt shard turns into misses)."""
        key = self.key(ref)
        if key in self._pending:
            self.stats["hits"] += 1
            return self._pending[key]
        shard = self._index.get(key)
        handle = self._open(shard) if shard is not None else None
        if handle is None:
            self.stats["misses"] += 1
            return None
        self.stats["hits"] += 1
        return handle.get_tensor(key)

    def put(self, ref: FeatureRef, feature: torch.Tensor) -> None:
        """Add a feature; shards are written every ``shard_entries`` entries and on :meth:`flush`."""
        self._pending[self.key(ref)] = feature.detach().to("cpu").contiguous()
        if len(self._pending) >= self.shard_entries:
            self.flush()

    def flush(self) -> Path | None:
        """Write pending entries as one shard (atomically); returns its path."""
        if not self._pending:
            return None
        name = f"shard-r{self.rank}-{uuid.uuid4().hex[:12]}"
        shard = self.directory / f"{name}.safetensors"
        tmp = self.directory / f".{name}.safetensors.tmp"
        save_file(self._pending, str(tmp), metadata={"fingerprint": self.fingerprint})
        info = {"keys": sorted(self._pending), "bytes": tmp.stat().st_size, "sha256": _sha256_file(tmp)}
        os.replace(tmp, shard)  # the shard first, then its index: the index is the commit record
        _atomic_write_text(shard.with_suffix(".json"), json.dumps(info))
        self._shards[shard.name] = info
        for key in self._pending:
            self._index[key] = shard.name
        self.stats["written"] += len(self._pending)
        self._pending = {}
        return shard

    def missing(self, refs: Iterable[FeatureRef]) -> list[FeatureRef]:
        """Return the refs (deduplicated, in order) that are not cached."""
        seen, out = set(), []
        for ref in refs:
            if ref not in seen and ref not in self:
                seen.add(ref)
                out.append(ref)
        return out


def unique_refs(refs: Sequence[FeatureRef]) -> list[FeatureRef]:
    """Deduplicate refs keeping order."""
    return list(dict.fromkeys(refs))
