"""Every router of the API, in one place."""

from __future__ import annotations

from fastapi import APIRouter

from gateway.api.routes import (
    admin,
    dialogue,
    fewshot,
    health,
    hermes,
    jobs,
    localization,
    medlsam,
    models,
    reports,
    segmentation,
    umcam,
    valuation,
)

api_router = APIRouter()
for module in (health, models, segmentation, localization, medlsam, umcam, hermes, reports, dialogue, valuation,
               fewshot, jobs, admin):
    api_router.include_router(module.router)
