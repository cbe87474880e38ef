"""The dspex exception tree.

Every error dspex raises on purpose is a :class:`DspexError` with a stable ``code`` string. The code
is what gets stored on failed executions and returned by the CLI and the API, so codes never change
once released.

::

    DspexError                         dspex_error
    ├── ValidationError                validation_error     (.errors: list[ErrorDetail])
    │   ├── SignatureError             signature_invalid
    │   ├── SpecError                  spec_invalid
    │   ├── MetricError                metric_invalid       (unknown metric, or a bad score)
    │   └── AmbiguousIdError           ambiguous_id         (.candidates: an id prefix's matches)
    ├── ConfigError                    config_invalid
    ├── NotFoundError                  not_found
    ├── ProgramStateError              program_state        (.status)
    ├── PromotionRefusedError          promotion_refused    (.score .previous_score: the gate)
    ├── GraphError                     graph_invalid        (.errors)
    │   ├── GraphCycleError            graph_cycle          (.cycle)
    │   └── MissingDependencyError     graph_missing_dependency
    ├── ResourceError                  resource_exceeded
    ├── ModuleError                    module_failed        (python/dspy module raised)
    ├── SecurityError                  import_not_allowed
    │   └── PathNotAllowedError        path_not_allowed     (a corpus outside the allowed dirs)
    ├── BackendError                   backend_error        (.retryable .status .retry_after)
    │   ├── RateLimitError             rate_limited         retryable
    │   ├── BackendUnavailableError    backend_unavailable  retryable (5xx)
    │   ├── BackendConnectionError     backend_connection   retryable
    │   ├── MalformedResponseError     backend_malformed_response  retryable (reply not JSON)
    │   ├── AuthenticationError        backend_auth         fail over, never retry the same one
    │   │   └── QuotaExceededError     backend_quota_exceeded  (billing/quota; same rule)
    │   ├── BadRequestError            backend_bad_request
    │   │   └── ContextWindowError     context_window_exceeded
    │   └── ParseError                 backend_parse
    ├── DspexTimeoutError              timeout              retryable
    │   └── DeadlineExceeded           deadline_exceeded
    ├── CircuitOpenError               circuit_open
    ├── AllBackendsFailedError         all_backends_failed  (.attempts) retryable if every cause is
    ├── ExecutionCancelledError        cancelled
    ├── OptimizationError              optimization_failed  (a DSPy optimizer raised)
    ├── BatchError                     batch_error
    │   └── MaxErrorsExceeded          batch_max_errors
    └── StorageError                   storage_error
        └── LeaseLostError             lease_lost
"""

from __future__ import annotations

import functools
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from pydantic import ValidationError as PydanticValidationError

__all__ = [
    "AllBackendsFailedError",
    "AmbiguousIdError",
    "AuthenticationError",
    "BackendConnectionError",
    "BackendError",
    "BackendUnavailableError",
    "BadRequestError",
    "BatchError",
    "CircuitOpenError",
    "ConfigError",
    "ContextWindowError",
    "DeadlineExceeded",
    "DspexError",
    "DspexTimeoutError",
    "ErrorDetail",
    "ExecutionCancelledError",
    "ExecutionFinishedError",
    "FailedAttempt",
    "GraphCycleError",
    "GraphError",
    "LeaseLostError",
    "MalformedResponseError",
    "MaxErrorsExceeded",
    "MetricError",
    "MissingDependencyError",
    "ModuleError",
    "NotFoundError",
    "OptimizationError",
    "ParseError",
    "PathNotAllowedError",
    "ProgramStateError",
    "PromotionRefusedError",
    "QuotaExceededError",
    "RateLimitError",
    "ResourceError",
    "SecurityError",
    "SignatureError",
    "SpecError",
    "StorageError",
    "ValidationError",
    "error_code",
    "is_retryable",
    "should_failover",
]


