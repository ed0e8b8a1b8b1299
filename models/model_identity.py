"""Identity of VLM weights from their content: moving them keeps it, other weights at the same path change it.

``weights_identity(name_or_path)`` hashes every ``*.safetensors`` file of a model folder (the header, which
names every tensor with its dtype and shape, is part of each file's bytes) into 16 hex digits. Hashing a
3B model's 7 GB takes seconds, so each file's digest is cached beside the weights in
``.weights_identity.json`` (or, for a read-only folder, under ``$INSERTION_VLA_CACHE/identity/``), keyed
by size and modification time: a rewritten file is hashed again. A model that is not on disk (a hub id not
in the local cache, random-weight benchmark architectures) has the identity ``absent:<name>``.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

CACHE_FILE = ".weights_identity.json"


def local_model_dir(name_or_path: str) -> Path | None:
    """The folder holding the weights of ``name_or_path`` (a path, a ``builtin:`` name or a cached hub id)."""
    from models.vlm import resolve_model_path

    resolved = Path(resolve_model_path(name_or_path))
    if resolved.is_dir():
        return resolved
    try:  # a hub id: only the local cache, never a download
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(str(name_or_path), local_files_only=True))
    except Exception:  # noqa: BLE001 - not cached, not a repo id, or no huggingface_hub: absent
        return None


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def _cache_path(folder: Path) -> Path:
    if os.access(folder, os.W_OK):
        return folder / CACHE_FILE
    from models.tiny_qwen import _default_cache_root

    key = hashlib.sha256(str(folder.resolve()).encode()).hexdigest()[:16]
    return _default_cache_root() / "identity" / f"{key}.json"


def weights_identity(name_or_path: str) -> str:
    """16-hex content identity of the model's safetensors files, or ``absent:<name>``."""
    folder = local_model_dir(name_or_path)
    files = sorted(folder.glob("*.safetensors")) if folder is not None else []
    if not files:
        return f"absent:{name_or_path}"
    cache_path = _cache_path(folder)
    try:
        cached = json.loads(cache_path.read_text())
    except (OSError, ValueError):
        cached = {}
    entries, changed = {}, False
    for file in files:
        stat = file.stat()
        key = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
        entry = cached.get(file.name)
        if entry is None or {k: entry.get(k) for k in key} != key:
            entry, changed = {**key, "sha256": _file_digest(file)}, True
        entries[file.name] = entry
    if changed:
        try:
            cache_path.parent.mkdir(parents=True, exist_ok=True)
            staging = cache_path.with_suffix(f".{os.getpid()}.tmp")
            staging.write_text(json.dumps(entries, indent=1, sort_keys=True))
            staging.replace(cache_path)
        except OSError:
            pass  # an unwritable cache only costs the hash again next time
    combined = hashlib.sha256("".join(f"{n}:{e['sha256']}\n" for n, e in sorted(entries.items())).encode())
    return combined.hexdigest()[:16]
