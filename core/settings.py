"""One place for MedStack's configuration, read from ``MEDSTACK_*`` environment variables.

The embedded stack (``medstack up``) and the compose deployment run the same code; only these
values differ. Every process (gateway, worker, CLI) reads the same object; the gateway-only
fields (auth, rate limits, Triton call policy, upload limits, logging) sit in their own section.
Import the singleton: ``from core.settings import settings``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parent.parent
MIN_BOOTSTRAP_LENGTH = 24


def check_bootstrap_key(key: str) -> None:
    """Refuse a bootstrap admin key that is short or guessable."""
    if len(key) < MIN_BOOTSTRAP_LENGTH or len(set(key)) < 8:
        raise ValueError(
            f"MEDSTACK_BOOTSTRAP_KEY must be a random string of at least {MIN_BOOTSTRAP_LENGTH} characters "
            "(e.g. `python -c 'import secrets; print(secrets.token_urlsafe(32))'`)"
        )


class DicomwebServer(BaseModel):
    """A DICOMweb server jobs may read from (WADO-RS) and store results to (STOW-RS), by name."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(pattern=r"^https?://", description="service root, e.g. http://pacs:8042/dicom-web")
    username: str | None = None
    password: SecretStr | None = None
    store_results: bool = Field(True, description="STOW-RS a succeeded job's DICOM SEG back to this server")
    timeout_s: float = Field(120.0, gt=0)


class DicomNode(BaseModel):
    """A DICOM application entity MedStack sends results to with C-STORE, by name."""

    model_config = ConfigDict(extra="forbid")

    ae_title: str = Field(min_length=1, max_length=16, pattern=r"^[ -~]*[!-~][ -~]*$")
    host: str
    port: int = Field(ge=1, le=65535)


class PacsRoute(BaseModel):
    """A routing rule of the DICOM listener: a series whose attributes match ``match`` (every key a
    DICOM keyword, every value one accepted value, case-insensitive) becomes a job of ``capability``
    with ``model`` (default: the capability's own); its result goes to ``destination``. First match wins."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=64)
    match: dict[str, list[str]] = Field(default_factory=dict)
    capability: Literal["segmentation"] = "segmentation"
    model: str | None = None
    destination: str | None = Field(None, description="a name in MEDSTACK_DICOM_DESTINATIONS")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MEDSTACK_", env_file=".env", extra="ignore")

    # Folders
    data_dir: Path = Field(REPO_ROOT / ".cache" / "data", description="offline datasets (MEDSTACK_DATA_DIR)")
    run_dir: Path = Field(REPO_ROOT / ".run", description="pid files, logs, runtime folders")
    artifact_dir: Path = Field(REPO_ROOT / ".run" / "artifacts", description="uploaded inputs and results")
    model_repository: Path = Field(REPO_ROOT / "model_repository")
    triton_env: Path = Field(REPO_ROOT / ".venv-triton", description="venv holding nvidia-pytriton, numpy<2")
    # serve every model in fp32 even where its manifest allows bf16 (export/precision.py); Triton's
    # python backend reads MEDSTACK_FORCE_FP32 from its environment when it loads a model
    force_fp32: bool = False

    # Triton
    triton_host: str = "127.0.0.1"
    triton_http_port: int = 8000
    triton_grpc_port: int = 8001
    triton_metrics_port: int = 8002
    # "embedded" selects configs/embedded.pbtxt (python backend running ONNX Runtime); empty means
    # the default config.pbtxt (native onnxruntime backend of the NGC image).
    triton_config_name: str = "embedded"
    triton_model_control: str = Field("none", pattern="^(none|explicit|poll)$")
    triton_timeout_s: float = 120.0

    # Broker, database
    redis_url: str = "redis://127.0.0.1:6379/0"
    database_url: str = ""  # empty: SQLite file in run_dir

    # Gateway
    gateway_host: str = "127.0.0.1"
    gateway_port: int = 8080
    # default fits a 512x512x800 int16 CT uncompressed (400 MiB) with room for headers
    max_upload_mb: int = 512

    # Gateway only: deployment, auth, rate limits, Triton call policy, upload limits, logging
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

    # PACS (docs/pacs.md). Addresses and credentials are configuration, never request fields: a job
    # names a server or destination, and the worker looks it up here. JSON in the environment, e.g.
    # MEDSTACK_DICOMWEB_SERVERS='{"pacs": {"url": "http://127.0.0.1:8042/dicom-web", "username": "…"}}'
    dicomweb_servers: dict[str, DicomwebServer] = Field(default_factory=dict)
    dicom_destinations: dict[str, DicomNode] = Field(default_factory=dict)
    # the DICOM listener (C-STORE SCP, `python -m medstack.listener`)
    listener_ae_title: str = Field("MEDSTACK", min_length=1, max_length=16)
    listener_host: str = "127.0.0.1"
    listener_port: int = Field(11112, ge=1, le=65535)
    # calling AE titles allowed to associate; empty refuses everyone (C-ECHO included)
    listener_allowed_aes: list[str] = Field(default_factory=list)
    listener_max_associations: int = Field(4, ge=1)
    # a series is complete when no instance of it has arrived for this long
    listener_series_timeout_s: float = Field(30.0, gt=0)
    listener_routes: list[PacsRoute] = Field(default_factory=list)
    # the listener submits jobs through the gateway with this key (scope of each route's capability)
    listener_api_key: SecretStr | None = None

    log_format: Literal["json", "text"] = "json"
    log_level: str = "INFO"
    audit: bool = True

    @property
    def triton_grpc_url(self) -> str:
        return f"{self.triton_host}:{self.triton_grpc_port}"

    @property
    def triton_http_url(self) -> str:
        return f"{self.triton_host}:{self.triton_http_port}"

    @property
    def sqlalchemy_url(self) -> str:
        return self.database_url or f"sqlite:///{self.run_dir / 'medstack.db'}"

    @field_validator("bootstrap_key")
    @classmethod
    def _strong_bootstrap_key(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and value.get_secret_value() == "":
            return None
        if value is not None:
            check_bootstrap_key(value.get_secret_value())
        return value

    @model_validator(mode="after")
    def _routes_name_destinations(self) -> Settings:
        for route in self.listener_routes:
            if route.destination is not None and route.destination not in self.dicom_destinations:
                raise ValueError(f"listener route {route.name!r} sends to {route.destination!r}, which is not in "
                                 f"MEDSTACK_DICOM_DESTINATIONS ({', '.join(self.dicom_destinations) or 'empty'})")
        return self

    @model_validator(mode="after")
    def _no_bootstrap_in_production(self) -> Settings:
        if self.environment == "production" and self.bootstrap_key is not None:
            raise ValueError("MEDSTACK_BOOTSTRAP_KEY is for development only; create keys with `medstack keys create`")
        return self


settings = Settings()