@dataclass(frozen=True, slots=True)
class ErrorDetail:
    """One problem found while validating: where (``field`` path), what (``code``) and why."""

    field: str
    code: str
    message: str

    def to_dict(self) -> dict[str, str]:
        return {"field": self.field, "code": self.code, "message": self.message}

    @classmethod
    def from_pydantic(
        cls,
        errors: PydanticValidationError | Iterable[Mapping[str, Any]],
        *,
        root: str = "",
        rename: Mapping[str, str] | None = None,
        skip_after: Collection[str] = (),
    ) -> list[ErrorDetail]:
        """One detail per problem in a pydantic validation error (or its ``errors()`` list).

        ``field`` is the dotted ``loc`` path (``root`` when the problem concerns the whole value),
        ``code`` pydantic's error ``type`` and ``message`` its ``msg`` without the ``"Value
        error, "`` that pydantic puts before a validator's own message. ``rename`` maps a path part
        (a field's Python name) to the name users write; ``skip_after`` names fields after which
        pydantic adds the union member it tried (``"str"``, ``"dict[str,any]"``), which is noise.
        """
        items = (
            errors.errors(include_url=False)
            if isinstance(errors, PydanticValidationError)
            else errors
        )
        names = rename or {}
        out: list[ErrorDetail] = []
        for err in items:
            loc = tuple(err.get("loc", ()))
            parts = [
                names.get(str(p), str(p))
                for i, p in enumerate(loc)
                if not (i and loc[i - 1] in skip_after)
            ]
            message = str(err.get("msg", "invalid")).removeprefix("Value error, ")
            out.append(cls(".".join(parts) or root, str(err.get("type", "invalid")), message))
        return out


class DspexError(Exception):
    """Root of every error dspex raises on purpose."""

    code: ClassVar[str] = "dspex_error"
    retryable: ClassVar[bool] = False

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly view with the stable keys ``code`` and ``message``."""
        return {"code": self.code, "message": self.message}


class ValidationError(DspexError):
    """Data or a definition failed validation; ``errors`` lists every problem found."""

    code = "validation_error"

    def __init__(self, message: str, errors: Iterable[ErrorDetail] = ()) -> None:
        self.errors: list[ErrorDetail] = list(errors)
        if self.errors and message.endswith(":"):
            message = message + " " + "; ".join(f"{e.field}: {e.message}" for e in self.errors)
        super().__init__(message)

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "errors": [e.to_dict() for e in self.errors]}


class SignatureError(ValidationError):
    """A signature definition (string, dict or DSPy class) is malformed."""

    code = "signature_invalid"


class SpecError(ValidationError):
    """A program spec is malformed."""

    code = "spec_invalid"


class MetricError(ValidationError):
    """A metric cannot be found, is not allowed, or returned something that is not a score."""

    code = "metric_invalid"


class AmbiguousIdError(ValidationError):
    """An id prefix matches more than one record; ``candidates`` are (some of) its matches."""

    code = "ambiguous_id"

    def __init__(self, message: str, candidates: Sequence[str]) -> None:
        self.candidates: list[str] = list(candidates)
        super().__init__(message, [ErrorDetail("id", "candidate", c) for c in self.candidates])


class ConfigError(DspexError):
    """Configuration (``dspex.toml``, ``DSPEX_*`` variables, arguments) is unusable."""

    code = "config_invalid"


class NotFoundError(DspexError):
    """A named thing (program, execution, batch, backend) does not exist."""

    code = "not_found"


class ProgramStateError(DspexError):
    """The program is not in a state that allows the operation (for example not ``ready``)."""

    code = "program_state"

    def __init__(self, message: str, status: str | None = None) -> None:
        super().__init__(message)
        self.status = status


class PromotionRefusedError(DspexError):
    """The score gate kept a version from becoming current: its score is below the current
    version's plus the required improvement."""

    code = "promotion_refused"

    def __init__(self, message: str, *, score: float, previous_score: float) -> None:
        super().__init__(message)
        self.score = score
        self.previous_score = previous_score

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "score": self.score, "previous_score": self.previous_score}


class GraphError(DspexError):
    """A program graph is invalid. ``errors`` lists every problem found."""

    code = "graph_invalid"

    def __init__(self, message: str, errors: Iterable[ErrorDetail] = ()) -> None:
        super().__init__(message)
        self.errors: list[ErrorDetail] = list(errors)

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "errors": [e.to_dict() for e in self.errors]}


