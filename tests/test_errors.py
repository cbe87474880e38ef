"""The exception tree: stable unique codes and the single retry decision point."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import BaseModel, ConfigDict, field_validator
from pydantic import ValidationError as PydanticValidationError

from dspex import errors as E
from dspex.config import load_settings


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


class _Options(BaseModel):
    model_config = ConfigDict(extra="forbid")

    limit: int = 1
    validate_mode: str = "strict"
    shape: str | dict[str, int] = "x"

    @field_validator("validate_mode")
    @classmethod
    def _known(cls, value: str) -> str:
        if value not in {"strict", "lax"}:
            raise ValueError(f"unknown mode {value!r}")
        return value


def _pydantic_error(**values: object) -> PydanticValidationError:
    with pytest.raises(PydanticValidationError) as caught:
        _Options.model_validate(values)
    return caught.value


def test_error_details_from_pydantic_keep_path_code_and_message() -> None:
    details = E.ErrorDetail.from_pydantic(_pydantic_error(limit="many", extra=1))
    assert [(d.field, d.code) for d in details] == [
        ("limit", "int_parsing"),
        ("extra", "extra_forbidden"),
    ]
    assert details[0].message.startswith("Input should be a valid integer")


def test_error_details_from_pydantic_drop_the_value_error_prefix_of_validators() -> None:
    (detail,) = E.ErrorDetail.from_pydantic(_pydantic_error(validate_mode="loose"))
    assert detail == E.ErrorDetail("validate_mode", "value_error", "unknown mode 'loose'")


def test_error_details_from_pydantic_rename_fields_to_the_names_users_write() -> None:
    exc = _pydantic_error(validate_mode="loose")
    (detail,) = E.ErrorDetail.from_pydantic(exc, rename={"validate_mode": "validate"})
    assert detail.field == "validate"


def test_error_details_from_pydantic_leave_out_union_member_tags_after_named_fields() -> None:
    exc = _pydantic_error(shape=3)
    assert {d.field for d in E.ErrorDetail.from_pydantic(exc)} == {
        "shape.str",
        "shape.dict[str,int]",
    }
    assert {d.field for d in E.ErrorDetail.from_pydantic(exc, skip_after={"shape"})} == {"shape"}


def test_error_details_from_pydantic_name_whole_value_problems_by_the_root() -> None:
    with pytest.raises(PydanticValidationError) as caught:
        _Options.model_validate(["not", "a", "mapping"])
    (detail,) = E.ErrorDetail.from_pydantic(caught.value, root="<root>")
    assert (detail.field, detail.code) == ("<root>", "model_type")


def test_error_details_from_pydantic_accept_an_errors_list() -> None:
    errors = [{"loc": ("body", "inputs", 0), "type": "missing", "msg": "Field required"}]
    assert E.ErrorDetail.from_pydantic(errors) == [
        E.ErrorDetail("body.inputs.0", "missing", "Field required")
    ]


def test_a_configuration_error_reads_without_pydantic_value_error_prefixes(tmp_path: Path) -> None:
    config = tmp_path / "dspex.toml"
    config.write_text("[breaker]\nminimum_calls = 5\nwindow_size = 2\n", encoding="utf-8")
    with pytest.raises(E.ConfigError) as caught:
        load_settings(config, env={})
    assert caught.value.message.endswith(
        "breaker: window_size must be >= minimum_calls (else it can never open)"
    )
