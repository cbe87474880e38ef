"""DSPy's optimizers as dspex builds them: settings, the LMs they need, and their trials.

Each optimizer is built through DSPy's public API from the ``[optimize]`` settings, before
anything is recorded (so a missing backend, LM or budget is a :class:`~dspex.errors.ConfigError`
that records nothing); its candidates are read back from the public attributes of its result.
See :mod:`dspex.actions.optimize`.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from dspex.backends.dspy_lm import has_lm, routed_lm
from dspex.errors import ConfigError
from dspex.metrics import Metric, score_value
from dspex.records import OptimizationTrial
from dspex.resilience.coordinator import Coordinator

if TYPE_CHECKING:
    from dspex.backends.base import Backend
    from dspex.config import Settings

__all__ = [
    "FIRST_SEED",
    "OPTIMIZERS",
    "OptimizerName",
    "OptimizerPlan",
    "backend_lm",
    "find_backend",
    "plan",
    "random_search",
    "trials",
]

OptimizerName = Literal["bootstrap_few_shot", "bootstrap_random_search", "mipro_v2", "gepa"]
OPTIMIZERS: tuple[str, ...] = ("bootstrap_few_shot", "bootstrap_random_search", "mipro_v2", "gepa")


# ------------------------------------------------------------------------------ LMs


def find_backend(backends: Mapping[str, Backend], name: str, role: str) -> Backend:
    """The backend called ``name``, or a :class:`ConfigError` naming ``role``."""
    backend = backends.get(name)
    if backend is None:
        raise ConfigError(f"{role}: no backend {name!r} (have: {sorted(backends)})")
    return backend


def backend_lm(backend: Backend, role: str) -> Any:
    """The ``dspy.LM`` that calls go through for ``backend``: a coordinator group's routed LM,
    or the backend's own LM (``dspy`` and ``openai`` backends).

    Raises:
        ConfigError: the backend has no LM (``mock``).
    """
    if isinstance(backend, Coordinator):
        return routed_lm(backend)
    if has_lm(backend):
        return getattr(backend, "lm")  # noqa: B009 - a property that may build the LM
    raise ConfigError(
        f"{role}: backend {backend.name!r} has no language model (a mock backend): use a dspy or"
        " openai backend, or a coordinator group over them"
    )


# ------------------------------------------------------------------------------ optimizers


@dataclass(slots=True)
class OptimizerPlan:
    """The optimizer, built before anything is recorded, and what it was built with."""

    name: str
    settings: dict[str, Any]
    build: Callable[[], Any]
    compile: Callable[[Any, Any, list[Any], list[Any] | None], Any]
    compile_one: Callable[[Any, Any, list[Any], list[Any] | None, int], Any] | None = None
    """``bootstrap_random_search``: compile one candidate seed (see :func:`random_search`)."""


def plan(
    name: str,
    metric: Metric,
    *,
    max_demos: int,
    seed: int | None,
    settings: Settings,
    backends: Mapping[str, Backend],
) -> OptimizerPlan:
    import dspy

    opt = settings.optimize
    threads = opt.num_threads
    if name == "bootstrap_few_shot":
        chosen: dict[str, Any] = {
            "max_bootstrapped_demos": max_demos,
            "max_labeled_demos": max_demos,
        }
        return OptimizerPlan(
            name,
            chosen,
            lambda: dspy.BootstrapFewShot(metric=metric, **chosen),
            lambda o, student, train, val: o.compile(student, trainset=train),
        )
    if name == "bootstrap_random_search":
        chosen = {
            "max_bootstrapped_demos": max_demos,
            "max_labeled_demos": max_demos,
            "num_candidate_programs": opt.num_candidates,
            "num_threads": threads,
        }
        return OptimizerPlan(
            name,
            chosen,
            lambda: dspy.BootstrapFewShotWithRandomSearch(metric=metric, **chosen),
            lambda o, student, train, val: o.compile(student, trainset=train, valset=val),
            lambda o, student, train, val, seed: o.compile(
                student, trainset=train, valset=val, restrict=[seed]
            ),
        )
    if name == "mipro_v2":
        if importlib.util.find_spec("optuna") is None:
            raise ConfigError(
                "mipro_v2 searches with optuna, which is not installed:"
                " pip install 'dspex[optimize]'"
            )
        prompt = opt.prompt_backend or settings.default_backend
        prompt_lm = backend_lm(
            find_backend(backends, prompt, "[optimize] prompt_backend"), "mipro_v2"
        )
        chosen = {
            "max_bootstrapped_demos": max_demos,
            "max_labeled_demos": max_demos,
            "auto": opt.auto,
            "num_threads": threads,
            "seed": seed if seed is not None else 9,
            "prompt_backend": prompt,
        }
        compile_args: dict[str, Any] = {}
        if opt.auto is None:
            if opt.num_trials is None:
                raise ConfigError(
                    "mipro_v2 needs a budget: [optimize] auto, or num_trials (with num_candidates)"
                )
            chosen["num_candidates"] = opt.num_candidates
            chosen["num_trials"] = compile_args["num_trials"] = opt.num_trials
        kwargs = {k: v for k, v in chosen.items() if k not in ("prompt_backend", "num_trials")}
        return OptimizerPlan(
            name,
            chosen,
            lambda: dspy.MIPROv2(metric=metric, prompt_model=prompt_lm, verbose=False, **kwargs),
            lambda o, student, train, val: o.compile(
                student,
                trainset=train,
                valset=val,
                minibatch_size=min(_MINIBATCH, _mipro_valset_size(train, val)),
                **compile_args,
            ),
        )
    reflection = opt.reflection_backend or settings.default_backend
    reflection_lm = backend_lm(
        find_backend(backends, reflection, "[optimize] reflection_backend"), "gepa"
    )
    chosen = {"num_threads": threads, "seed": seed if seed is not None else 0}
    if opt.auto is not None:
        chosen["auto"] = opt.auto
    elif opt.max_metric_calls is not None:
        chosen["max_metric_calls"] = opt.max_metric_calls
    else:
        raise ConfigError("gepa needs a budget: [optimize] auto, or max_metric_calls")
    chosen["reflection_backend"] = reflection
    kwargs = {k: v for k, v in chosen.items() if k != "reflection_backend"}

    def gepa_metric(
        gold: Any, pred: Any, trace: Any = None, pred_name: Any = None, pred_trace: Any = None
    ) -> Any:
        return metric(gold, pred, trace)

    return OptimizerPlan(
        name,
        chosen,
        lambda: dspy.GEPA(
            metric=gepa_metric, reflection_lm=reflection_lm, track_stats=True, **kwargs
        ),
        lambda o, student, train, val: o.compile(student, trainset=train, valset=val),
    )


_MINIBATCH = 35  # MIPROv2's default minibatch, which must not exceed its validation set


def _mipro_valset_size(train: list[Any], val: list[Any] | None) -> int:
    """The size of the validation set MIPROv2 scores on: the one given, else the last 80% of
    the training set it splits off."""
    if val is not None:
        return len(val)
    return min(1000, max(1, int(len(train) * 0.8)))


FIRST_SEED = -3
"""``bootstrap_random_search``'s first candidate seed (-3 zero-shot, -2 labelled demos only, -1
unshuffled bootstrap, then one shuffled bootstrap per seed from 0)."""


def random_search(
    plan: OptimizerPlan,
    student: Any,
    train: list[Any],
    val: list[Any] | None,
    *,
    scored: Mapping[int, tuple[float, Any]],
    on_candidate: Callable[[int, float, list[float], Any], None],
) -> Any:
    """``dspy.BootstrapFewShotWithRandomSearch``, one candidate seed at a time, resumable.

    Each seed not in ``scored`` is compiled and scored by the optimizer itself, restricted to
    that seed (its public ``restrict`` argument), then reported with ``on_candidate(seed,
    score, subscores, program)`` (``score`` on DSPy's 0–100 scale) so it can be recorded; a
    seed in ``scored`` (``seed → (score, program)``, from a run that was interrupted) is not
    built or scored again. The best program is chosen as the optimizer chooses it (the first
    seed with the highest score) and carries every candidate in ``candidate_programs``, best
    first, as its result does.
    """
    assert plan.compile_one is not None
    best: Any = None
    best_score = 0.0
    entries: list[dict[str, Any]] = []
    for seed in range(FIRST_SEED, int(plan.settings["num_candidate_programs"])):
        subscores: list[float] = []
        if seed in scored:
            score, program = scored[seed]
        else:
            result = plan.compile_one(plan.build(), student, train, val, seed)
            (entry,) = result.candidate_programs
            score, program = float(entry["score"]), entry["program"]
            subscores = [score_value(s) for s in entry.get("subscores") or []]
            on_candidate(seed, score, subscores, program)
        if best is None or score > best_score:
            best, best_score = program, score
        entries.append({"score": score, "subscores": subscores, "seed": seed, "program": program})
    best.candidate_programs = sorted(entries, key=lambda e: e["score"], reverse=True)
    return best


def trials(name: str, compiled: Any) -> list[OptimizationTrial]:
    """The candidates the optimizer reports scoring (after the baseline), through the result's
    public attributes; scores on the 0–1 scale of the metric. (``bootstrap_random_search``'s
    are recorded one by one as :func:`random_search` scores them.)"""
    out: list[OptimizationTrial] = []
    if name == "mipro_v2":
        entries = [
            *(getattr(compiled, "candidate_programs", None) or []),
            *(getattr(compiled, "mb_candidate_programs", None) or []),
        ]
        for entry in entries:
            score = entry.get("score")
            out.append(
                OptimizationTrial(
                    0,
                    float(score) / 100 if isinstance(score, int | float) else None,
                    {"full_eval": bool(entry.get("full_eval"))},
                )
            )
    elif name == "gepa":
        results = getattr(compiled, "detailed_results", None)
        for index, score in enumerate(getattr(results, "val_aggregate_scores", None) or []):
            out.append(OptimizationTrial(0, float(score), {"candidate": index}))
    return out