class GraphCycleError(GraphError):
    """The module graph has a cycle; ``cycle`` names it (first node repeated at the end)."""

    code = "graph_cycle"

    def __init__(
        self, cycle: Sequence[str], message: str | None = None, errors: Iterable[ErrorDetail] = ()
    ) -> None:
        self.cycle = list(cycle)
        super().__init__(message or f"cycle in program graph: {' -> '.join(self.cycle)}", errors)


class MissingDependencyError(GraphError):
    """A module refers to a module or field that does not exist."""

    code = "graph_missing_dependency"


class ResourceError(DspexError):
    """A module needs more of a resource than the capacity that exists."""

    code = "resource_exceeded"


class ModuleError(DspexError):
    """User code inside a ``python`` or ``dspy`` module raised."""

    code = "module_failed"


class SecurityError(DspexError):
    """An import reference is outside the configured allow-list."""

    code = "import_not_allowed"


class PathNotAllowedError(SecurityError):
    """A file a spec names (a ``retrieve`` corpus) is outside the allowed directories."""

    code = "path_not_allowed"


class BackendError(DspexError):
    """A backend (LM provider) call failed.

    Attributes:
        retryable: whether retrying the same backend may succeed.
        status: the HTTP status the provider answered with, when there was one.
        retry_after: seconds the provider asked us to wait (``Retry-After``), when it said.
        backend: the name of the backend that failed.
    """

    code = "backend_error"

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        retry_after: float | None = None,
        backend: str | None = None,
        retryable: bool | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after
        self.backend = backend
        if retryable is not None:
            self.retryable = retryable  # type: ignore[misc]  # instance override of the class default

    def to_dict(self) -> dict[str, Any]:
        return {
            **super().to_dict(),
            "status": self.status,
            "retry_after": self.retry_after,
            "backend": self.backend,
            "retryable": self.retryable,
        }


class RateLimitError(BackendError):
    code = "rate_limited"
    retryable = True


class BackendUnavailableError(BackendError):
    code = "backend_unavailable"
    retryable = True


class BackendConnectionError(BackendError):
    code = "backend_connection"
    retryable = True


class MalformedResponseError(BackendError):
    """The provider's reply could not be read: a body that is not JSON (a gateway's error page
    behind an HTTP 200), JSON cut off halfway, or JSON of the wrong shape.

    A transport or gateway hiccup, not the model's answer (that is :class:`ParseError`): asking
    again, here or on another backend, may well succeed.
    """

    code = "backend_malformed_response"
    retryable = True


class AuthenticationError(BackendError):
    """Credentials were refused. Fail over to another backend; never retry this one."""

    code = "backend_auth"


class QuotaExceededError(AuthenticationError):
    """The account's billing or quota refused the call. Like auth: fail over, never retry."""

    code = "backend_quota_exceeded"


class BadRequestError(BackendError):
    code = "backend_bad_request"


class ContextWindowError(BadRequestError):
    code = "context_window_exceeded"


class ParseError(BackendError):
    """The LM answered but its answer could not be parsed into the output fields."""

    code = "backend_parse"


class DspexTimeoutError(DspexError):
    """One call or one module took longer than its timeout."""

    code = "timeout"
    retryable = True


class DeadlineExceeded(DspexTimeoutError):
    """The overall deadline (across attempts and failover) was spent."""

    code = "deadline_exceeded"
    retryable = False

    def __init__(self, message: str, attempts: Iterable[FailedAttempt] = ()) -> None:
        # which backends were tried before time ran out, and why each failed
        self.attempts: list[FailedAttempt] = list(attempts)
        super().__init__(message)


class CircuitOpenError(DspexError):
    """The backend's circuit breaker is open; the call was not attempted."""

    code = "circuit_open"

    def __init__(self, message: str, backend: str | None = None) -> None:
        super().__init__(message)
        self.backend = backend


@dataclass(frozen=True, slots=True)
class FailedAttempt:
    """Why one backend failed (or was not asked) in a coordinator call.

    Attributes:
        backend: the backend's name.
        code: the stable code of its error.
        message: the error message.
        retryable: whether the same call may succeed when asked again (:func:`is_retryable` of
            the error). When not given, the class of ``code`` decides.
    """

    backend: str
    code: str
    message: str
    retryable: bool | None = None

    def __post_init__(self) -> None:
        if self.retryable is None:
            object.__setattr__(self, "retryable", _retryable_code(self.code))


