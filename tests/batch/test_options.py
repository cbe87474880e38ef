"""One BatchOptions model: given whole or by its fields' names, checked before anything runs."""

from __future__ import annotations

import pytest
from tests.batch._support import Scripted, questions

import dspex
from dspex import BatchOptions, Runtime
from dspex.errors import ValidationError


async def test_a_batch_runs_on_options_given_as_one_model(rt: Runtime, handler: Scripted) -> None:
    handler.fail_first = {"q0": 1}
    options = BatchOptions(max_retries=1, max_concurrency=2, validate="per_item")
    result = await rt.run_batch("qa", questions(3), options=options)
    assert result.stats.completed == 3
    assert result.stats.retries == 1
    batch = await rt.get_batch(result.batch_id)
    assert batch.config["max_retries"] == 1
    assert batch.config["max_concurrency"] == 2
    assert batch.config["validate"] == "per_item"


async def test_options_given_both_whole_and_by_name_are_refused_naming_each(rt: Runtime) -> None:
    with pytest.raises(ValidationError) as caught:
        await rt.run_batch(
            "qa", questions(1), options=BatchOptions(), max_retries=1, max_concurrency=2
        )
    assert [(d.field, d.code) for d in caught.value.errors] == [
        ("max_concurrency", "conflict"),
        ("max_retries", "conflict"),
    ]
    assert await rt.list_batches() == []


async def test_an_unknown_batch_option_is_a_validation_error_naming_it(rt: Runtime) -> None:
    with pytest.raises(ValidationError) as caught:
        await rt.run_batch("qa", questions(1), max_retry=1)
    assert [d.field for d in caught.value.errors] == ["max_retry"]


async def test_every_bad_option_is_named_with_the_names_users_give(rt: Runtime) -> None:
    with pytest.raises(ValidationError) as caught:
        await rt.start_batch("qa", questions(1), max_concurrency=0, validate="later")
    assert sorted(d.field for d in caught.value.errors) == ["max_concurrency", "validate"]


async def test_a_started_batch_refuses_worker_processes(rt: Runtime) -> None:
    with pytest.raises(ValidationError) as caught:
        await rt.start_batch("qa", questions(1), options=BatchOptions(workers=2))
    assert [(d.field, d.code) for d in caught.value.errors] == [("workers", "unsupported")]


def test_workers_may_be_auto_or_a_numeral_and_nothing_else() -> None:
    assert BatchOptions.of(workers="3").workers == 3
    assert BatchOptions.of(workers="auto").workers >= 1
    with pytest.raises(ValidationError, match="invalid batch options"):
        BatchOptions.of(workers="many")


def test_the_options_are_part_of_the_public_api() -> None:
    assert dspex.BatchOptions is BatchOptions
    assert BatchOptions().error_limit is None
    assert BatchOptions(continue_on_error=False).error_limit == 0
