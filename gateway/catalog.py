"""What the model repository holds, read from the manifests export/ writes."""

from __future__ import annotations

from typing import Any

from export.manifest import latest_manifest
from medstack.settings import settings


def manifests() -> dict[str, dict[str, Any]]:
    repo = settings.model_repository
    if not repo.is_dir():
        return {}
    found = {}
    for model_dir in sorted(p for p in repo.iterdir() if p.is_dir()):
        manifest = latest_manifest(model_dir)
        if manifest is not None:
            found[model_dir.name] = manifest
    return found


def segmentation_models() -> list[str]:
    present = manifests()
    return [name for name in settings.segmentation_models if name in present]
