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
    cache = "read_write"              # this backend's cache mode (a module's `cache:` wins)

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

    context_window_fallback = ["big"] # where a call too long for a member goes (optional)

    [coordinators.main.retry]         # across the whole group; every key is optional
    max_attempts = 4
    initial_interval = 0.5
    backoff_factor = 2.0
    max_interval = 30
    jitter = 0.2
    deadline = 60                     # seconds for all attempts and waits together
    max_retry_after = 60              # the longest provider Retry-After honoured

    [defaults]                        # a module calling a backend, when its spec says nothing
    timeout = 30                      # seconds per attempt (0: no limit)
    breakers = true                   # a circuit breaker on every backend, not only in groups

    [defaults.retry]                  # the module's RetryPolicy (every key optional)
    max_attempts = 3                  # retryable failures only, exponential backoff
    initial_interval = 0.5

    [capture]                         # what executions record beyond status and timing
    inputs_outputs = true             # each step's inputs and outputs
    messages = false                  # each LM attempt's messages and raw response (opt-in)
    redact = ["api_token"]            # fields stored as "[redacted]", as `sensitive: true`
    max_chars = 8192                  # longer strings are cut, marked "…[truncated N chars]"

    [breaker]                         # every backend's circuit breaker (state in the database)
    failure_rate_threshold = 0.5
    minimum_calls = 10
    window_size = 20
    open_seconds = 30

    [cache]                           # the response cache, in the database
    mode = "off"                      # run/batch/service default: "off", "read_only", "read_write"
    ttl = "7d"                        # how long a stored response answers (0d: forever)

    [optimize]                        # `dspex optimize`: what optimizers need beyond the program
    prompt_backend = "default"        # MIPROv2's prompt model (proposes instructions)
    reflection_backend = "default"    # GEPA's reflection LM (required by gepa)
    num_threads = 4                   # programs run side by side while candidates are scored
    num_candidates = 8                # bootstrap_random_search / mipro_v2 candidate programs
    auto = "light"                    # mipro_v2 / gepa budget: "light", "medium", "heavy"

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
(``scope:sha256hex,…``; replaces ``[server] api_keys``), ``DSPEX_TIMEOUT`` (``[defaults] timeout``),
``DSPEX_MAX_ATTEMPTS`` (``[defaults.retry] max_attempts``), ``DSPEX_BREAKERS`` (``true``/``false``),
``DSPEX_CACHE`` (``[cache] mode``), ``DSPEX_CACHE_TTL`` (``[cache] ttl``),
``DSPEX_CAPTURE_INPUTS_OUTPUTS`` and ``DSPEX_CAPTURE_MESSAGES`` (``true``/``false``),
``DSPEX_CAPTURE_REDACT`` (comma-separated field names; replaces ``[capture] redact``).
The command line's flags (``--attempt-timeout``, ``--max-attempts``, ``--capture-messages``)
override both; a module's own
``timeout``/``retry`` in its program spec overrides them all. :func:`load_settings_sources` says
where each value came from (what ``dspex config show`` prints).
API keys are never read from the file: a backend names the environment variable that holds its key.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic import ValidationError as PydanticValidationError

from dspex._strategies import CacheMode, CoordinatorStrategy
from dspex.errors import ConfigError, ErrorDetail, ValidationError
from dspex.resilience.policy import RetryPolicy

__all__ = [
    "DEFAULT_DATABASE_PATH",
    "ApiKeyConfig",
    "BackendConfig",
    "BreakerSettings",
    "CacheSettings",
    "CaptureSettings",
    "ClusterSettings",
    "CoordinatorSettings",
    "DefaultsSettings",
    "OptimizeSettings",
    "PriceConfig",
    "RetrySettings",
    "ServerSettings",
    "SettingValue",
    "Settings",
    "effective_settings",
    "load_settings",
    "load_settings_sources",
    "parse_age",
    "parse_api_keys",
]

DEFAULT_DATABASE_PATH = Path(".dspex") / "dspex.db"

_AGE_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}


