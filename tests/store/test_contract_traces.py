"""The store contract for traces: a step's inputs and outputs and an attempt's LM messages and
raw response are kept as given (JSON), or absent when not captured, on one finish and on a
batch's many (every implementation)."""

from __future__ import annotations

from typing import Any

from dspex.records import (
    AttemptOutcome,
    AttemptRecord,
    ExecutionStatus,
    FinishRequest,
    ProgramRecord,
    StepRecord,
    StepStatus,
)
from dspex.store import Store

INPUTS: dict[str, Any] = {"question": "why?", "ssn": "[redacted]", "nested": {"k": [1, 2.5]}}
OUTPUTS: dict[str, Any] = {"answer": "because", "confidence": 0.9, "ok": True, "none": None}
MESSAGES: list[Any] = [
    {"role": "system", "content": "Answer."},
    {"role": "user", "content": [{"type": "text", "text": "why? [redacted]"}]},
]
RESPONSE: dict[str, Any] = {
    "id": "chatcmpl-1",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "because"}}],
    "usage": {"prompt_tokens": 7, "completion_tokens": 1},
}


def _step(module: str = "answer", *, traced: bool = True) -> StepRecord:
    return StepRecord(
        module=module,
        status=StepStatus.COMPLETED,
        inputs=INPUTS if traced else None,
        outputs=OUTPUTS if traced else None,
    )


def _attempt(module: str = "answer", *, traced: bool = True) -> AttemptRecord:
    return AttemptRecord(
        module=module,
        attempt=1,
        backend="default",
        outcome=AttemptOutcome.SUCCEEDED,
        prompt_tokens=7,
        completion_tokens=1,
        messages=MESSAGES if traced else None,
        response=RESPONSE if traced else None,
    )


async def _start(store: Store) -> tuple[str, str]:
    started = await store.start_execution(
        "qa", 1, {"question": "why?"}, worker_id="w", lease_seconds=30
    )
    assert started.lease_token is not None
    return started.id, started.lease_token


async def test_a_finished_execution_keeps_its_steps_data_and_attempts_exchanges(
    store: Store, program: ProgramRecord
) -> None:
    execution_id, token = await _start(store)
    await store.finish_execution(
        execution_id,
        token,
        ExecutionStatus.COMPLETED,
        outputs={"answer": "because"},
        steps=(_step(), _step("other", traced=False)),
        attempts=(_attempt(), _attempt("other", traced=False)),
    )
    traced, untraced = await store.list_steps(execution_id)
    assert (traced.inputs, traced.outputs) == (INPUTS, OUTPUTS)
    assert (untraced.inputs, untraced.outputs) == (None, None)
    exchanged, bare = await store.list_attempts(execution_id)
    assert (exchanged.messages, exchanged.response) == (MESSAGES, RESPONSE)
    assert (bare.messages, bare.response) == (None, None)


async def test_a_one_step_finish_keeps_the_same_data(store: Store, program: ProgramRecord) -> None:
    # one step and one attempt: the shape stores write through their quickest path
    execution_id, token = await _start(store)
    await store.finish_execution(
        execution_id,
        token,
        ExecutionStatus.COMPLETED,
        outputs=OUTPUTS,
        steps=(_step(),),
        attempts=(_attempt(),),
    )
    (step,) = await store.list_steps(execution_id)
    (attempt,) = await store.list_attempts(execution_id)
    assert (step.inputs, step.outputs) == (INPUTS, OUTPUTS)
    assert (attempt.messages, attempt.response) == (MESSAGES, RESPONSE)


async def test_batch_items_finished_together_keep_their_traces(
    store: Store, program: ProgramRecord
) -> None:
    batch = await store.create_batch("qa", 1, {}, total=2)
    claimed = await store.add_and_claim_batch_items(
        batch.id, "qa", 1, [(0, {"i": 0}), (1, {"i": 1})], worker_id="w", lease_seconds=30
    )
    (e0, t0), (e1, t1) = claimed[0], claimed[1]
    requests = [
        FinishRequest(e0, t0, ExecutionStatus.COMPLETED, steps=(_step(),), attempts=(_attempt(),)),
        FinishRequest(
            e1,
            t1,
            ExecutionStatus.FAILED,
            steps=(_step(traced=False),),
            attempts=(_attempt(traced=False),),
        ),
    ]
    assert await store.finish_executions(requests) == [True, True]
    assert [(s.inputs, s.outputs) for s in await store.list_steps(e0)] == [(INPUTS, OUTPUTS)]
    assert [(a.messages, a.response) for a in await store.list_attempts(e0)] == [
        (MESSAGES, RESPONSE)
    ]
    assert [(s.inputs, s.outputs) for s in await store.list_steps(e1)] == [(None, None)]
    assert [(a.messages, a.response) for a in await store.list_attempts(e1)] == [(None, None)]
