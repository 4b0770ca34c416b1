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
    # "smart": SMART on FHIR / OAuth 2 tokens required (the default); "off": an open API, for experiments.
    auth: Literal["smart", "off"] = "smart"
    workers: int = 1
    base_url: str | None = None  # public base used in links; default http://{host}:{port}/fhir
    max_body_bytes: int = 10 * 1024 * 1024
    default_count: int = 20
    max_count: int = 1000
    history_max_count: int = 1000
    max_include: int = 1000  # resources one search may add through _include/_revinclude
    xml_max_depth: int = 100
    bundle_max_entries: int = 10_000  # entries one batch or transaction Bundle may hold
    # Conditional delete of several matches: "single" refuses it with 412; "multiple" deletes them all
    # (up to conditional_delete_max; more than that is refused too).
    conditional_delete: Literal["single", "multiple"] = "single"
    conditional_delete_max: int = 1000
    access_token_lifetime: int = 3600  # seconds
    refresh_token_lifetime: int = 30 * 24 * 3600
    authorization_code_lifetime: int = 60
    token_revocation_poll_seconds: float = 1.0  # how stale a worker's copy of the revocation list may be
    # Token endpoint rate limit, per client and per IP address: requests per minute (0: no limit).
    token_rate_limit_per_minute: int = 60
    # Profiles: what to do with a meta.profile the server does not know ("ignore": log a warning);
    # "us-core-6.1.0" / "us-core-3.1.1" makes that US Core version mandatory for its types.
    unknown_profiles: Literal["ignore", "refuse"] = "ignore"
    require_profiles: str = ""
    # Bulk $export: jobs running at once (all workers together), NDJSON file size, retention.
    export_max_concurrent: int = 2
    export_file_max_resources: int = 50_000
    export_retention_seconds: int = 24 * 3600
    export_lease_seconds: float = 30.0  # a job whose worker stops renewing this long is taken over
    export_poll_seconds: float = 1.0
    db_pool_size: int = 8
    db_timeout_seconds: float = 30.0
    log_level: str = "info"

    @cached_property
    def fhir_base(self) -> str:
        if self.base_url:
            return self.base_url.rstrip("/")
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::") else self.host
        return f"http://{host}:{self.port}/fhir"
