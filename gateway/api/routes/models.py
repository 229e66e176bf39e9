"""What is served: name, version, sha256, tensors and metrics from each model's manifest."""

from __future__ import annotations

from fastapi import APIRouter

from gateway.catalog import manifests
from gateway.schemas import ModelPublic

router = APIRouter(prefix="/v1/models", tags=["models"])


@router.get("", summary="Models in the repository, latest version each")
def list_models() -> list[ModelPublic]:
    return [
        ModelPublic(
            name=name, version=m["version"], sha256=m["sha256"], description=m.get("description", ""),
            inputs=m["inputs"], outputs=m["outputs"], parity=m["parity"],
            validation_metrics=m.get("validation_metrics", {}),
        )
        for name, m in manifests().items()
    ]
