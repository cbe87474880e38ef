"""Configuration: ``dspex.toml`` (or the file named by ``DSPEX_CONFIG``), overridden by ``DSPEX_*``.

Defaults make everything work with no file at all: the embedded SQLite database at
``./.dspex/dspex.db`` and the ``mock`` backend.

Example ``dspex.toml``::

    database_url = "postgresql://app@db/dspex"
    allowed_imports = ["myproject.modules"]
    corpus_dirs = ["data/corpora"]    # where retrieve corpora may live (relative: to this file)
    allow_pickle = false              # true lets a dspy module's state be a pickled program
                                      # (save_program=True): loading it RUNS the code inside

    [backends.default]
    kind = "dspy"
    model = "openai/gpt-4o-mini"
    api_key_env = "OPENAI_API_KEY"

    rpm = 500                         # requests and tokens per minute, shared by every
    tpm = 200000                      # execution and split among a batch's worker processes

    [backends.local]
    kind = "mock"
    latency_ms = 20

    [prices."openai/gpt-4o-mini"]     # US dollars per token (default: LiteLLM's cost map)
    input_cost_per_token = 0.00000015
    output_cost_per_token = 0.0000006

    [backends.vllm]                   # any OpenAI-compatible endpoint, on the fast HTTP path
    kind = "openai"
    base_url = "http://localhost:8000/v1"
    model = "Qwen/Qwen2.5-7B-Instruct"
    temperature = 0.0

    # A coordinator group answers as one backend: modules name it like one (``backend: main``)
    # and ``default_backend = "main"`` makes it the program default.
    [coordinators.main]
    backends = ["default", "local"]   # [backends.*] names, in priority order
    strategy = "failover"             # or "round_robin", "least_latency"

    [coordinators.main.retry]         # across the whole group; every key is optional
    max_attempts = 4
    initial_interval = 0.5
    backoff_factor = 2.0
    max_interval = 30
    jitter = 0.2
    deadline = 60                     # seconds for all attempts and waits together
    max_retry_after = 60              # the longest provider Retry-After honoured

    [breaker]                         # every backend's circuit breaker (state in the database)
    failure_rate_threshold = 0.5
    minimum_calls = 10
    window_size = 20
    open_seconds = 30

    [server]                          # `dspex serve`
    host = "127.0.0.1"
    port = 8000
    max_body_bytes = 16777216         # larger request bodies are refused (413)
    max_batch_items = 100000          # larger batches are refused (413)
    metrics = "public"                # /metrics: "public" (no key) or "read" (any API key)
    api_keys = [                      # sha256 of each key (`dspex serve --hash-key`), never the key
        {hash = "sha256:<64 hex>", scope = "admin", name = "ops"},
        {hash = "sha256:<64 hex>", scope = "read", name = "dashboard"},
    ]

Environment overrides: ``DSPEX_DATABASE_URL``, ``DSPEX_DEFAULT_BACKEND``,
``DSPEX_ALLOWED_IMPORTS`` (comma-separated), ``DSPEX_CORPUS_DIRS`` (comma-separated; relative
entries resolve against the working directory), ``DSPEX_WORKER_ID``, ``DSPEX_API_KEYS``
(``scope:sha256hex,…``; replaces ``[server] api_keys``).
API keys are never read from the file: a backend names the environment variable that holds its key.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic import ValidationError as PydanticValidationError

from dspex._strategies import CoordinatorStrategy
from dspex.errors import ConfigError, ErrorDetail
from dspex.resilience.policy import RetryPolicy

__all__ = [
    "DEFAULT_DATABASE_PATH",
    "ApiKeyConfig",
    "BackendConfig",
    "BreakerSettings",
    "CoordinatorSettings",
    "PriceConfig",
    "RetrySettings",
    "ServerSettings",
    "Settings",
    "load_settings",
    "parse_api_keys",
]

DEFAULT_DATABASE_PATH = Path(".dspex") / "dspex.db"


class BackendConfig(BaseModel):
    """One named backend: ``mock`` (no LM), ``dspy`` (any ``dspy.LM`` provider) or ``openai``
    (an OpenAI-compatible endpoint; see :class:`dspex.backends.openai_backend.OpenAIOptions`)."""

    model_config = ConfigDict(extra="allow", frozen=True)

    kind: Literal["mock", "dspy", "openai"] = "mock"
    model: str | None = None
    api_base: str | None = None
    api_key_env: str | None = None
    rpm: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    tpm: float | None = Field(default=None, gt=0, allow_inf_nan=False)


class PriceConfig(BaseModel):
    """``[prices."MODEL"]``: US dollars per token of one model, under LiteLLM's names; it wins
    over LiteLLM's cost map (see :mod:`dspex.backends.pricing`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    input_cost_per_token: float = Field(default=0.0, ge=0, allow_inf_nan=False)
    output_cost_per_token: float = Field(default=0.0, ge=0, allow_inf_nan=False)


