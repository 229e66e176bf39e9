"""What the model repository holds, read from the manifests export/ writes.

Read at most every few seconds (a request path should not parse JSON files from disk each time),
so a new export shows up in the catalog within ``CACHE_S``.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

from core.settings import settings
from export.manifest import latest_manifest, read_manifest

CACHE_S = 2.0
_lock = threading.Lock()
_cache: tuple[float, Path, dict[str, dict[str, Any]]] | None = None


def _scan(repo: Path) -> dict[str, dict[str, Any]]:
    if not repo.is_dir():
        return {}
    found = {}
    for model_dir in sorted(p for p in repo.iterdir() if p.is_dir()):
        manifest = latest_manifest(model_dir)
        if manifest is not None:
            found[model_dir.name] = manifest
    return found


def manifests() -> dict[str, dict[str, Any]]:
    """``{model name: manifest of its latest version}``."""
    global _cache
    repo = settings.model_repository
    with _lock:
        now = time.monotonic()
        if _cache is None or _cache[1] != repo or now - _cache[0] > CACHE_S:
            _cache = (now, repo, _scan(repo))
        return _cache[2]


def manifest_of(name: str, version: str | int | None = None) -> dict[str, Any] | None:
    """The manifest of ``name`` at ``version`` (default: latest), or None."""
    latest = manifests().get(name)
    if latest is None or version in (None, "") or str(latest.get("version")) == str(version):
        return latest
    if not str(version).isdigit():
        return None
    try:
        return read_manifest(settings.model_repository / name / str(version))
    except (FileNotFoundError, ValueError, OSError):
        return None


def provenance(name: str, version: str | None = None) -> dict[str, str]:
    """``{"name", "version", "sha256"}`` of a served model (at ``version``; default the latest), as answers quote it."""
    manifest = manifest_of(name, version) or {}
    return {"name": name, "version": str(manifest.get("version", version or "")),
            "sha256": str(manifest.get("sha256", ""))}