class AllBackendsFailedError(DspexError):
    """Every backend of a coordinator group failed or was open. ``attempts`` says why each one.

    It is retryable (the whole call may be made again later, for example by a batch re-running
    the item) exactly when some backend was asked and every answer that came back failed in a
    retryable way: rate limits, 5xx, timeouts, connection errors, malformed replies. One auth
    error among them makes it final. A backend skipped because its circuit was open is no cause
    either way (it was not asked, and its circuit closes by itself); when every circuit was open
    and nothing was asked, the error is final.
    """

    code = "all_backends_failed"

    def __init__(self, message: str, attempts: Iterable[FailedAttempt] = ()) -> None:
        self.attempts: list[FailedAttempt] = list(attempts)
        super().__init__(message)
        causes = [a for a in self.attempts if a.code != CircuitOpenError.code]
        # an instance value in place of the class default: the causes decide
        self.retryable = bool(causes) and all(a.retryable for a in causes)  # type: ignore[misc]


class ExecutionCancelledError(DspexError):
    """The work was cancelled before it finished (named so as not to shadow ``asyncio``'s)."""

    code = "cancelled"


class ExecutionFinishedError(DspexError):
    """The execution has already finished, so it cannot be cancelled (``status`` names how)."""

    code = "execution_finished"

    def __init__(self, message: str, *, status: str | None = None) -> None:
        super().__init__(message)
        self.status = status


class OptimizationError(DspexError):
    """A DSPy optimizer failed while optimizing a program (the run is recorded as failed)."""

    code = "optimization_failed"


class BatchError(DspexError):
    """A batch stopped before every item ran. ``batch_id`` names it (resume with it)."""

    code = "batch_error"

    def __init__(self, message: str, *, batch_id: str | None = None) -> None:
        super().__init__(message)
        self.batch_id = batch_id


class MaxErrorsExceeded(BatchError):
    """More items failed than the batch's ``max_errors`` allows; the batch was stopped."""

    code = "batch_max_errors"


class StorageError(DspexError):
    """The store failed (database unreachable, constraint broken, migration missing)."""

    code = "storage_error"


class LeaseLostError(StorageError):
    """This worker no longer holds the execution's lease; its write was refused."""

    code = "lease_lost"


def _all_subclasses(cls: type[DspexError]) -> list[type[DspexError]]:
    out = [cls]
    for sub in cls.__subclasses__():
        out.extend(_all_subclasses(sub))
    return out


def all_error_classes() -> list[type[DspexError]]:
    """Every class in the tree (used by tests to check that codes are unique)."""
    return _all_subclasses(DspexError)


@functools.cache
def _retryable_codes() -> frozenset[str]:
    return frozenset(cls.code for cls in all_error_classes() if cls.retryable)


def _retryable_code(code: str) -> bool:
    """Whether the class with this code is retryable by default (unknown codes are not)."""
    return code in _retryable_codes()


def error_code(exc: BaseException) -> str:
    """The stable code for any exception: its own for ours, ``internal_error`` otherwise."""
    if isinstance(exc, DspexError):
        return exc.code
    if isinstance(exc, TimeoutError):
        return DspexTimeoutError.code
    return "internal_error"


def is_retryable(exc: BaseException) -> bool:
    """The single decision point for "may the same call on the same backend succeed if retried"."""
    if isinstance(exc, DspexError):
        return bool(exc.retryable)
    return isinstance(exc, TimeoutError | ConnectionError)


def should_failover(exc: BaseException) -> bool:
    """Whether another backend may succeed where this one failed.

    Everything retryable fails over, and so do auth errors and open circuits (another provider has
    other credentials and its own health). Bad requests, parse errors after repair, validation and
    deadline errors do not: another backend would get the same bad input or no time to answer.
    """
    if isinstance(exc, AuthenticationError | CircuitOpenError):
        return True
    return is_retryable(exc)
