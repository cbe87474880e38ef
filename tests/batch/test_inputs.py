"""Batch inputs: counting and reading a JSONL file agree on every odd line, and odd lines are
invalid items (named by line), never a traceback or a batch that can never complete. The
``out`` file is checked before the batch is recorded."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from dspex.batch.inputs import InputSource, open_source, read_chunks
from dspex.errors import ValidationError
from dspex.runtime import Runtime

GOOD = b'{"question": "a"}'

# (what the file holds, how many items it has) for lines that read differently as text and bytes
ODD_FILES = {
    "a line of only no-break spaces": (GOOD + b"\n\xc2\xa0\xc2\xa0\n" + GOOD + b"\n", 3),
    "a bare carriage return inside a line": (GOOD + b"\r" + GOOD + b"\n" + GOOD + b"\n", 2),
    "windows line endings": (GOOD + b"\r\n\r\n" + GOOD + b"\r\n", 2),
    "a line of a form feed": (GOOD + b"\n\x0c\n", 2),
    "a unicode line separator": (GOOD + b"\xe2\x80\xa8" + GOOD + b"\n", 1),
    "a next-line control character": (GOOD + b"\xc2\x85" + GOOD + b"\n", 1),
    "invalid utf-8": (GOOD + b'\n{"question": "\xff"}\n', 2),
    "no newline at the end": (GOOD + b"\n" + GOOD, 2),
    "blank lines of spaces and tabs": (b" \t \n" + GOOD + b"\n\n   \n", 1),
    "a byte order mark": (b"\xef\xbb\xbf" + GOOD + b"\n", 1),
}


def _file(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / "in.jsonl"
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(("data", "items"), ODD_FILES.values(), ids=list(ODD_FILES))
def test_the_count_matches_the_items_read_whatever_the_lines_hold(
    tmp_path: Path, data: bytes, items: int
) -> None:
    source = open_source(_file(tmp_path, data))
    read = list(source)
    chunked = list(read_chunks(source.path or Path(), 2, itertools.count().__next__))
    assert source.total == items
    assert [r.index for r in read] == list(range(items))
    assert chunked == read


def test_a_line_of_only_no_break_spaces_is_an_invalid_item(tmp_path: Path) -> None:
    source = open_source(_file(tmp_path, GOOD + b"\n\xc2\xa0\n"))
    first, second = list(source)
    assert first.problem is None
    assert (second.index, second.line) == (1, 2)
    assert second.problem is not None
    assert second.problem.startswith("line 2: not valid JSON")


def test_a_bare_carriage_return_does_not_split_a_line(tmp_path: Path) -> None:
    source = open_source(_file(tmp_path, GOOD + b"\r" + GOOD + b"\n"))
    (only,) = list(source)
    assert source.total == 1
    assert only.problem is not None
    assert only.problem.startswith("line 1: not valid JSON")


def test_windows_line_endings_are_ordinary_lines(tmp_path: Path) -> None:
    source = open_source(_file(tmp_path, GOOD + b"\r\n" + GOOD + b"\r\n"))
    assert [(r.line, r.value, r.problem) for r in source] == [
        (1, {"question": "a"}, None),
        (2, {"question": "a"}, None),
    ]


def test_invalid_utf8_is_an_invalid_item_naming_its_line(tmp_path: Path) -> None:
    source = open_source(_file(tmp_path, GOOD + b'\n{"question": "\xff"}\n'))
    first, second = list(source)
    assert first.problem is None
    assert second.value is None
    assert second.problem is not None
    assert second.problem.startswith("line 2: not valid UTF-8")


def test_a_line_nested_past_the_json_parser_is_an_invalid_item_naming_its_line(
    tmp_path: Path,
) -> None:
    deep = b'{"question": ' + b"[" * 200_000 + b"]" * 200_000 + b"}"
    source = open_source(_file(tmp_path, GOOD + b"\n" + deep + b"\n" + GOOD + b"\n"))
    first, second, third = list(source)
    assert (first.problem, third.problem) == (None, None)
    assert second.value is None
    assert second.problem == "line 2: nests arrays or objects too deep"


def test_a_byte_order_mark_at_the_start_of_the_file_is_ignored(tmp_path: Path) -> None:
    source = open_source(_file(tmp_path, b"\xef\xbb\xbf" + GOOD + b"\n"))
    assert [(r.value, r.problem) for r in source] == [({"question": "a"}, None)]


def test_a_jsonl_input_is_recorded_with_its_absolute_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _file(tmp_path, GOOD + b"\n")
    monkeypatch.chdir(tmp_path)
    assert open_source("in.jsonl").describe() == {
        "kind": "jsonl",
        "path": str(tmp_path / "in.jsonl"),
    }


def test_a_stream_item_that_is_not_utf8_encodable_keeps_its_value(tmp_path: Path) -> None:
    with open_source(iter([{"question": "\ud800"}, {"question": "b"}])) as source:
        assert isinstance(source, InputSource)
        assert [(r.value, r.problem) for r in source] == [
            ({"question": "\ud800"}, None),
            ({"question": "b"}, None),
        ]


async def test_up_front_validation_names_the_line_of_invalid_utf8(
    rt: Runtime, tmp_path: Path
) -> None:
    path = _file(tmp_path, b'{"question": "a"}\n{"question": "\xff"}\n')
    with pytest.raises(ValidationError) as caught:
        await rt.run_batch("qa", path)
    assert [(e.field, e.code) for e in caught.value.errors] == [("items[1]", "invalid_item")]
    assert caught.value.errors[0].message.startswith("line 2: not valid UTF-8")
    assert await rt.list_batches() == []


async def test_a_batch_with_a_no_break_space_line_completes_with_that_item_failed(
    rt: Runtime, tmp_path: Path
) -> None:
    path = _file(tmp_path, b'{"question": "a"}\n\xc2\xa0\n{"question": "b"}\n')
    result = await rt.run_batch("qa", path, validate="per_item")
    assert result.status == "completed"
    assert (result.stats.total, result.stats.completed, result.stats.failed) == (3, 2, 1)
    again = await rt.run_batch("qa", path, validate="per_item", resume=result.batch_id)
    assert again.status == "completed"
    assert again.stats.completed + again.stats.failed == again.stats.total == 3


async def test_a_batch_with_a_bare_carriage_return_never_completes_more_items_than_it_has(
    rt: Runtime, tmp_path: Path
) -> None:
    path = _file(tmp_path, b'{"question": "a"}\r{"question": "b"}\n{"question": "c"}\n')
    result = await rt.run_batch("qa", path, validate="per_item")
    assert (result.stats.total, result.stats.completed, result.stats.failed) == (2, 1, 1)
    assert result.status == "completed"


@pytest.mark.parametrize("where", ["missing/out.jsonl", "."])
async def test_an_out_file_that_cannot_be_written_is_refused_before_the_batch_is_recorded(
    rt: Runtime, tmp_path: Path, where: str
) -> None:
    with pytest.raises(ValidationError) as caught:
        await rt.run_batch("qa", [{"question": "a"}], out=tmp_path / where)
    assert [(e.field, e.code) for e in caught.value.errors] == [("out", "unwritable")]
    assert await rt.list_batches() == []


async def test_checking_the_out_file_leaves_no_file_behind_when_the_items_are_refused(
    rt: Runtime, tmp_path: Path
) -> None:
    with pytest.raises(ValidationError):
        await rt.run_batch("qa", [{"wrong": "a"}], out=tmp_path / "out.jsonl")
    assert not (tmp_path / "out.jsonl").exists()


async def test_the_out_file_is_recorded_in_the_batch_config(rt: Runtime, tmp_path: Path) -> None:
    result = await rt.run_batch("qa", [{"question": "a"}], out=tmp_path / "out.jsonl")
    assert (await rt.get_batch(result.batch_id)).config["out"] == str(tmp_path / "out.jsonl")
