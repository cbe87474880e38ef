"""validate_signature: levels, steps, problems, and the report's exact shape."""

from __future__ import annotations

import pytest

from dspex.actions.validate_signature import (
    ValidationReport,
    estimate_cost,
    measure_complexity,
    validate_signature,
)
from dspex.errors import ConfigError
from dspex.signatures.signature import Signature

GOOD = "question: str 'the user question', k: int -> answer: str, confidence: probability"
STANDARD_STEPS = ["parse", "structure", "names", "types", "constraints"]
COMPREHENSIVE_STEPS = [*STANDARD_STEPS, "backend_compatibility", "schema_export", "dspy_roundtrip"]
DEEP_STEPS = [*COMPREHENSIVE_STEPS, "samples", "complexity", "cost_estimate"]


def test_a_good_signature_is_valid_at_standard_level() -> None:
    report = validate_signature(GOOD)
    assert report.valid
    assert report.level == "standard"
    assert [s.name for s in report.steps] == STANDARD_STEPS
    assert all(s.passed for s in report.steps)
    assert report.problems == []


def test_standard_report_dumps_exactly_the_documented_keys() -> None:
    data = validate_signature(GOOD).model_dump()
    assert set(data) == {"valid", "level", "steps", "problems"}
    assert set(data["steps"][0]) == {"name", "passed", "problems"}


def test_deep_report_adds_complexity_and_cost_estimate() -> None:
    report = validate_signature(GOOD, level="deep")
    data = report.model_dump()
    assert set(data) == {"valid", "level", "steps", "problems", "complexity", "cost_estimate"}
    assert [s.name for s in report.steps] == DEEP_STEPS
    assert report.valid, report.problems
    assert data["cost_estimate"]["method"] == "dspy_chat_adapter"
    assert data["cost_estimate"]["prompt_tokens"] > 20


def test_comprehensive_level_runs_backend_schema_and_dspy_steps() -> None:
    report = validate_signature(Signature.parse(GOOD), level="comprehensive")
    assert [s.name for s in report.steps] == COMPREHENSIVE_STEPS
    assert report.valid, report.problems


def test_a_string_that_does_not_parse_gives_an_invalid_report_not_an_exception() -> None:
    report = validate_signature("question answer")
    assert not report.valid
    assert report.step("parse").passed is False
    assert report.problems[0].code == "missing_arrow"


def test_problems_are_grouped_into_their_steps_and_all_collected() -> None:
    report = validate_signature(
        {
            "inputs": {"class": "int", "items": "str", "q": {"type": "int", "pattern": "x"}},
            "outputs": {"q": "list[foo]"},
        }
    )
    assert not report.valid
    by_step = {s.name: sorted(p.code for p in s.problems) for s in report.steps}
    assert by_step["names"] == ["duplicate_name", "keyword_name", "reserved_name"]
    assert by_step["types"] == ["unknown_type"]
    assert by_step["constraints"] == ["constraint_not_applicable"]
    assert len(report.problems) == sum(len(s.problems) for s in report.steps)


def test_standard_level_flags_constraints_that_do_not_fit() -> None:
    report = validate_signature(
        {
            "signature": "a: str, b: int -> c: list[int]",
            "constraints": {
                "a": {"min_items": 1},
                "b": {"minimum": 5, "maximum": 1},
                "c": {"dim": 3},
            },
        }
    )
    problems = {(p.field, p.code) for p in report.step("constraints").problems}
    assert problems == {
        ("a", "constraint_not_applicable"),
        ("b", "constraint_conflict"),
        ("c", "constraint_not_applicable"),
    }


def test_no_outputs_fails_the_structure_step() -> None:
    report = validate_signature("a ->")
    assert [p.code for p in report.step("structure").problems] == ["no_outputs"]


def test_later_steps_are_not_run_when_the_signature_cannot_be_built() -> None:
    report = validate_signature("a: foo -> b", level="deep")
    for name in DEEP_STEPS[5:]:
        step = report.step(name)
        assert not step.passed
        assert step.problems[0].code == "not_run"
    assert report.complexity is None
    assert report.cost_estimate is None


def test_the_checks_after_a_failed_parse_are_not_run_rather_than_passed() -> None:
    report = validate_signature("question: str -> -> answer")
    assert [p.code for p in report.step("parse").problems] == ["syntax"]
    for name in ("structure", "names", "types", "constraints"):
        step = report.step(name)
        assert not step.passed
        assert [p.code for p in step.problems] == ["not_run"]


def test_a_signature_that_parses_runs_every_standard_check() -> None:
    report = validate_signature("question: str -> answer: strr")
    assert report.step("parse").passed
    assert report.step("structure").passed
    assert [p.code for p in report.step("types").problems] == ["unknown_type"]
    assert all(p.code != "not_run" for p in report.problems)


def test_unknown_levels_are_a_config_error() -> None:
    with pytest.raises(ConfigError, match="unknown validation level"):
        validate_signature(GOOD, level="thorough")


def test_other_objects_are_reported_as_invalid_specs() -> None:
    report = validate_signature(42)  # type: ignore[arg-type]
    assert not report.valid
    assert report.problems[0].code == "invalid_spec"


def test_unsatisfiable_constraints_fail_the_samples_step() -> None:
    sig = Signature.parse("q -> a: str", constraints={"a": {"pattern": "^x$", "min_length": 2}})
    report = validate_signature(sig, level="deep")
    assert not report.step("samples").passed


def test_openai_incompatible_dicts_still_pass_schema_export() -> None:
    report = validate_signature("q -> scores: dict[str, float]", level="comprehensive")
    assert report.step("schema_export").passed


def test_complexity_rates_nested_signatures_higher() -> None:
    flat = measure_complexity(Signature.parse("a -> b"))
    nested = measure_complexity(
        Signature.parse("a: list[dict[str, list[dict[str, list[int | str]]]]] -> b: int | str")
    )
    assert flat.rating == "low"
    assert flat.max_depth == 1
    assert nested.max_depth == 7
    assert nested.unions == 2
    assert nested.rating == "high"


def test_a_too_complex_signature_fails_the_complexity_step() -> None:
    sig = Signature.parse("a: list[list[list[list[list[list[int]]]]]] -> b")
    report = validate_signature(sig, level="deep")
    assert [p.code for p in report.step("complexity").problems] == ["too_complex"]


def test_cost_estimate_grows_with_the_signature() -> None:
    small = estimate_cost(Signature.parse("q -> a"))
    big = estimate_cost(
        Signature.parse(
            "q: str 'a long description of the question', c: list[str] -> a, b: int, d: probability"
        )
    )
    assert big.prompt_tokens > small.prompt_tokens
    assert small.total_tokens == small.prompt_tokens + small.completion_tokens


def test_report_step_lookup_raises_for_unknown_steps() -> None:
    with pytest.raises(KeyError):
        validate_signature(GOOD).step("samples")


def test_report_is_exported_from_the_package() -> None:
    import dspex

    assert dspex.validate_signature is validate_signature
    assert dspex.ValidationReport is ValidationReport
