"""One Settings object, read from the environment (prefix ``SLOTPOOL_``, plus ``DATABASE_URL``)."""

from __future__ import annotations

import base64
import os
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, BaseModel, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# Development-only secrets. They are public (they are in this file), so the
# service refuses to start with any of them when SLOTPOOL_ENV=production.
DEV_DATA_KEY = base64.b64encode(b"slotpool-dev-data-key-0123456789").decode()
DEV_INDEX_KEY = base64.b64encode(b"slotpool-dev-index-key-012345678").decode()
DEV_API_KEY_PEPPER = base64.b64encode(b"slotpool-dev-api-key-pepper-0123").decode()


def default_data_dir() -> Path:
    """Where the embedded PostgreSQL keeps its data when no DATABASE_URL is set.

    As root the embedded server runs as a separate system user and makes every
    parent of its data directory traversable, so root's data lives under
    /var/lib (already world-traversable) and never under /root.
    """
    if os.geteuid() == 0:
        return Path("/var/lib/slotpool")
    xdg = os.environ.get("XDG_DATA_HOME")
    base = Path(xdg) if xdg else Path.home() / ".local" / "share"
    return base / "slotpool"


class RateLimit(BaseModel):
    """A token bucket: ``burst`` requests at once, refilled at ``per_second``."""

    burst: int = Field(ge=1, le=1_000_000)
    per_second: float = Field(gt=0, le=100_000)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SLOTPOOL_", extra="ignore")

    env: Literal["development", "production"] = "development"
    database_url: str | None = Field(
        default=None, validation_alias=AliasChoices("DATABASE_URL", "SLOTPOOL_DATABASE_URL")
    )
    # The schema owner, used only by `slotpool migrate` (and `bootstrap`). The runtime role that
    # serves requests (the user in DATABASE_URL, or `runtime_role` on the embedded server) owns
    # nothing and may only insert into and read the audit trail.
    migration_database_url: str | None = Field(
        default=None, validation_alias=AliasChoices("SLOTPOOL_MIGRATION_DATABASE_URL")
    )
    runtime_role: str = "slotpool_app"
    data_dir: Path = Field(default_factory=default_data_dir)

    # base64 of 32 random bytes each: AES-256-GCM key for personal data, HMAC
    # key for the blind index, HMAC key for API-key digests.
    data_key: str = DEV_DATA_KEY
    index_key: str = DEV_INDEX_KEY
    api_key_pepper: str = DEV_API_KEY_PEPPER

    run_loops: bool = True
    release_interval_seconds: float = 5.0
    release_batch_size: int = 500
    signals_interval_seconds: float = 300.0
    lock_timeout_ms: int = 2000
    # Webhook delivery (service/loops/dispatcher.py): endpoints delivered to at once per
    # replica, the backstop poll when no NOTIFY arrives, the whole-request time limit, and how
    # long the old secret stays valid after a rotation.
    webhook_concurrency: int = Field(default=16, ge=1, le=256)
    webhook_poll_seconds: float = Field(default=5.0, gt=0)
    webhook_timeout_seconds: float = Field(default=15.0, gt=0, le=60)
    webhook_secret_overlap_hours: int = Field(default=24, ge=0, le=24 * 7)
    db_pool_size: int = 10
    # Prometheus metrics are served on their own port, never on the API port; unset: not served.
    metrics_port: int | None = Field(default=None, ge=1, le=65535)
    # Abuse limits (docs/abuse-limits.md): a token bucket per API client (per role if listed,
    # e.g. SLOTPOOL_RATE_LIMIT_BY_ROLE='{"platform": {"burst": 2000, "per_second": 50}}'),
    # the largest request body, and failed hotline verifications per reference and per client.
    rate_limit_burst: int = Field(default=600, ge=1, le=1_000_000)
    rate_limit_per_second: float = Field(default=20.0, gt=0, le=100_000)
    rate_limit_by_role: dict[str, RateLimit] = Field(default_factory=dict)
    max_body_bytes: int = Field(default=4 * 1024 * 1024, ge=1024, le=1024 * 1024 * 1024)
    hotline_reference_max_failures: int = Field(default=5, ge=1, le=1000)
    hotline_reference_lock_minutes: int = Field(default=15, ge=1, le=7 * 24 * 60)
    hotline_client_max_failures: int = Field(default=50, ge=1, le=100_000)
    hotline_client_window_minutes: int = Field(default=60, ge=1, le=7 * 24 * 60)
    log_level: str = "INFO"
    log_json: bool = True

    @model_validator(mode="after")
    def _refuse_dev_secrets_in_production(self) -> Settings:
        for name in ("data_key", "index_key", "api_key_pepper"):
            raw = base64.b64decode(getattr(self, name), validate=True)
            if len(raw) != 32:
                raise ValueError(f"SLOTPOOL_{name.upper()} must be base64 of 32 bytes")
        if self.env == "production":
            dev = {DEV_DATA_KEY, DEV_INDEX_KEY, DEV_API_KEY_PEPPER}
            used = [n for n in ("data_key", "index_key", "api_key_pepper") if getattr(self, n) in dev]
            if used:
                raise ValueError(
                    "production refuses the development secrets: set "
                    + ", ".join(f"SLOTPOOL_{n.upper()}" for n in used)
                )
            if not self.database_url:
                raise ValueError("production needs DATABASE_URL (the embedded server is for development)")
        return self

    def key_bytes(self, name: Literal["data_key", "index_key", "api_key_pepper"]) -> bytes:
        return base64.b64decode(getattr(self, name))


@lru_cache
def get_settings() -> Settings:
    return Settings()
