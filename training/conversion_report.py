"""What a converter read, wrote, repaired and skipped, per episode (printed and saved as JSON)."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class EpisodeReport:
    """Outcome for one source episode: ``status`` is "converted" or "skipped"."""

    source: str
    name: str
    status: str = "pending"
    skip_reason: str = ""
    repairs: list[str] = field(default_factory=list)
    counts: dict[str, Any] = field(default_factory=dict)

    def skip(self, reason: str) -> EpisodeReport:
        """Mark the episode skipped with a reason."""
        self.status, self.skip_reason = "skipped", reason
        return self


@dataclass
class ConversionReport:
    """All episode outcomes of one converter run."""

    converter: str
    episodes: list[EpisodeReport] = field(default_factory=list)

    @property
    def converted(self) -> list[EpisodeReport]:
        """Episodes written."""
        return [e for e in self.episodes if e.status == "converted"]

    @property
    def skipped(self) -> list[EpisodeReport]:
        """Episodes not written, each with its reason."""
        return [e for e in self.episodes if e.status == "skipped"]

    def summary(self) -> str:
        """Human-readable summary: totals, then one line per skipped or repaired episode."""
        lines = [
            f"{self.converter}: {len(self.episodes)} episodes read, {len(self.converted)} converted, "
            f"{len(self.skipped)} skipped"
        ]
        for e in self.episodes:
            if e.status == "skipped":
                lines.append(f"  SKIPPED  {e.name} ({e.source}): {e.skip_reason}")
            for repair in e.repairs:
                lines.append(f"  REPAIRED {e.name}: {repair}")
        return "\n".join(lines)

    def save(self, path: str | os.PathLike) -> Path:
        """Write the report as JSON."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        data = {"converter": self.converter, "episodes": [asdict(e) for e in self.episodes]}
        path.write_text(json.dumps(data, indent=2))
        return path
