"""What a batch is expected to use and cost, before it runs (``dspex batch --estimate``).

Per item, tokens by model come from the program's recorded history when it has some (the mean
usage of its recent completed executions of the same version), else from the prompt-token
estimate of each LM module (:func:`~dspex.actions.validate_signature.estimate_cost`: the prompt
DSPy's ChatAdapter builds for sample inputs, and a sample answer), charged to the model of the
module's backend. Prices are the runtime's (:mod:`dspex.backends.pricing`). Nothing runs and
nothing is written.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict

from dspex.actions.validate_signature import estimate_cost
from dspex.backends.base import Usage
from dspex.batch.inputs import open_source
from dspex.records import ExecutionFilter, ExecutionStatus

if TYPE_CHECKING:
    from dspex.actions.batch import BatchItems
    from dspex.actions.execute import ExecuteContext
    from dspex.backends.base import Backend
    from dspex.engine.program import Program

__all__ = ["BatchEstimate", "estimate_batch"]

HISTORY_RUNS = 200
"""Recent completed executions a history-based estimate averages over."""

_LM_KINDS = frozenset({"predict", "chain_of_thought"})


class BatchEstimate(BaseModel):
    """The expected tokens and cost of running a program over some items.

    Attributes:
        program: the program name.
        program_version: the version estimated.
        items: items in the input.
        source: ``history`` (the mean of ``history_runs`` recorded executions) or
            ``prompt_estimate`` (each LM module's estimated prompt and answer).
        history_runs: recorded executions the estimate averages over (0 for a prompt estimate).
        tokens_per_item: expected tokens of one item by model (``prompt_tokens``,
            ``completion_tokens``, ``total_tokens``).
        tokens: expected tokens of the whole input, all models together.
        cost_per_item_usd: expected US dollars of one item.
        cost_usd: expected US dollars of the whole input.
        unpriced_models: models with no known price (counted at no cost).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    program: str
    program_version: int
    items: int
    source: Literal["history", "prompt_estimate"]
    history_runs: int
    tokens_per_item: dict[str, dict[str, int]]
    tokens: int
    cost_per_item_usd: float
    cost_usd: float
    unpriced_models: list[str]


async def estimate_batch(
    ctx: ExecuteContext,
    program: str,
    items: BatchItems,
    *,
    version: int | None = None,
    backend: str | None = None,
) -> BatchEstimate:
    """Estimate a batch of ``program`` over ``items`` (see the module docstring).

    Raises:
        NotFoundError: no such program (version).
        ConfigError: an unknown backend.
        ValidationError: the items cannot be read.
    """
    from dspex.errors import ConfigError

    if backend is not None and backend not in ctx.engine.backends:
        known = ", ".join(sorted(ctx.engine.backends))
        raise ConfigError(f"unknown backend {backend!r} (configured: {known})")
    record = await ctx.store.get_program(program, version)
    prog = ctx.programs.get(record, backend)
    with open_source(items) as source:
        total = source.total
    runs = await _history(ctx, program, record.version)
    per_item: dict[str, Usage]
    if runs:
        per_item = _mean(runs)
        kind: Literal["history", "prompt_estimate"] = "history"
    else:
        per_item = _prompt_estimate(prog, ctx.engine.backends, backend)
        kind = "prompt_estimate"
    prices = ctx.engine.prices
    per_item_cost = prices.cost(per_item)
    per_item_tokens = sum(u.total_tokens for u in per_item.values())
    return BatchEstimate(
        program=program,
        program_version=record.version,
        items=total,
        source=kind,
        history_runs=len(runs),
        tokens_per_item={model: u.to_dict() for model, u in sorted(per_item.items())},
        tokens=per_item_tokens * total,
        cost_per_item_usd=round(per_item_cost, 9),
        cost_usd=round(per_item_cost * total, 9),
        unpriced_models=sorted(m for m in per_item if not prices.known(m)),
    )


async def _history(ctx: ExecuteContext, program: str, version: int) -> list[dict[str, Any]]:
    """The usage maps of the version's most recent completed executions."""
    query = ExecutionFilter(
        program=program, program_version=version, statuses=(ExecutionStatus.COMPLETED,)
    )
    page = await ctx.store.list_executions(query, limit=HISTORY_RUNS)
    return [r.usage for r in page.items]


def _mean(runs: list[dict[str, Any]]) -> dict[str, Usage]:
    prompt: dict[str, int] = {}
    completion: dict[str, int] = {}
    for usage in runs:
        for model, counts in usage.items():
            prompt[model] = prompt.get(model, 0) + int(counts.get("prompt_tokens", 0))
            completion[model] = completion.get(model, 0) + int(counts.get("completion_tokens", 0))
    n = len(runs)
    return {
        model: Usage(round(prompt[model] / n), round(completion.get(model, 0) / n))
        for model in prompt
    }


def _prompt_estimate(
    prog: Program, backends: Mapping[str, Backend], override: str | None
) -> dict[str, Usage]:
    usage: dict[str, Usage] = {}
    for name, spec in prog.modules.items():
        if spec.kind not in _LM_KINDS:
            continue
        guess = estimate_cost(prog.module_signature(name))
        model = _model_of(backends.get(override or spec.backend_name))
        used = Usage(guess.prompt_tokens, guess.completion_tokens)
        usage[model] = usage[model] + used if model in usage else used
    return usage


def _model_of(backend: Backend | None) -> str:
    """The model a backend answers with, as usage records name it (``unknown`` when it says
    nothing; a wrapper's inner backend is asked)."""
    from dspex.backends.mock import MODEL_NAME, MockBackend

    seen = 0
    while backend is not None and seen < 8:
        if isinstance(backend, MockBackend):
            return MODEL_NAME
        model = getattr(backend, "model", None)
        if isinstance(model, str) and model:
            return model
        backend = getattr(backend, "inner", None)
        seen += 1
    return "unknown"
