"""The server's settings; each backend's are an object of its own next to the backend.

Values come from ``REELGATE_*`` environment variables, or from a settings file named by
``REELGATE_SETTINGS_FILE`` (a ``.env``-style file of the same variables), which the
backends' settings read too. Each adapter is picked by the form of its URL, so the embedded
default needs no configuration at all.
"""

from __future__ import annotations

import json
import os
import secrets
from functools import cached_property
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import (
    BaseSettings,
    DotEnvSettingsSource,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)


def split_list(v: object) -> object:
    """A list setting from the environment: a JSON list, or "a,b,c"."""
    if isinstance(v, str):
        v = v.strip()
        if v.startswith("["):
            return json.loads(v)
        return [item.strip() for item in v.split(",") if item.strip()]
    return v


def settings_file() -> str | None:
    return os.environ.get("REELGATE_SETTINGS_FILE") or None


class ReelgateSettings(BaseSettings):
    """Base of every settings class: its values come from the environment and from the file
    REELGATE_SETTINGS_FILE names, both read when an instance is made. (A file named in
    ``model_config`` would be the one named when the class was defined, at import: wrong
    for a process whose environment is set after its imports, as the tests' forked
    commands are.) ``_env_file=...`` passed to the constructor still wins."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        path = settings_file()
        if path and isinstance(dotenv_settings, DotEnvSettingsSource) \
                and dotenv_settings.env_file is None:
            # The rest (prefix, encoding, ...) from the class's model_config, as the
            # source it replaces had them.
            dotenv_settings = DotEnvSettingsSource(settings_cls, env_file=path)
        return init_settings, env_settings, dotenv_settings, file_secret_settings


class Settings(ReelgateSettings):
    model_config = SettingsConfigDict(
        env_prefix="REELGATE_",
        env_file_encoding="utf-8",
        extra="ignore",
    )

    # --- where things live -------------------------------------------------------------
    data_dir: Path = Path("./.reelgate")
    # Empty means a SQLite file inside data_dir.
    database_url: str = ""
    # Absolute URL clients reach us at (e.g. https://video.example.com). Empty means: build
    # URLs from the request's Host header, as the hosted services do.
    public_base_url: str = ""
    # Where generated videos are served from when they are not behind our signed URLs
    # (e.g. a CDN in front of data_dir/videos). Empty means signed URLs served by the API.
    public_media_base_url: str = ""
    # HMAC key for signed media URLs. Empty means: generated once and kept in data_dir.
    url_signing_key: str = ""
    # Where videos are stored: empty for data_dir/videos, a path, or s3://bucket/prefix.
    storage_url: str = ""
    s3_endpoint_url: str = ""
    # The address clients download from, when workers reach the S3 server at another one.
    s3_presign_endpoint_url: str = ""
    s3_region: str = ""
    s3_access_key_id: str = ""
    s3_secret_access_key: str = ""
    media_url_ttl_s: int = 24 * 3600

    # --- jobs ------------------------------------------------------------------------------
    # Empty: in-process workers. redis://host:port/db: a Redis stream per backend, consumed
    # by `reelgate worker` processes; sync-mode answers also travel through Redis.
    queue_url: str = ""
    # Names of this deployment's streams and channels in Redis, so several deployments
    # (or test runs) can share one Redis without taking each other's messages.
    queue_prefix: str = "reelgate"
    # Whether `reelgate serve` runs workers too; default: yes embedded, no with a queue.
    run_workers: bool | None = None
    # API processes of one `reelgate serve` (--workers). Embedded, the job workers run in
    # exactly one of them (a file lock in the data dir picks it) and the processes wake
    # each other through Unix sockets in <data dir>/notify (jobs/siblings.py).
    serve_workers: int = 1
    # The event loop `reelgate serve` runs on: "asyncio" (the standard library's), "uvloop",
    # or "auto" (uvloop when installed, uvicorn's default). asyncio by default, measured
    # (bench/bench_api.py, README): with 64 connections saturating one process, uvloop 0.23
    # left some connections waiting (p99 160-320 ms against 23-32 ms on asyncio, for the same
    # app and the same req/s within 5 %); uvicorn's own loop choice is otherwise the same.
    event_loop: Literal["asyncio", "uvloop", "auto"] = "asyncio"
    # Predictions run at once per process, by backend: each backend declares its number
    # (the sandbox: worker_concurrency; a local GPU: 1; Google and v3 relays mostly wait,
    # so their own settings allow a thousand); backend_concurrency overrides it by name.
    worker_concurrency: int = 2
    backend_concurrency: dict[str, int] = Field(default_factory=dict)
    # Run only these backends in this process (`reelgate worker --backends`); empty: all.
    only_backends: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # A worker renews its lease while it runs; a row whose lease expired (process killed)
    # is claimed again by any worker.
    lease_ttl_s: float = 30.0
    # How often idle workers look at the table for work nobody announced (restart recovery).
    reconcile_interval_s: float = 2.0
    # Scaled out, a row created this long ago and still unclaimed is run by the reconciler
    # (its queue message was lost, or dispatch failed while the broker was down).
    dispatch_grace_s: float = 10.0
    # Longest a sync-mode request is held before it is answered with the object as it is.
    sync_timeout_s: float = 300.0
    # enable_base64_output: the largest video (bytes, before encoding; base64 adds a third)
    # an answer carries inline. A larger one is answered with HTTP 413 and a message that
    # says how to fetch it, never silently as a URL.
    base64_output_max_bytes: int = 32 * 1024 * 1024
    # On SIGTERM an API process stops accepting connections and keeps answering the
    # sync-mode requests it holds for at most this long (each gets its prediction, ended or
    # as it stands), then exits: a rolling restart drops no client.
    shutdown_drain_s: float = 20.0
    # What a worker does when it finds a submission recorded as intended but no upstream
    # handle (its predecessor died between sending and recording the answer), per backend:
    # "resubmit" (at least once: the upstream may have started, and be billed for, two
    # operations) or "fail" (at most once: the prediction fails, uncharged, with a message
    # that says so). Backends not named: resubmit.
    unconfirmed_submissions: dict[str, str] = Field(default_factory=dict)

    # --- database connections ----------------------------------------------------------------
    # Per process, on PostgreSQL: at most pool_size + max_overflow connections (workers add
    # 3 reserved for checkpoints and leases). 2 API + 2 workers with the defaults: 46 at most,
    # under PostgreSQL's default max_connections of 100. A query that finds the pool busy
    # waits up to db_pool_timeout_s for a connection instead of failing.
    db_pool_size: int = 5
    db_max_overflow: int = 5
    db_pool_timeout_s: float = 30.0
    # Seconds an unfinished prediction's answer tells the client to wait before asking
    # again (its Retry-After header); ``?wait=N`` long-polls are capped at sync_timeout_s.
    poll_hint_s: int = 2

    # --- routing -----------------------------------------------------------------------
    # Backend for every model unless model_backends names another for it.
    default_backend: str = "sandbox"
    model_backends: dict[str, str] = Field(default_factory=dict)
    # Modules that register more backends when imported (backends/registry.py), e.g.
    # "mycompany.reelgate_backend"; packages may use the "reelgate.backends" entry points.
    backend_modules: Annotated[list[str], NoDecode] = Field(default_factory=list)

    # Each backend's own settings (REELGATE_SANDBOX_*, REELGATE_LOCAL_*, REELGATE_GOOGLE_*,
    # _V3_UPSTREAM_*, _MIX_*) are a settings object of its own in the backend's folder
    # (config.py) or module, reading the same settings file; none of them is held here.

    # --- observability -----------------------------------------------------------------
    # FastAPI's native OpenTelemetry spans and metrics per request, sent to the globally
    # configured OTel providers. Off by default: Prometheus metrics are at /metrics, and the
    # check costs every request, polls included.
    fastapi_telemetry: bool = False

    # --- input fetching --------------------------------------------------------------------
    fetch_max_bytes: int = 20 * 1024 * 1024
    # Largest JSON request body; 0: room for three data: URI images of fetch_max_bytes each
    # (base64 adds a third) plus 1 MiB for the rest.
    max_body_bytes: int = 0
    fetch_timeout_s: float = 15.0
    fetch_max_redirects: int = 5
    # Hosts or networks (CIDR) exempt from the private-address guard. Empty by default:
    # it exists so tests and lab setups can serve images from loopback, on purpose.
    fetch_allow_hosts: Annotated[list[str], NoDecode] = Field(default_factory=list)

    # --- money ---------------------------------------------------------------------------
    # Per-second prices in micro-units by model: {"veo3.1-fast": {"720p": 150000,
    # "720p/silent": 100000}}; anything not named costs Google's published price.
    prices: dict[str, dict[str, int]] = Field(default_factory=dict)
    price_markup_percent: float = 0.0
    # The currency balances and prices are kept in (named in balance answers).
    currency: str = "USD"
    # Backends whose predictions cost nothing (no hold, no ledger entries).
    free_backends: Annotated[list[str], NoDecode] = Field(default_factory=lambda: ["sandbox"])

    # --- limits ----------------------------------------------------------------------------
    # Defaults for accounts that set none: requests per minute per key (moving window),
    # and unfinished predictions per key.
    rate_per_minute: int = 600
    max_concurrent: int = 10
    # Where rate-limit counters live: memory:// in one process, redis://host:port/db when
    # several API processes share the limits.
    rate_limit_storage_url: str = "memory://"

    # --- uploads ----------------------------------------------------------------------------
    upload_max_bytes: int = 20 * 1024 * 1024
    upload_ttl_s: int = 7 * 24 * 3600
    # Bytes of not-yet-expired uploads an account may hold.
    upload_quota_bytes: int = 1024 * 1024 * 1024

    # --- webhooks --------------------------------------------------------------------------
    # Delivery attempts, and the first retry delay (doubling each time, capped at one hour).
    webhook_max_attempts: int = 8
    webhook_retry_base_s: float = 10.0
    webhook_timeout_s: float = 10.0

    # --- administration ----------------------------------------------------------------
    # Bearer token for /admin/v1; empty disables the admin API.
    admin_token: str = ""

    # --- content policy (see policy.py) ------------------------------------------------
    # Terms of the "blocklist" category; more categories and rules come from policy_file.
    policy_blocklist: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # A JSON file: {"categories": {"violence": ["term", ...]}, "patterns": {"minors":
    # ["regex", ...]}}.
    policy_file: Path | None = None
    # "module:callable" taking (field, text) and returning a category name or None.
    policy_classifier: str = ""
    # The hosted services answer a policy block with HTTP 400 and type "503".
    policy_block_status: int = 400

    @field_validator(
        "fetch_allow_hosts", "policy_blocklist", "free_backends", "only_backends",
        "backend_modules", mode="before"
    )
    @classmethod
    def _split_list(cls, v: object) -> object:
        return split_list(v)

    def on_unconfirmed_submission(self, backend: str) -> str:
        policy = self.unconfirmed_submissions.get(backend, "resubmit")
        return policy if policy in ("resubmit", "fail") else "resubmit"

    @field_validator("unconfirmed_submissions")
    @classmethod
    def _check_policies(cls, v: dict[str, str]) -> dict[str, str]:
        for backend, policy in v.items():
            if policy not in ("resubmit", "fail"):
                raise ValueError(f"unconfirmed_submissions[{backend!r}] must be 'resubmit' or "
                                 f"'fail', not {policy!r}")
        return v

    @cached_property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{(self.data_dir / 'reelgate.db').resolve()}"

    @property
    def videos_dir(self) -> Path:
        return self.data_dir / "videos"

    @property
    def inputs_dir(self) -> Path:
        return self.data_dir / "inputs"

    @property
    def uploads_dir(self) -> Path:
        return self.data_dir / "uploads"

    def ensure_dirs(self) -> None:
        for d in (self.data_dir, self.videos_dir, self.inputs_dir):
            d.mkdir(parents=True, exist_ok=True)

    @cached_property
    def signing_key(self) -> bytes:
        if self.url_signing_key:
            return self.url_signing_key.encode()
        # Keep a generated key on disk so URLs stay valid across restarts.
        self.data_dir.mkdir(parents=True, exist_ok=True)
        path = self.data_dir / "signing.key"
        if not path.exists():
            # link() fails if another process won the race, so every process reads one key.
            tmp = path.with_name(f"signing.key.{os.getpid()}.tmp")
            tmp.write_text(secrets.token_hex(32))
            tmp.chmod(0o600)
            try:
                os.link(tmp, path)
            except FileExistsError:
                pass
            finally:
                tmp.unlink(missing_ok=True)
        return path.read_text().strip().encode()

    @property
    def body_limit(self) -> int:
        """The JSON body limit in bytes (max_body_bytes, or the default it describes)."""
        if self.max_body_bytes > 0:
            return self.max_body_bytes
        return 3 * (4 * -(-self.fetch_max_bytes // 3)) + 1024 * 1024


def load_settings(**overrides: object) -> Settings:
    return Settings(**overrides)  # type: ignore[arg-type]