def parse_age(text: str, *, field: str = "older_than") -> timedelta:
    """An age or duration like ``30d``, ``12h``, ``90m``, ``2w`` or ``45s`` (``0d``: none).

    Raises:
        ValidationError: not a number of at least zero followed by one of s, m, h, d, w
            (its detail names ``field``).
    """
    raw = text.strip().lower()
    unit = _AGE_UNITS.get(raw[-1:]) if raw else None
    try:
        amount = float(raw[:-1]) if unit is not None else float("nan")
    except ValueError:
        amount = float("nan")
    if unit is None or not amount >= 0 or amount == float("inf"):
        raise ValidationError(
            f"not an age: {text!r} (use a number and a unit, like 30d, 12h or 90m)",
            [ErrorDetail(field, "invalid", "expected e.g. 30d, 12h, 90m")],
        )
    return timedelta(seconds=amount * unit)


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
    cache: CacheMode | None = None


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
    """``[coordinators.NAME]``: a group of backends that answers as one backend.

    Attributes:
        context_window_fallback: backends (``[backends.*]`` names, in the group or not) that a
            call goes to when a member failed with ``context_window_exceeded`` (the input is
            too long for it), instead of failing: a larger-context model.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    backends: tuple[str, ...] = Field(min_length=1)
    strategy: CoordinatorStrategy = "failover"
    retry: RetrySettings = Field(default_factory=RetrySettings)
    context_window_fallback: tuple[str, ...] = ()


class DefaultsSettings(BaseModel):
    """``[defaults]``: how a module that calls a backend is protected when its spec says nothing.

    Attributes:
        timeout: seconds one attempt may take (``0``: no limit). A module's ``timeout`` wins.
        retry: the module's retry policy (retryable failures only, exponential backoff with
            jitter; 3 attempts). A module's ``retry`` wins; on a coordinator group the group's
            own ``retry`` makes the attempts instead.
        breakers: whether every plain backend gets a circuit breaker (``[breaker]``), as the
            members of coordinator groups always do.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    timeout: float = Field(default=30.0, ge=0, allow_inf_nan=False)
    retry: RetryPolicy = Field(default_factory=RetryPolicy)
    breakers: bool = Field(default=True, strict=True)

    @property
    def attempt_timeout(self) -> float | None:
        """The per-attempt timeout in seconds, ``None`` for none."""
        return self.timeout or None


class CaptureSettings(BaseModel):
    """``[capture]``: what an execution records beyond status, timing, tokens and cost.

    Attributes:
        inputs_outputs: record each step's inputs and outputs (a ``dspy`` module's predictor
            calls too).
        messages: record each LM attempt's messages and raw response (opt-in: prompts are
            large and may hold what the inputs held).
        redact: field names recorded as ``"[redacted]"`` wherever they appear (at any depth),
            in addition to the fields a signature marks ``sensitive: true``; their values are
            also cut out of recorded messages and responses. Spans get the same treatment.
        max_chars: a recorded string longer than this is cut to it and marked
            ``…[truncated N chars]`` (N: the characters cut); lists and mappings keep at most
            ``max_items`` entries (marked the same way).
        max_items: entries kept of a recorded list or mapping.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    inputs_outputs: bool = Field(default=True, strict=True)
    messages: bool = Field(default=False, strict=True)
    redact: tuple[str, ...] = ()
    max_chars: int = Field(default=8192, ge=16, strict=True)
    max_items: int = Field(default=256, ge=1, strict=True)


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


class CacheSettings(BaseModel):
    """``[cache]``: the response cache (validated LM responses by exact request, in the database).

    Attributes:
        mode: the mode of ``run``, ``batch`` and the service when neither the run, the module nor
            its backend says (``evaluate`` and ``optimize`` use ``read_write`` then).
        ttl: how long a stored response answers (``30d``, ``12h``…; ``0d``: forever).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    mode: CacheMode = "off"
    ttl: str = "7d"

    @field_validator("ttl")
    @classmethod
    def _is_an_age(cls, value: str) -> str:
        try:
            parse_age(value, field="ttl")
        except ValidationError as exc:
            raise ValueError(exc.message) from None
        return value

    @property
    def ttl_seconds(self) -> float | None:
        """The TTL in seconds, ``None`` for none."""
        return parse_age(self.ttl).total_seconds() or None


