"""Gateway settings: ``MEDSTACK_*`` variables that only the gateway reads.

Shared addresses (Triton, Redis, database, folders) stay in ``medstack.settings``; this adds auth,
rate limits, timeouts and upload limits. Import the singleton: ``from gateway.config import config``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from medstack.keys import check_bootstrap_key


class GatewaySettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MEDSTACK_", env_file=".env", extra="ignore")

    environment: Literal["development", "production"] = "development"
    # an admin key for the embedded stack and tests; never set it in production
    bootstrap_key: SecretStr | None = None

    # verified keys are remembered this long; a revocation elsewhere takes effect within it
    key_cache_s: float = Field(2.0, ge=0)

    # per-key token bucket, shared by every gateway process through Redis
    rate_limit_per_s: float = Field(20.0, gt=0)
    rate_limit_burst: int = Field(100, ge=1)

    # Triton (gRPC): per call, retries on UNAVAILABLE with backoff, and how long start-up waits
    triton_call_timeout_s: float = Field(30.0, gt=0)
    triton_retries: int = Field(3, ge=0)
    triton_retry_backoff_s: float = Field(0.1, ge=0)
    triton_wait_s: float = Field(30.0, ge=0)
    database_wait_s: float = Field(60.0, ge=0)
    retry_after_s: int = Field(5, ge=1)

    # small synchronous inference through POST /v1/models/{name}/infer
    max_infer_mb: int = Field(16, ge=1)

    # zip uploads (DICOM series, datasets): checked member by member before a job sees them
    archive_max_members: int = Field(20_000, ge=1)
    archive_max_uncompressed_mb: int = Field(4096, ge=1)
    # compression ratio above which a large member counts as a decompression bomb
    archive_max_ratio: float = Field(200.0, gt=1)

    log_format: Literal["json", "text"] = "json"
    log_level: str = "INFO"
    audit: bool = True

    @field_validator("bootstrap_key")
    @classmethod
    def _strong_bootstrap_key(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and value.get_secret_value() == "":
            return None
        if value is not None:
            check_bootstrap_key(value.get_secret_value())
        return value

    @model_validator(mode="after")
    def _no_bootstrap_in_production(self) -> GatewaySettings:
        if self.environment == "production" and self.bootstrap_key is not None:
            raise ValueError("MEDSTACK_BOOTSTRAP_KEY is for development only; create keys with `medstack keys create`")
        return self


config = GatewaySettings()
