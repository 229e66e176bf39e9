"""Artifact store: inputs and results as files, addressed by job id and name, never by user paths."""

from __future__ import annotations

import re
from pathlib import Path

from core.settings import settings

SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class ArtifactStore:
    def __init__(self, root: Path | None = None) -> None:
        self.root = root or settings.artifact_dir

    def job_dir(self, job_id: str) -> Path:
        path = self.root / "jobs" / job_id
        path.mkdir(parents=True, exist_ok=True)
        return path

    def path(self, job_id: str, name: str) -> Path:
        if not SAFE_NAME.match(name):
            raise ValueError(f"invalid artifact name {name!r}")
        return self.job_dir(job_id) / name

    def list(self, job_id: str) -> list[str]:
        folder = self.root / "jobs" / job_id
        return sorted(p.name for p in folder.iterdir() if p.is_file()) if folder.is_dir() else []