class ApiKeyConfig(BaseModel):
    """One API key of the HTTP service, stored as the sha256 of the key (never the key)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    hash: str = Field(pattern=r"^sha256:[0-9a-f]{64}$")
    scope: Literal["read", "admin"] = "read"
    name: str = ""


class OptimizeSettings(BaseModel):
    """``[optimize]``: what ``dspex optimize`` gives DSPy's optimizers beyond the program.

    Attributes:
        prompt_backend: the backend (or coordinator group) whose LM proposes instructions for
            ``mipro_v2`` (its prompt model); default: the default backend.
        reflection_backend: the backend whose LM reflects for ``gepa`` (its reflection LM);
            default: the default backend.
        num_threads: program runs scored side by side (``dspy.Evaluate``'s threads).
        num_candidates: candidate programs of ``bootstrap_random_search`` and ``mipro_v2``.
        num_trials: ``mipro_v2`` search trials (with ``auto`` unset).
        max_metric_calls: ``gepa``'s budget (with ``auto`` unset).
        auto: the ``mipro_v2``/``gepa`` budget preset; unset to use ``num_trials`` /
            ``max_metric_calls``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    prompt_backend: str | None = None
    reflection_backend: str | None = None
    num_threads: int = Field(default=1, ge=1, le=256, strict=True)
    num_candidates: int = Field(default=8, ge=1, le=1000, strict=True)
    num_trials: int | None = Field(default=None, ge=1, strict=True)
    max_metric_calls: int | None = Field(default=None, ge=1, strict=True)
    auto: Literal["light", "medium", "heavy"] | None = "light"


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


class ClusterSettings(BaseModel):
    """``[cluster]``: where batches run unless a batch says otherwise.

    Attributes:
        kind: ``"local"`` (this machine: in process, or ``--workers`` processes) or ``"ray"``
            (Ray actors, as ``--cluster ray``; needs the ``ray`` extra).
        address: the Ray cluster ``--cluster ray`` uses: ``"local"`` (a Ray started for the
            run on this machine), ``"auto"`` (the cluster this machine joined with ``ray
            start``), ``"ray://HOST:10001"`` (Ray Client) or ``"HOST:PORT"`` (the head node).
        actors: Ray actors per batch (default: the cluster's CPUs divided by ``actor_cpus``,
            at most the batch's concurrency).
        actor_cpus: CPUs Ray reserves for each actor.
        actor_resources: custom Ray resources each actor needs.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["local", "ray"] = "local"
    address: str = Field(default="local", min_length=1)
    actors: int | None = Field(default=None, ge=1, le=10_000, strict=True)
    actor_cpus: float = Field(default=1.0, gt=0, le=1024, allow_inf_nan=False)
    actor_resources: dict[str, float] = Field(default_factory=dict)


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
        live_steps_seconds: an execution of several modules that runs longer than this records
            the steps it finished while it runs, at most once per this many seconds, so any
            process sharing the database can follow it (``GET /executions/{id}/events``);
            shorter ones record their steps when they finish, as always. 0: after every step.
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
    live_steps_seconds: float = Field(default=0.5, ge=0)
    coordinators: dict[str, CoordinatorSettings] = Field(default_factory=dict)
    breaker: BreakerSettings = Field(default_factory=BreakerSettings)
    optimize: OptimizeSettings = Field(default_factory=OptimizeSettings)
    defaults: DefaultsSettings = Field(default_factory=DefaultsSettings)
    capture: CaptureSettings = Field(default_factory=CaptureSettings)
    server: ServerSettings = Field(default_factory=ServerSettings)
    cluster: ClusterSettings = Field(default_factory=ClusterSettings)
    prices: dict[str, PriceConfig] = Field(default_factory=dict)
    cache: CacheSettings = Field(default_factory=CacheSettings)
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
            named = dict.fromkeys((*group.backends, *group.context_window_fallback))
            missing = [b for b in named if b not in self.backends]
            if missing:
                known = ", ".join(sorted(self.backends)) or "none"
                raise ConfigError(
                    f"[coordinators.{name}]: unknown backend(s) {', '.join(missing)} "
                    f"(known: {known})"
                )

    def resolved_database_url(self, cwd: str | os.PathLike[str] | None = None) -> str:
        """The database URL, or the embedded SQLite file under ``cwd`` (default: working dir)."""
        if self.database_url:
            return self.database_url
        base = Path(cwd) if cwd else Path.cwd()
        return f"sqlite:///{base / DEFAULT_DATABASE_PATH}"


Source = Literal["default", "file", "environment", "flag"]
"""Where a setting's value came from (see :func:`load_settings_sources`)."""

Origins = dict[str, tuple[Source, str]]
"""Dotted setting key → (source, the file's path, variable's name or flag) for every value not
left at its default."""

_ENV_KEYS: tuple[tuple[str, str], ...] = (
    ("DSPEX_DATABASE_URL", "database_url"),
    ("DSPEX_DEFAULT_BACKEND", "default_backend"),
    ("DSPEX_ALLOWED_IMPORTS", "allowed_imports"),
    ("DSPEX_CORPUS_DIRS", "corpus_dirs"),
    ("DSPEX_WORKER_ID", "worker_id"),
    ("DSPEX_TIMEOUT", "defaults.timeout"),
    ("DSPEX_MAX_ATTEMPTS", "defaults.retry.max_attempts"),
    ("DSPEX_BREAKERS", "defaults.breakers"),
    ("DSPEX_CACHE", "cache.mode"),
    ("DSPEX_CACHE_TTL", "cache.ttl"),
    ("DSPEX_CAPTURE_INPUTS_OUTPUTS", "capture.inputs_outputs"),
    ("DSPEX_CAPTURE_MESSAGES", "capture.messages"),
    ("DSPEX_CAPTURE_REDACT", "capture.redact"),
)
_BOOLEAN_VARIABLES = frozenset(
    {"DSPEX_BREAKERS", "DSPEX_CAPTURE_INPUTS_OUTPUTS", "DSPEX_CAPTURE_MESSAGES"}
)


@dataclass(frozen=True, slots=True)
class SettingValue:
    """One effective setting and where its value came from.

    Attributes:
        key: the dotted name (``defaults.retry.max_attempts``).
        value: the value in effect (JSON types).
        source: ``default``, ``file``, ``environment`` or ``flag``.
        origin: the file's path, the variable's name or the flag (``None`` for a default).
    """

    key: str
    value: Any
    source: Source
    origin: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"value": self.value, "source": self.source, "origin": self.origin}


