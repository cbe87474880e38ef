"""``FieldStream``: output fields read from an adapter-formatted answer as its text arrives,
however the text is cut into chunks."""

from __future__ import annotations

import json

import pytest

from dspex.backends.streaming import FieldStream

CHAT = (
    "[[ ## reasoning ## ]]\nBecause [x] and [[1, 2]] hold.\n\n"
    "[[ ## answer ## ]]\n  Paris  is\n\nlovely  \n\n"
    "[[ ## completed ## ]]\n"
)


def _read(text: str, size: int, fields: tuple[str, ...], fmt: str = "chat") -> dict[str, str]:
    stream = FieldStream(fields, fmt)  # type: ignore[arg-type]
    pieces = []
    for start in range(0, len(text), size):
        pieces += stream.feed(text[start : start + size])
    pieces += stream.end()
    values: dict[str, str] = {}
    for field, piece in pieces:
        assert piece  # never an empty piece
        values[field] = values.get(field, "") + piece
    return values


@pytest.mark.parametrize("size", [1, 2, 3, 5, 8, 13, len(CHAT)])
def test_chat_sections_come_out_as_the_adapter_parses_them(size: int) -> None:
    assert _read(CHAT, size, ("reasoning", "answer")) == {
        "reasoning": "Because [x] and [[1, 2]] hold.",
        "answer": "Paris  is\n\nlovely",
    }


def test_fields_not_asked_for_are_read_past() -> None:
    assert _read(CHAT, 4, ("answer",)) == {"answer": "Paris  is\n\nlovely"}


def test_text_before_the_first_header_and_after_completed_is_not_given() -> None:
    text = "Sure! [here] it is\n[[ ## answer ## ]]\nyes\n[[ ## completed ## ]]\ntrailing"
    assert _read(text, 3, ("answer",)) == {"answer": "yes"}


def test_the_markers_never_reach_the_tokens() -> None:
    stream = FieldStream(["answer"])
    pieces = [p for chunk in CHAT for p in stream.feed(chunk)]
    assert all("[[ ##" not in text and "##" not in text for _, text in pieces)


def test_text_held_back_as_a_possible_header_is_given_when_the_answer_ends() -> None:
    text = "[[ ## answer ## ]]\nthe list [[ 1"
    assert _read(text, 2, ("answer",)) == {"answer": "the list [[ 1"}


def test_json_string_values_grow_as_the_object_arrives() -> None:
    text = json.dumps({"reasoning": "Because.", "answer": 'Pa"ris', "score": 3})
    for size in (1, 4, len(text)):
        assert _read(text, size, ("answer", "reasoning", "score"), "json") == {
            "reasoning": "Because.",
            "answer": 'Pa"ris',
        }


def test_json_text_before_the_object_or_not_yet_an_object_gives_nothing() -> None:
    stream = FieldStream(["answer"], "json")
    assert stream.feed("Here you go: ") == []
    assert stream.feed("[") == []
    assert stream.feed('{"answer": "A') == [("answer", "A")]
    assert stream.end() == []


def test_json_that_cannot_be_read_gives_nothing() -> None:
    stream = FieldStream(["answer"], "json")
    assert stream.feed('{"answer": }') == []
