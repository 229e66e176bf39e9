"""One place for MedStack's configuration, read from ``MEDSTACK_*`` environment variables.

The embedded stack (``medstack up``) and the compose deployment run the same code; only these
values differ. Import the singleton: ``from medstack.settings import settings``.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parent.parent


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MEDSTACK_", env_file=".env", extra="ignore")

    # Folders
    data_dir: Path = Field(REPO_ROOT / ".cache" / "data", description="offline datasets (MEDSTACK_DATA_DIR)")
    run_dir: Path = Field(REPO_ROOT / ".run", description="pid files, logs, runtime folders")
    artifact_dir: Path = Field(REPO_ROOT / ".run" / "artifacts", description="uploaded inputs and results")
    model_repository: Path = Field(REPO_ROOT / "model_repository")
    triton_env: Path = Field(REPO_ROOT / ".venv-triton", description="venv holding nvidia-pytriton, numpy<2")

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
    # segmentation models in order of preference; the first one served is the default
    segmentation_models: tuple[str, ...] = ("segmentation_pctnet", "reference_hutissue")

    @property
    def triton_grpc_url(self) -> str:
        return f"{self.triton_host}:{self.triton_grpc_port}"

    @property
    def triton_http_url(self) -> str:
        return f"{self.triton_host}:{self.triton_http_port}"

    @property
    def sqlalchemy_url(self) -> str:
        return self.database_url or f"sqlite:///{self.run_dir / 'medstack.db'}"


settings = Settings()