def _split(value: str) -> tuple[str, ...]:
    return tuple(p.strip() for p in value.split(",") if p.strip())


def _env_value(variable: str, raw: str) -> Any:
    """An environment variable's text as the setting's type."""
    if variable in ("DSPEX_ALLOWED_IMPORTS", "DSPEX_CORPUS_DIRS", "DSPEX_CAPTURE_REDACT"):
        return _split(raw)
    if variable == "DSPEX_TIMEOUT":
        try:
            return float(raw)
        except ValueError:
            raise ConfigError(f"{variable}={raw!r} is not a number of seconds") from None
    if variable == "DSPEX_MAX_ATTEMPTS":
        try:
            return int(raw)
        except ValueError:
            raise ConfigError(f"{variable}={raw!r} is not a whole number") from None
    if variable in _BOOLEAN_VARIABLES:
        lowered = raw.strip().lower()
        if lowered not in ("true", "false", "1", "0", "yes", "no", "on", "off"):
            raise ConfigError(f"{variable}={raw!r} is not true or false")
        return lowered in ("true", "1", "yes", "on")
    return raw


def _env_overrides(env: Mapping[str, str]) -> dict[str, tuple[str, Any]]:
    """Dotted key → (variable, value) for every ``DSPEX_*`` override that is set."""
    out: dict[str, tuple[str, Any]] = {}
    for variable, key in _ENV_KEYS:
        raw = env.get(variable)
        if raw:
            out[key] = (variable, _env_value(variable, raw))
    return out


def _put(data: dict[str, Any], key: str, value: Any) -> None:
    """Set dotted ``key`` in nested tables, making the tables on the way."""
    *parents, last = key.split(".")
    table = data
    for part in parents:
        inner = table.get(part)
        if not isinstance(inner, dict):
            inner = table[part] = {}
        table = inner
    table[last] = value


