"""The exception tree: stable unique codes and the single retry decision point."""

from __future__ import annotations

import pytest

from dspex import errors as E


def test_every_error_class_has_a_unique_code() -> None:
    classes = E.all_error_classes()
    codes = [cls.code for cls in classes]
    assert len(codes) == len(set(codes)), sorted(c for c in codes if codes.count(c) > 1)


def test_every_error_class_is_exported() -> None:
    exported = {getattr(E, name) for name in E.__all__}
    missing = [cls.__name__ for cls in E.all_error_classes() if cls not in exported]
    assert missing == []


@pytest.mark.parametrize(
    ("exc", "retryable", "failover"),
    [
        (E.RateLimitError("slow down", retry_after=2.0), True, True),
        (E.BackendUnavailableError("503"), True, True),
        (E.BackendConnectionError("refused"), True, True),
        (E.DspexTimeoutError("took too long"), True, True),
        (E.AuthenticationError("bad key"), False, True),
        (E.CircuitOpenError("open", backend="a"), False, True),
        (E.BadRequestError("bad"), False, False),
        (E.ContextWindowError("too long"), False, False),
        (E.ParseError("unparseable"), False, False),
        (E.ValidationError("bad input"), False, False),
        (E.DeadlineExceeded("spent"), False, False),
        (E.BackendError("unknown", retryable=True), True, True),
        (TimeoutError(), True, True),
        (ConnectionResetError(), True, True),
        (ValueError("user bug"), False, False),
    ],
)
def test_retry_and_failover_classification(
    exc: BaseException, retryable: bool, failover: bool
) -> None:
    assert E.is_retryable(exc) is retryable
    assert E.should_failover(exc) is failover


def test_error_code_of_foreign_exceptions() -> None:
    assert E.error_code(ValueError()) == "internal_error"
    assert E.error_code(TimeoutError()) == "timeout"
    assert E.error_code(E.GraphCycleError(["a", "b", "a"])) == "graph_cycle"


def test_cycle_error_names_the_cycle() -> None:
    err = E.GraphCycleError(["a", "b", "c", "a"])
    assert "a -> b -> c -> a" in str(err)
    assert err.cycle == ["a", "b", "c", "a"]


def test_validation_error_serialises_every_detail() -> None:
    err = E.ValidationError(
        "invalid inputs:",
        [E.ErrorDetail("k", "int_type", "not an int"), E.ErrorDetail("q", "missing", "required")],
    )
    data = err.to_dict()
    assert data["code"] == "validation_error"
    assert [e["field"] for e in data["errors"]] == ["k", "q"]
    assert "k: not an int" in err.message


def test_backend_error_carries_status_and_retry_after() -> None:
    err = E.RateLimitError("429", status=429, retry_after=1.5, backend="openai")
    assert err.to_dict() == {
        "code": "rate_limited",
        "message": "429",
        "status": 429,
        "retry_after": 1.5,
        "backend": "openai",
        "retryable": True,
    }
