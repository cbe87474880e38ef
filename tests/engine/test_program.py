"""Program specs (shape errors with paths, files, round trips) and plan analysis."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from engine_specs import predict, program

from dspex.engine.program import Program
from dspex.engine.spec import FailureTolerance
from dspex.errors import NotFoundError, SpecError


def test_shape_errors_are_all_reported_with_paths() -> None:
    spec = {
        "name": "p",
        "signature": "q: str -> y: str",
        "modules": {
            "a": {"kind": "predictt", "signature": "q: str -> y: str"},
            "b": {"kind": "predict", "signature": "q: str -> y: str", "timeout": -1},
            "c": {"kind": "python", "signature": "q: str -> y: str"},
            "d": {"kind": "predict", "signature": "q: str -> y: str", "typo": 1},
        },
        "strategy": "fastest",
    }
    with pytest.raises(SpecError) as info:
        Program.from_dict(spec)
    fields = {e.field for e in info.value.errors}
    assert fields == {
        "modules.a.kind",
        "modules.b.timeout",
        "modules.c",
        "modules.d.typo",
        "strategy",
    }


def test_bad_signatures_are_spec_errors_with_paths() -> None:
    spec = program({"a": predict("q: str ->")}, signature="q: blob -> y: str")
    with pytest.raises(SpecError) as info:
        Program.from_dict(spec)
    assert {e.field.split(".")[0] for e in info.value.errors} == {"signature", "modules"}


def test_modules_may_be_a_list_with_names() -> None:
    spec = program([{"name": "a", **predict("q: str -> y: str")}])
    assert Program.from_dict(spec).plan().order == ("a",)


@pytest.mark.parametrize(
    ("written", "mode", "threshold"),
    [
        ("strict", "strict", 0),
        ("tolerant", "tolerant", 0),
        ({"threshold": 2}, "threshold", 2),
        ("threshold: 3", "threshold", 3),
    ],
)
def test_failure_tolerance_short_forms(written: object, mode: str, threshold: int) -> None:
    p = Program.from_dict(program({"a": predict("q: str -> y: str")}, failure_tolerance=written))
    assert p.spec.failure_tolerance == FailureTolerance(mode=mode, threshold=threshold)


def test_to_dict_round_trips() -> None:
    spec = program(
        {"a": predict("q: str -> y: str", retry=3, timeout=2.0, after=[])},
        failure_tolerance={"threshold": 1},
        strategy="parallel",
    )
    p = Program.from_dict(spec)
    assert Program.from_dict(p.to_dict()) == p
    assert p.to_dict()["failure_tolerance"] == {"threshold": 1}


def test_from_file_reads_yaml_and_json(tmp_path: Path) -> None:
    spec = program({"a": predict("q: str -> y: str")})
    (tmp_path / "p.json").write_text(json.dumps(spec))
    (tmp_path / "p.yaml").write_text(
        "name: p\nsignature: 'q: str -> y: str'\nmodules:\n"
        "  a: {kind: predict, signature: 'q: str -> y: str'}\n"
    )
    assert Program.from_file(tmp_path / "p.json") == Program.from_file(tmp_path / "p.yaml")
    assert Program.from_file(tmp_path / "p.yaml").base_dir == tmp_path.resolve()


def test_from_file_errors(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError):
        Program.from_file(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("name: [unclosed")
    with pytest.raises(SpecError):
        Program.from_file(tmp_path / "bad.yaml")


# a(10) -> c(30); b(5) -> c; c -> d(1); e(2) is alone
PLAN = program(
    {
        "a": predict("q: str -> a1: str", estimated_ms=10),
        "b": predict("q: str -> b1: str", estimated_ms=5),
        "c": predict(
            "a1: str, b1: str -> c1: str", inputs={"a1": "a.a1", "b1": "b.b1"}, estimated_ms=30
        ),
        "d": predict("c1: str -> y: str", inputs={"c1": "c.c1"}, estimated_ms=1),
        "e": predict("q: str -> e1: str", estimated_ms=2),
    }
)


def test_plan_levels_width_and_order() -> None:
    plan = Program.from_dict(PLAN).plan()
    assert plan.levels == (("a", "b", "e"), ("c",), ("d",))
    assert plan.width == 3
    order = plan.order
    assert order.index("a") < order.index("c") < order.index("d")


def test_plan_critical_path_slack_and_makespan() -> None:
    plan = Program.from_dict(PLAN).plan()
    assert plan.critical_path == ("a", "c", "d")
    assert plan.estimated_makespan == 41.0
    assert plan.slack == {"a": 0.0, "b": 5.0, "c": 0.0, "d": 0.0, "e": 39.0}


def test_recorded_durations_override_estimates() -> None:
    plan = Program.from_dict(PLAN).plan({"b": 50.0})
    assert plan.critical_path == ("b", "c", "d")
    assert plan.slack["a"] == 40.0
    assert plan.duration_sources["b"] == "recorded"
    assert plan.duration_sources["e"] == "spec"
    assert plan.to_dict()["duration_sources"] == dict(plan.duration_sources)


def test_a_module_without_estimate_or_history_plans_with_the_kind_default() -> None:
    plan = Program.from_dict(program({"a": predict("q: str -> y: str")})).plan()
    assert plan.durations_ms["a"] == 500.0
    assert plan.duration_sources["a"] == "default"


def test_plan_of_a_long_chain_is_linear() -> None:
    n = 3000
    modules = {
        f"m{i}": predict("x: str -> y: str", inputs={"x": f"m{i - 1}.y" if i else "$input.q"})
        for i in range(n)
    }
    plan = Program.from_dict(program(modules, outputs={"y": f"m{n - 1}.y"})).plan()
    assert len(plan.levels) == n
    assert len(plan.critical_path) == n
    assert plan.width == 1