def _leaves(data: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Every non-table value of nested tables, with its dotted key."""
    for name, value in data.items():
        key = f"{prefix}{name}"
        if isinstance(value, Mapping) and value:
            yield from _leaves(value, f"{key}.")
        else:
            yield key, value


def _absolute_dirs(dirs: Sequence[str], base: Path) -> tuple[str, ...]:
    return tuple(str(base / d) if not Path(d).is_absolute() else d for d in dirs)


def load_settings(
    path: str | Path | None = None,
    *,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    flags: Mapping[str, tuple[str, Any]] | None = None,
) -> Settings:
    """Read ``dspex.toml`` (if any) and apply ``DSPEX_*`` overrides, then ``flags``.

    Args:
        path: an explicit file; otherwise ``DSPEX_CONFIG``, otherwise ``./dspex.toml`` if it exists.
        env: the environment to read (default ``os.environ``).
        cwd: the directory to look in (default: the working directory).
        flags: command-line overrides: dotted key → (the flag, its value), e.g.
            ``{"defaults.timeout": ("--attempt-timeout", 10.0)}``.

    Raises:
        ConfigError: the file is missing (when named explicitly), not TOML, has unknown keys,
            a coordinator group names an unknown backend, or an override is malformed.
    """
    return load_settings_sources(path, env=env, cwd=cwd, flags=flags)[0]


def load_settings_sources(
    path: str | Path | None = None,
    *,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    flags: Mapping[str, tuple[str, Any]] | None = None,
) -> tuple[Settings, Origins]:
    """:func:`load_settings`, and where every value not left at its default came from.

    Later sources win: the file, then the environment, then the flags. Pass both to
    :func:`effective_settings` for every setting with its source.

    Raises:
        ConfigError: as :func:`load_settings`.
    """
    environ = os.environ if env is None else env
    base = Path(cwd) if cwd else Path.cwd()
    named = path or environ.get("DSPEX_CONFIG")
    file = Path(named) if named else base / "dspex.toml"
    data: dict[str, Any] = {}
    origins: Origins = {}
    if file.is_file():
        try:
            data = tomllib.loads(file.read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read {file}: {exc}") from exc
        origins.update((key, ("file", str(file))) for key, _ in _leaves(data))
        data["source"] = str(file)
    elif named:
        raise ConfigError(f"configuration file not found: {file}")
    file_dirs = data.get("corpus_dirs")
    if isinstance(file_dirs, list) and all(isinstance(d, str) for d in file_dirs):
        # the file's own entries mean "next to this file", wherever dspex is started from
        data["corpus_dirs"] = _absolute_dirs(file_dirs, file.resolve().parent)
    overrides = _env_overrides(environ)
    if "corpus_dirs" in overrides:
        variable, dirs = overrides["corpus_dirs"]
        overrides["corpus_dirs"] = (variable, _absolute_dirs(dirs, base))
    if environ.get("DSPEX_API_KEYS"):
        overrides["server.api_keys"] = (
            "DSPEX_API_KEYS",
            parse_api_keys(environ["DSPEX_API_KEYS"]),
        )
    for key, (variable, value) in overrides.items():
        _put(data, key, value)
        origins[key] = ("environment", variable)
    for key, (flag, value) in (flags or {}).items():
        _put(data, key, value)
        origins[key] = ("flag", flag)
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
    return settings, origins


def effective_settings(settings: Settings, origins: Origins | None = None) -> list[SettingValue]:
    """Every setting in effect, by dotted key (sorted), with where its value came from.

    A key takes the source of the nearest of itself and its enclosing tables in ``origins``
    (from :func:`load_settings_sources`); a key found in neither is a ``default``.
    """
    found = origins or {}
    values: list[SettingValue] = []
    for key, value in _leaves(settings.model_dump(mode="json", exclude={"source"})):
        where: tuple[Source, str] | None = None
        probe = key
        while where is None:
            where = found.get(probe)
            if "." not in probe:
                break
            probe = probe.rsplit(".", 1)[0]
        if where is None:
            values.append(SettingValue(key, value, "default"))
        else:
            values.append(SettingValue(key, value, where[0], where[1]))
    return sorted(values, key=lambda v: v.key)