RetrySettings = RetryPolicy
"""``[coordinators.NAME.retry]``: the group's retry policy, the one retry model
(:class:`dspex.resilience.RetryPolicy`; unset keys keep its defaults)."""


class CoordinatorSettings(BaseModel):
    """``[coordinators.NAME]``: a group of backends that answers as one backend."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    backends: tuple[str, ...] = Field(min_length=1)
    strategy: CoordinatorStrategy = "failover"
    retry: RetrySettings = Field(default_factory=RetrySettings)


class BreakerSettings(BaseModel):
    """``[breaker]``: when each backend's circuit breaker opens and for how long."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    failure_rate_threshold: float = Field(default=0.5, gt=0, le=1)
    minimum_calls: int = Field(default=10, ge=1, strict=True)
    window_size: int = Field(default=20, ge=1, strict=True)
    open_seconds: float = Field(default=30.0, ge=0, allow_inf_nan=False)

    @model_validator(mode="after")
    def _window_holds_minimum(self) -> BreakerSettings:
        if self.window_size < self.minimum_calls:
            raise ValueError("window_size must be >= minimum_calls (else it can never open)")
        return self


class ApiKeyConfig(BaseModel):
    """One API key of the HTTP service, stored as the sha256 of the key (never the key)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    hash: str = Field(pattern=r"^sha256:[0-9a-f]{64}$")
    scope: Literal["read", "admin"] = "read"
    name: str = ""


class ServerSettings(BaseModel):
    """``[server]``: where ``dspex serve`` listens, its limits and its API keys.

    Attributes:
        metrics: who may read ``/metrics``: ``"public"`` (anyone who reaches the service, the
            usual for a Prometheus scrape inside a private network) or ``"read"`` (any API key,
            sent by the scraper as a bearer token).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    max_body_bytes: int = Field(default=16 * 1024 * 1024, ge=1)
    max_batch_items: int = Field(default=100_000, ge=1)
    metrics: Literal["public", "read"] = "public"
    api_keys: tuple[ApiKeyConfig, ...] = ()


def parse_api_keys(value: str) -> list[dict[str, str]]:
    """``DSPEX_API_KEYS`` (``scope:sha256hex,…``; ``sha256:`` before the hex is optional).

    Raises:
        ConfigError: an entry is not ``scope:hash``.
    """
    keys: list[dict[str, str]] = []
    for number, raw in enumerate(p.strip() for p in value.split(",")):
        if not raw:
            continue
        scope, sep, digest = raw.partition(":")
        if not sep or not digest:
            raise ConfigError(f"DSPEX_API_KEYS entry {number + 1} is not 'scope:sha256hex'")
        digest = digest.removeprefix("sha256:").lower()
        keys.append({"hash": f"sha256:{digest}", "scope": scope, "name": f"env-{number + 1}"})
    return keys


