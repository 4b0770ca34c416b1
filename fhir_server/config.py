"""One Settings object, read from FHIR_* environment variables."""

from __future__ import annotations

from functools import cached_property
from typing import Literal

from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FHIR_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = 8080
    database_url: str = "sqlite:///data/fhir.db"
    auth: Literal["off"] = "off"
    workers: int = 1
    base_url: str | None = None  # public base used in links; default http://{host}:{port}/fhir
    max_body_bytes: int = 10 * 1024 * 1024
    default_count: int = 20
    max_count: int = 1000
    history_max_count: int = 1000
    max_include: int = 1000  # resources one search may add through _include/_revinclude
    xml_max_depth: int = 100
    db_pool_size: int = 8
    db_timeout_seconds: float = 30.0
    log_level: str = "info"

    @cached_property
    def fhir_base(self) -> str:
        if self.base_url:
            return self.base_url.rstrip("/")
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::") else self.host
        return f"http://{host}:{self.port}/fhir"
