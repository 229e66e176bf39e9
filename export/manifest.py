"""Provenance of one served model version: ``<model>/<version>/manifest.json``.

Gateway and worker results quote ``model``, ``version`` and ``sha256`` from here, so anyone can
trace a mask back to the exact ONNX file, checkpoint, training command and parity check.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from core.settings import REPO_ROOT

MANIFEST = "manifest.json"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def git_commit() -> str:
    """The commit the export ran from, with ``+dirty`` when the tree had uncommitted changes."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
            capture_output=True, text=True, check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("+dirty" if dirty else "")


def write_manifest(version_dir: Path, manifest: dict[str, Any]) -> Path:
    path = version_dir / MANIFEST
    manifest = {"created": datetime.now(UTC).isoformat(timespec="seconds")} | manifest
    path.write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n")
    return path


def read_manifest(version_dir: Path) -> dict[str, Any]:
    return json.loads((version_dir / MANIFEST).read_text())


def versions(model_dir: Path) -> list[int]:
    """Version numbers present in a model folder, ascending."""
    if not model_dir.is_dir():
        return []
    return sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit())


def latest_manifest(model_dir: Path) -> dict[str, Any] | None:
    found = [v for v in versions(model_dir) if (model_dir / str(v) / MANIFEST).exists()]
    return read_manifest(model_dir / str(found[-1])) if found else None
