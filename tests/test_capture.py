"""What traces keep of a run's data: redaction at any depth, size limits with markers, values
that are not JSON, and secrets cut out of LM messages and responses."""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel

from dspex.capture import REDACTED, Capture

NONE: frozenset[str] = frozenset()


class Point(BaseModel):
    x: int
    label: str


class Broken(BaseModel):
    x: int

    def model_dump(self, **kwargs: Any) -> dict[str, Any]:
        raise RuntimeError("cannot dump")


class Opaque:
    def __repr__(self) -> str:
        return "<opaque>"


def test_a_value_with_nothing_to_change_is_recorded_as_it_is() -> None:
    data = {"q": "short", "n": 3, "f": 0.5, "b": True, "none": None}
    assert Capture().value(data, NONE) is data


def test_named_fields_are_redacted_at_any_depth_and_their_text_remembered() -> None:
    capture = Capture(redact=("token",))
    secrets: list[str] = []
    data = {
        "token": "top",
        "user": {"name": "Ada", "token": {"id": 7, "scopes": ["r", "w"]}},
        "items": [{"token": 1.5}, "plain"],
    }
    out = capture.value(data, capture.names(()), secrets)
    assert out == {
        "token": REDACTED,
        "user": {"name": "Ada", "token": REDACTED},
        "items": [{"token": REDACTED}, "plain"],
    }
    assert sorted(secrets) == sorted(["top", "7", "r", "w", "1.5"])
    more: list[str] = []
    capture.value({"token": [None, True, "", Opaque()]}, capture.redact, more)
    assert more == ["<opaque>"]  # nothing a prompt would show for None, a flag or ""
    assert data["token"] == "top"  # the run's own values are never changed


def test_signature_sensitive_names_join_the_configured_ones() -> None:
    capture = Capture(redact=("a",))
    assert capture.names(("b",)) == {"a", "b"}
    assert capture.names(()) == {"a"}


def test_long_strings_lists_and_mappings_are_cut_with_markers() -> None:
    capture = Capture(max_chars=20, max_items=2)
    out = capture.value({"s": "y" * 30, "l": [1, 2, 3, 4]}, NONE)
    assert out == {"s": "y" * 20 + "…[truncated 10 chars]", "l": [1, 2, "…[2 more]"]}
    out = capture.value({"t": (1, 2), "m": {"a": 1, "b": 2, "c": 3}}, NONE)
    assert out == {"t": [1, 2], "m": {"a": 1, "b": 2, "…": "[1 more]"}}
    wide = capture.value({"a": 1, "b": 2, "c": 3, "d": 4}, NONE)
    assert wide == {"a": 1, "b": 2, "…": "[2 more]"}


def test_values_that_are_not_json_are_recorded_as_their_json_form_or_repr() -> None:
    capture = Capture(redact=("label",))
    out = capture.value(
        {"p": Point(x=1, label="secret"), "o": Opaque(), "s": {3}, "bad": Broken(x=1)},
        capture.redact,
    )
    assert out == {
        "p": {"x": 1, "label": REDACTED},
        "o": "<opaque>",
        "s": [3],
        "bad": "Broken(x=1)",
    }
    json.dumps(out)  # storable


def test_secrets_are_cut_out_of_messages_and_responses_of_any_shape() -> None:
    capture = Capture(redact=("ssn",), max_chars=60, max_items=3)
    secrets: list[str] = []
    capture.value({"ssn": "123-45-6789"}, capture.redact, secrets)
    messages = [
        {"role": "system", "content": "Answer."},
        {"role": "user", "content": [{"type": "text", "text": "my ssn is 123-45-6789"}]},
    ]
    assert capture.exchange(messages, capture.redact, secrets) == [
        {"role": "system", "content": "Answer."},
        {"role": "user", "content": [{"type": "text", "text": f"my ssn is {REDACTED}"}]},
    ]
    response = {
        "choices": [{"message": {"content": "123-45-6789 it is"}}],
        "usage": {"prompt_tokens": 3},
        "ssn": "123-45-6789",
        "extra": Opaque(),
        "more": 1,
    }
    out = capture.exchange(response, capture.redact, secrets)
    assert out == {
        "choices": [{"message": {"content": f"{REDACTED} it is"}}],
        "usage": {"prompt_tokens": 3},
        "ssn": REDACTED,
        "…": "[2 more]",
    }
    assert capture.exchange(["a", "b", "c", "d"], NONE, ()) == ["a", "b", "c", "…[1 more]"]
    assert capture.exchange(Opaque(), NONE, ()) == "<opaque>"
    assert capture.exchange(None, NONE, ()) is None
    assert capture.text("z" * 70, ()) == "z" * 60 + "…[truncated 10 chars]"


def test_capture_is_off_only_when_both_parts_are() -> None:
    assert Capture().enabled
    assert Capture(inputs_outputs=False, messages=True).enabled
    assert not Capture(inputs_outputs=False).enabled
