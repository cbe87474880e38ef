"""Type compatibility of graph edges: which producer types may feed which consumer types."""

from __future__ import annotations

import pytest
from pydantic import BaseModel

from dspex.signatures.compat import is_assignable
from dspex.signatures.parse import parse_type
from dspex.signatures.types import ModelType


class Base(BaseModel):
    a: int


class Child(Base):
    b: str


@pytest.mark.parametrize(
    ("src", "dst"),
    [
        ("str", "str"),
        ("int", "float"),
        ("probability", "float"),
        ("confidence_score", "float"),
        ("probability", "confidence_score"),
        ("int", "optional[int]"),
        ("optional[int]", "optional[float]"),
        ("str", "str | int"),
        ("int | str", "str | float"),
        ("list[int]", "list[float]"),
        ("dict[str, int]", "dict[str, float]"),
        ("Literal['a', 'b']", "str"),
        ("Literal['a']", "Literal['a', 'b']"),
        ("Literal[1, 2]", "float"),
        ("embedding", "list[float]"),
        ("embedding[3]", "embedding"),
        ("reasoning_chain", "list[str]"),
        ("list[str]", "reasoning_chain"),
        ("list[probability]", "list[float]"),
    ],
)
def test_producer_type_feeds_consumer_type(src: str, dst: str) -> None:
    assert is_assignable(parse_type(src), parse_type(dst))


@pytest.mark.parametrize(
    ("src", "dst"),
    [
        ("float", "int"),
        ("bool", "int"),
        ("int", "str"),
        ("float", "probability"),
        ("optional[int]", "int"),
        ("int | str", "int"),
        ("list[float]", "list[int]"),
        ("list[float]", "embedding"),
        ("embedding", "list[int]"),
        ("embedding", "embedding[3]"),
        ("embedding[4]", "embedding[3]"),
        ("Literal['a', 1]", "str"),
        ("Literal['a', 'c']", "Literal['a', 'b']"),
        ("Literal[True]", "int"),
        ("Literal[True]", "Literal[1]"),
        ("str", "list[str]"),
        ("reasoning_chain", "str"),
        ("dict[str, int]", "dict[int, int]"),
        ("list[str]", "dict[str, str]"),
        ("str", "probability"),
    ],
)
def test_producer_type_cannot_feed_consumer_type(src: str, dst: str) -> None:
    assert not is_assignable(parse_type(src), parse_type(dst))


def test_literal_of_booleans_feeds_bool() -> None:
    assert is_assignable(parse_type("Literal[True, False]"), parse_type("bool"))


def test_model_feeds_its_base_class_but_not_the_reverse() -> None:
    assert is_assignable(ModelType(Child), ModelType(Base))
    assert not is_assignable(ModelType(Base), ModelType(Child))
    assert not is_assignable(parse_type("dict[str, int]"), ModelType(Base))
