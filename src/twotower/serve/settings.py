"""Service settings: pydantic-settings read from ``TWOTOWER_*`` environment variables (or keyword arguments).

The admin token guards ``/admin/*``. Outside dev mode the service refuses to start with an empty, short or
well-known token, so a forgotten variable cannot leave hot swaps open to anyone who can reach the port.
"""

from __future__ import annotations

import logging
import os
import secrets
from pathlib import Path

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from ..errors import UnsafeSettings

log = logging.getLogger(__name__)

# Tokens that appear in examples and tutorials; anyone could guess them.
WEAK_TOKENS = frozenset({"", "changeme", "change-me", "admin", "secret", "token", "password", "default", "dev", "test"})
MIN_TOKEN_CHARS = 16
TOKEN_HINT = "python -c 'import secrets; print(secrets.token_urlsafe(32))'"


class ServeSettings(BaseSettings):
    """Everything the online service reads at start-up. Environment: ``TWOTOWER_<FIELD>`` (upper case)."""

    # hide_input_in_errors: a refused setting must not print the inputs (the admin token, a store URL with a
    # password) into logs and terminals; the messages name the variable and the fix instead.
    model_config = SettingsConfigDict(env_prefix="TWOTOWER_", extra="ignore", hide_input_in_errors=True)

    artifacts: Path = Field(Path("artifacts"), description="artifact root (see twotower.serve.bundle)")
    store_url: str | None = Field(None, description="feature store URL; default sqlite:///ARTIFACTS/states.db")
    admin_token: SecretStr = Field(SecretStr(""), description="bearer token for /admin/*")
    dev_mode: bool = Field(False, description="allow a weak admin token (development machines only)")
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    workers: int = Field(0, ge=0, le=64, description="worker processes, each with its own copy; 0 = one per core")
    max_body_bytes: int = Field(1 << 20, ge=1024, description="requests with a larger body get 413")
    max_batch_requests: int = Field(256, ge=1, description="users in one /v1/retrieve/batch call")
    micro_batch: int = Field(32, ge=1, le=1024, description="concurrent requests run as one batch (1 = off)")
    micro_batch_wait_ms: float = Field(0.0, ge=0.0, le=50.0, description="extra wait to fill a micro-batch")
    torch_threads: int = Field(1, ge=1, description="intra-op threads for the online head")
    faiss_threads: int = Field(1, ge=1, description="OpenMP threads for the ANN search")
    hnsw_ef_search: int | None = Field(None, ge=1, description="override the index's efSearch")
    fast_path: bool = Field(True, description="serve valid POST /v1/retrieve as pure ASGI (same answers)")
    trace_head: bool = Field(True, description="run the online head as a traced graph checked against eager")
    store_retry_s: float = Field(1.0, ge=0.0, description="after a store failure, skip it this long")
    demo: bool | None = Field(
        None, description="serve GET /demo, a page showing users' histories and answers (default: on in dev mode only)"
    )
    reload_poll_s: float = Field(
        1.0, ge=0.0, description="check ROOT/.reload-generation this often, so a reload reaches every worker (0 = off)"
    )

    @model_validator(mode="after")
    def _check_token(self) -> ServeSettings:
        token = self.admin_token.get_secret_value()
        weak = token.strip().lower() in WEAK_TOKENS or len(token) < MIN_TOKEN_CHARS
        if weak and not self.dev_mode:
            raise UnsafeSettings(
                f"TWOTOWER_ADMIN_TOKEN is empty, a well-known value or shorter than {MIN_TOKEN_CHARS} characters; "
                f"set it to a random string (e.g. `{TOKEN_HINT}`), or set TWOTOWER_DEV_MODE=1 on a development "
                "machine"
            )
        if not token:
            # An empty token must never match an empty Authorization header: lock admin with a random one.
            self.admin_token = SecretStr(secrets.token_urlsafe(24))
            log.warning("dev mode without TWOTOWER_ADMIN_TOKEN: /admin/* is locked; set the token to use it")
        elif weak:
            log.warning("dev mode: the admin token is weak; never run like this on a reachable address")
        return self

    def demo_enabled(self) -> bool:
        """Whether ``GET /demo`` is served: the setting, else only in dev mode (it shows users' histories)."""
        return self.dev_mode if self.demo is None else self.demo

    def resolved_workers(self) -> int:
        """Worker processes to run: the setting, else one per core (each has its own GIL; one process tops out
        at about one core, ~450 req/s in ``benchmarks/serve_load.py``)."""
        return self.workers or max(1, min(os.cpu_count() or 1, 64))

    def resolved_store_url(self) -> str:
        """The feature store URL: the setting, else SQLite inside the artifact root."""
        return self.store_url or f"sqlite:///{(self.artifacts / 'states.db').resolve()}"
