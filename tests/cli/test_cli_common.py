"""The helpers every command shares: exit codes, error reports, safe URLs."""

from __future__ import annotations

import json

import pytest
import typer

from dspex.actions.database import hide_password
from dspex.cli._common import check_choice, exit_code_for, format_ms, handle_errors
from dspex.errors import (
    BackendError,
    ConfigError,
    DspexError,
    ErrorDetail,
    GraphError,
    NotFoundError,
    ProgramStateError,
    SpecError,
    StorageError,
    ValidationError,
)


@pytest.mark.parametrize(
    "exc",
    [
        NotFoundError("x"),
        ProgramStateError("x", "draft"),
        ValidationError("x"),
        SpecError("x"),
        ConfigError("x"),
        GraphError("x"),
    ],
)
def test_user_mistakes_exit_two(exc: DspexError) -> None:
    assert exit_code_for(exc) == 2


@pytest.mark.parametrize("exc", [StorageError("db down"), BackendError("provider down")])
def test_failures_of_the_work_itself_exit_one(exc: DspexError) -> None:
    assert exit_code_for(exc) == 1


def test_a_validation_error_prints_its_headline_and_one_line_per_problem(
    capsys: pytest.CaptureFixture[str],
) -> None:
    exc = ValidationError(
        "invalid inputs:", [ErrorDetail("a", "missing", "required"), ErrorDetail("b", "t", "bad")]
    )
    with pytest.raises(typer.Exit) as exit_info, handle_errors(as_json=False):
        raise exc
    err = capsys.readouterr().err.splitlines()
    assert exit_info.value.exit_code == 2
    assert err[0] == "error: invalid inputs:"
    assert [line.split()[0] for line in err[1:]] == ["a:", "b:"]


def test_a_json_error_report_goes_to_stdout_with_stable_keys(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(typer.Exit), handle_errors(as_json=True):
        raise NotFoundError("program 'x' not found")
    assert json.loads(capsys.readouterr().out) == {
        "error": {"code": "not_found", "message": "program 'x' not found", "errors": []}
    }


def test_an_option_value_outside_its_choices_is_a_bad_argument_naming_them(
    capsys: pytest.CaptureFixture[str],
) -> None:
    check_choice(None, ("fast", "slow"), "speed", as_json=True)
    check_choice("slow", ("fast", "slow"), "speed", as_json=True)
    with pytest.raises(typer.Exit) as exit_info:
        check_choice("warp", ("fast", "slow"), "speed", as_json=True)
    assert exit_info.value.exit_code == 2
    assert json.loads(capsys.readouterr().out) == {
        "error": {
            "code": "bad_arguments",
            "message": "unknown speed 'warp' (choose from: fast, slow)",
            "errors": [],
        }
    }


@pytest.mark.parametrize(
    ("value", "text"),
    [(None, "-"), (0.44, "0.4 ms"), (12.4, "12 ms"), (9_999.0, "9999 ms"), (12_345.0, "12.3 s")],
)
def test_durations_read_well(value: float | None, text: str) -> None:
    assert format_ms(value) == text


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://app:s3cret@db:5432/dspex", "postgresql://app:***@db:5432/dspex"),
        ("postgresql://app@db/dspex", "postgresql://app@db/dspex"),
        ("sqlite:///tmp/x.db", "sqlite:///tmp/x.db"),
        ("memory://", "memory://"),
    ],
)
def test_printed_urls_never_show_a_password(url: str, shown: str) -> None:
    assert hide_password(url) == shown
