"""The MedStack gateway: ``uvicorn gateway.main:app``."""

from __future__ import annotations

import logging

from fastapi import FastAPI

from gateway import problems
from gateway.api.routes import health, jobs, models, segmentation

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def create_app() -> FastAPI:
    app = FastAPI(
        title="MedStack",
        version="0.1.0",
        description="Medical-imaging foundation models served by NVIDIA Triton.",
    )
    problems.install(app)
    for module in (health, models, segmentation, jobs):
        app.include_router(module.router)
    return app


app = create_app()
