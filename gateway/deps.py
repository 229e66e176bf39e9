"""Request dependencies as ``Annotated`` aliases."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Header, Request
from sqlalchemy.orm import Session

from core.artifacts import ArtifactStore
from core.db import session_factory
from gateway.auth import CurrentKey, Principal
from gateway.triton_client import TritonClient


def get_db() -> Iterator[Session]:
    with session_factory()() as session:
        yield session


def get_store() -> ArtifactStore:
    return ArtifactStore()


async def get_triton(request: Request) -> TritonClient:
    # async: FastAPI runs a plain def dependency in the thread pool, a hand-off per request
    return request.app.state.triton  # type: ignore[no-any-return]


DbSession = Annotated[Session, Depends(get_db)]
Store = Annotated[ArtifactStore, Depends(get_store)]
Triton = Annotated[TritonClient, Depends(get_triton)]
IdempotencyKey = Annotated[
    str | None,
    Header(alias="Idempotency-Key", max_length=100,
           description="names this request: repeating it returns the same job instead of a new one",
           examples=["ris-order-88412"]),
]

__all__ = ["CurrentKey", "DbSession", "IdempotencyKey", "Principal", "Store", "Triton"]
