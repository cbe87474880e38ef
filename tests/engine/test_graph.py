"""Graph validation: every problem reported, cycles named, defaults resolved."""

from __future__ import annotations

import pytest
from engine_specs import predict, program

from dspex.engine.program import Program
from dspex.errors import GraphCycleError, GraphError


def _problems(spec: dict) -> list[tuple[str, str]]:
    with pytest.raises(GraphError) as info:
        Program.from_dict(spec).plan()
    return [(e.field, e.code) for e in info.value.errors]


def _cycle(spec: dict) -> list[str]:
    with pytest.raises(GraphCycleError) as info:
        Program.from_dict(spec).plan()
    assert info.value.code == "graph_cycle"
    return info.value.cycle


def test_self_loop_is_named_as_a_cycle() -> None:
    spec = program({"a": predict("x: str -> y: str", inputs={"x": "a.y"})})
    assert _cycle(spec) == ["a", "a"]


def test_two_cycle_is_named_in_data_flow_order() -> None:
    spec = program(
        {
            "a": predict("x: str -> y: str", inputs={"x": "b.y"}),
            "b": predict("x: str -> y: str", inputs={"x": "a.y"}),
        },
        outputs={"y": "a.y"},
    )
    assert _cycle(spec) == ["a", "b", "a"]


def test_long_cycle_is_named_with_every_module() -> None:
    spec = program(
        {
            "a": predict("x: str -> y: str", inputs={"x": "c.y"}),
            "b": predict("x: str -> y: str", inputs={"x": "a.y"}),
            "c": predict("x: str -> y: str", inputs={"x": "b.y"}),
            "d": predict("x: str -> z: str", inputs={"x": "$input.q"}),
        },
        outputs={"y": "c.y"},
    )
    assert _cycle(spec) == ["a", "b", "c", "a"]
    with pytest.raises(GraphCycleError, match=r"a -> b -> c -> a"):
        Program.from_dict(spec).plan()


def test_cycle_through_after_is_detected() -> None:
    spec = program(
        {
            "a": predict("q: str -> y: str", after=["b"]),
            "b": predict("q: str -> z: str", after=["a"]),
        }
    )
    assert _cycle(spec) == ["a", "b", "a"]


def test_cycle_error_still_lists_other_problems() -> None:
    spec = program(
        {
            "a": predict("x: str -> y: str", inputs={"x": "a.y"}),
            "b": predict("x: str -> w: str", inputs={"x": "nope.y"}),
        }
    )
    with pytest.raises(GraphCycleError) as info:
        Program.from_dict(spec).plan()
    codes = {e.code for e in info.value.errors}
    assert {"graph_cycle", "unknown_module"} <= codes


def test_every_reference_problem_is_reported_at_once() -> None:
    spec = program(
        {
            "a": predict("x: str -> y: str", inputs={"x": "ghost.y"}),
            "b": predict("x: str -> y2: str", inputs={"x": "a.nothing"}),
            "c": predict("x: str -> y3: str", inputs={"x": "$input.missing", "extra": "a.y"}),
            "d": predict("x: str -> y4: str", inputs={"x": "not a reference"}),
            "e": predict("w: str -> y5: str", after=["phantom"]),
        },
        outputs={"y": "a.y", "bogus": "a.y"},
    )
    assert _problems(spec) == [
        ("modules.a.inputs.x", "unknown_module"),
        ("modules.b.inputs.x", "unknown_field"),
        ("modules.c.inputs.x", "unknown_field"),
        ("modules.c.inputs.extra", "unknown_field"),
        ("modules.d.inputs.x", "invalid_reference"),
        ("modules.e.inputs.w", "missing_input"),
        ("modules.e.after.0", "unknown_module"),
        ("outputs.bogus", "unknown_output"),
    ]


def test_type_mismatch_between_producer_and_consumer_is_reported() -> None:
    spec = program(
        {
            "a": predict("q: str -> n: float"),
            "b": predict("n: int -> y: str", inputs={"n": "a.n"}),
        }
    )
    with pytest.raises(GraphError) as info:
        Program.from_dict(spec).plan()
    (error,) = info.value.errors
    assert (error.field, error.code) == ("modules.b.inputs.n", "type_mismatch")
    assert "a.n gives float but 'n' takes int" in error.message


def test_optional_producer_cannot_feed_a_required_input() -> None:
    spec = program(
        {
            "a": predict("q: str -> n: optional[int]"),
            "b": predict("n: int -> y: str", inputs={"n": "a.n"}),
        }
    )
    assert _problems(spec) == [("modules.b.inputs.n", "type_mismatch")]


def test_widening_edge_is_accepted() -> None:
    spec = program(
        {
            "a": predict("q: str -> n: int"),
            "b": predict("n: float -> y: str", inputs={"n": "a.n"}),
        }
    )
    assert Program.from_dict(spec).plan().order == ("a", "b")


def test_unmapped_input_defaults_to_the_program_input_of_that_name() -> None:
    p = Program.from_dict(program({"a": predict("q: str -> y: str")}))
    (binding,) = p.graph.bindings[0]
    assert (binding.field, binding.source_field) == ("q", "q")
    assert p.graph.outputs[0].source == 0


def test_unmapped_input_that_a_module_also_produces_is_ambiguous() -> None:
    spec = program(
        {
            "a": predict("x: str -> q: str", inputs={"x": "$input.q"}),
            "b": predict("q: str -> y: str"),
        }
    )
    assert _problems(spec) == [("modules.b.inputs.q", "ambiguous_input")]


def test_optional_module_input_may_stay_unmapped() -> None:
    p = Program.from_dict(program({"a": predict("q: str, hint: optional[str] -> y: str")}))
    assert [b.field for b in p.graph.bindings[0]] == ["q"]


def test_program_output_produced_by_several_modules_must_be_mapped() -> None:
    spec = program({"a": predict("q: str -> y: str"), "b": predict("q: str -> y: str")})
    assert _problems(spec) == [("outputs.y", "unmapped_output")]


def test_program_output_nobody_produces_is_unmapped() -> None:
    spec = program({"a": predict("q: str -> z: str")})
    assert _problems(spec) == [("outputs.y", "unmapped_output")]


def test_chain_of_thought_exposes_its_reasoning_to_other_modules() -> None:
    spec = program(
        {
            "a": {"kind": "chain_of_thought", "signature": "q: str -> z: str"},
            "b": predict("why: str -> y: str", inputs={"why": "a.reasoning"}),
        }
    )
    assert Program.from_dict(spec).graph.deps[1] == (0,)


def test_validate_returns_problems_without_raising() -> None:
    spec = program({"a": predict("q: str -> z: str")})
    assert [e.code for e in Program.from_dict(spec).validate()] == ["unmapped_output"]
    assert Program.from_dict(program({"a": predict("q: str -> y: str")})).validate() == []