class Settings(BaseModel):
    """Resolved configuration.

    Attributes:
        corpus_dirs: directories ``retrieve`` corpora may be read from (symlinks resolved). A
            program registered from a file may also read corpora in that file's directory; a
            spec submitted over HTTP gets only these. :func:`load_settings` makes relative
            entries absolute (against the configuration file's directory, or the working
            directory for ``DSPEX_CORPUS_DIRS`` and when there is no file).
        allow_pickle: whether a ``dspy`` module's ``state`` may be a pickled program (a
            directory saved with ``save_program=True``, loaded with ``dspy.load``) or a ``.pkl``
            state. Unpickling runs whatever code the file holds, so this is for files you made
            yourself; off by default, when only ``.json`` states (DSPy's ``.save("x.json")``)
            load. The import allow-list applies either way.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    database_url: str | None = None
    default_backend: str = "default"
    backends: dict[str, BackendConfig] = Field(
        default_factory=lambda: {"default": BackendConfig(kind="mock")}
    )
    allowed_imports: tuple[str, ...] = ()
    corpus_dirs: tuple[str, ...] = ()
    allow_pickle: bool = Field(default=False, strict=True)
    resources: dict[str, float] = Field(default_factory=dict)
    worker_id: str | None = None
    lease_seconds: float = Field(default=30.0, gt=0)
    coordinators: dict[str, CoordinatorSettings] = Field(default_factory=dict)
    breaker: BreakerSettings = Field(default_factory=BreakerSettings)
    server: ServerSettings = Field(default_factory=ServerSettings)
    prices: dict[str, PriceConfig] = Field(default_factory=dict)
    source: str | None = None

    def backend_names(self) -> list[str]:
        """Every name a module may use as its backend: backends and coordinator groups."""
        return sorted({*self.backends, *self.coordinators})

    def check_coordinators(self) -> None:
        """Check that each group names known backends and takes no backend's name.

        Raises:
            ConfigError: a group names an unknown backend, or clashes with a backend's name.
        """
        for name, group in self.coordinators.items():
            if name in self.backends:
                raise ConfigError(f"[coordinators.{name}]: a backend is already named {name!r}")
            missing = [b for b in group.backends if b not in self.backends]
            if missing:
                known = ", ".join(sorted(self.backends)) or "none"
                raise ConfigError(
                    f"[coordinators.{name}]: unknown backend(s) {', '.join(missing)} "
                    f"(known: {known})"
                )

    def resolved_database_url(self, cwd: Path | None = None) -> str:
        """The database URL, or the embedded SQLite file under ``cwd`` (default: working dir)."""
        if self.database_url:
            return self.database_url
        base = cwd or Path.cwd()
        return f"sqlite:///{base / DEFAULT_DATABASE_PATH}"


def _env_overrides(env: Mapping[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if env.get("DSPEX_DATABASE_URL"):
        out["database_url"] = env["DSPEX_DATABASE_URL"]
    if env.get("DSPEX_DEFAULT_BACKEND"):
        out["default_backend"] = env["DSPEX_DEFAULT_BACKEND"]
    if env.get("DSPEX_ALLOWED_IMPORTS"):
        out["allowed_imports"] = tuple(
            p.strip() for p in env["DSPEX_ALLOWED_IMPORTS"].split(",") if p.strip()
        )
    if env.get("DSPEX_CORPUS_DIRS"):
        out["corpus_dirs"] = tuple(
            p.strip() for p in env["DSPEX_CORPUS_DIRS"].split(",") if p.strip()
        )
    if env.get("DSPEX_WORKER_ID"):
        out["worker_id"] = env["DSPEX_WORKER_ID"]
    return out


def _absolute_dirs(dirs: Sequence[str], base: Path) -> tuple[str, ...]:
    return tuple(str(base / d) if not Path(d).is_absolute() else d for d in dirs)


def load_settings(
    path: str | Path | None = None,
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> Settings:
    """Read ``dspex.toml`` (if any) and apply ``DSPEX_*`` overrides.

    Args:
        path: an explicit file; otherwise ``DSPEX_CONFIG``, otherwise ``./dspex.toml`` if it exists.
        env: the environment to read (default ``os.environ``).
        cwd: the directory to look in (default: the working directory).

    Raises:
        ConfigError: the file is missing (when named explicitly), not TOML, has unknown keys,
            or a coordinator group names an unknown backend.
    """
    environ = os.environ if env is None else env
    base = cwd or Path.cwd()
    named = path or environ.get("DSPEX_CONFIG")
    file = Path(named) if named else base / "dspex.toml"
    data: dict[str, Any] = {}
    if file.is_file():
        try:
            data = tomllib.loads(file.read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read {file}: {exc}") from exc
        data["source"] = str(file)
    elif named:
        raise ConfigError(f"configuration file not found: {file}")
    file_dirs = data.get("corpus_dirs")
    if isinstance(file_dirs, list) and all(isinstance(d, str) for d in file_dirs):
        # the file's own entries mean "next to this file", wherever dspex is started from
        data["corpus_dirs"] = _absolute_dirs(file_dirs, file.resolve().parent)
    overrides = _env_overrides(environ)
    if "corpus_dirs" in overrides:
        overrides["corpus_dirs"] = _absolute_dirs(overrides["corpus_dirs"], base)
    data.update(overrides)
    if environ.get("DSPEX_API_KEYS"):
        server = dict(data.get("server") or {})
        server["api_keys"] = parse_api_keys(environ["DSPEX_API_KEYS"])
        data["server"] = server
    try:
        settings = Settings.model_validate(data)
    except PydanticValidationError as exc:
        details = ErrorDetail.from_pydantic(exc, root="<root>")
        where = data.get("source", "configuration")
        msg = f"invalid {where}: " + "; ".join(f"{d.field}: {d.message}" for d in details)
        raise ConfigError(msg) from None
    settings.check_coordinators()
    if settings.default_backend not in settings.backends and (
        settings.default_backend not in settings.coordinators
    ):
        known = ", ".join(settings.backend_names()) or "none"
        raise ConfigError(
            f"default backend {settings.default_backend!r} is not configured (known: {known})"
        )
    return settings
