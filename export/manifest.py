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


class DirtyTreeError(RuntimeError):
    """Tracked files differ from HEAD, so the commit a manifest would name cannot re-create the model."""


def changed_files(root: Path = REPO_ROOT) -> list[str] | None:
    """Tracked files that differ from HEAD, staged or not (untracked files do not count); None outside git."""
    try:
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
            capture_output=True, text=True, check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    return [line[3:] for line in status.splitlines() if line.strip()]


def git_commit(root: Path = REPO_ROOT) -> str:
    """The commit the export ran from, with ``+dirty`` when the tree had uncommitted changes."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("+dirty" if changed_files(root) else "")


def git_provenance(root: Path = REPO_ROOT) -> dict[str, Any]:
    """``git_commit`` and ``dirty`` for a manifest (``dirty`` is None outside a git checkout)."""
    changed = changed_files(root)
    return {"git_commit": git_commit(root), "dirty": None if changed is None else bool(changed)}


def require_clean_tree(allow_dirty: bool = False, root: Path = REPO_ROOT) -> list[str]:
    """Refuse (``DirtyTreeError``) when tracked files differ from HEAD, unless ``allow_dirty``.

    A served version must be re-creatable from the commit its manifest names. Returns the changed
    files (empty for a clean tree), so a caller that allows a dirty tree can say what differs.
    """
    changed = changed_files(root) or []
    if changed and not allow_dirty:
        shown = ", ".join(changed[:5]) + (f" and {len(changed) - 5} more" if len(changed) > 5 else "")
        raise DirtyTreeError(
            f"{len(changed)} tracked file(s) differ from HEAD ({shown}); a served model must be re-creatable "
            "from the commit its manifest names. Commit the changes, or pass --allow-dirty to export anyway "
            '(the manifest then records "dirty": true and the commit as <sha>+dirty).'
        )
    return changed


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
