"""Request dependencies as ``Annotated`` aliases."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends
from sqlalchemy.orm import Session

from medstack.artifacts import ArtifactStore
from medstack.db import session_factory


def get_db() -> Iterator[Session]:
    with session_factory()() as session:
        yield session


def get_store() -> ArtifactStore:
    return ArtifactStore()


DbSession = Annotated[Session, Depends(get_db)]
Store = Annotated[ArtifactStore, Depends(get_store)]
