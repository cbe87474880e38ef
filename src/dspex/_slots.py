"""Faster construction of frozen, slotted dataclasses.

A batch builds a handful of records per item (the backend's request and result, the engine's
step and run results, the store's step, attempt and finish records). ``@dataclass(frozen=True)``
generates an ``__init__`` that stores every field through ``object.__setattr__``, since the class
refuses plain assignment; with ``slots=True`` each field is a slot whose descriptor can store
the value directly, in about half the time. :func:`fast_frozen_init` swaps in such an
``__init__``; nothing else about the class changes.
"""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

__all__ = ["fast_frozen_init"]

T = TypeVar("T")


class _Factory:
    """The default of a field with a ``default_factory`` (as in a dataclass's own signature)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<factory>"


_FACTORY = _Factory()


def fast_frozen_init(cls: type[T]) -> type[T]:
    """Give a ``@dataclass(frozen=True, slots=True)`` class an ``__init__`` that stores each
    field through its slot descriptor (apply it above the ``@dataclass`` decorator).

    The signature (order, keyword-only fields, defaults, default factories) is the generated
    one's; equality, hashing, ``repr`` and immutability after construction are untouched.

    Raises:
        TypeError: the class is not a frozen slotted dataclass, or it has ``init=False`` fields
            or a ``__post_init__`` (which this ``__init__`` would not honour).
    """
    params = getattr(cls, "__dataclass_params__", None)
    if params is None or not params.frozen or "__slots__" not in cls.__dict__:
        raise TypeError(f"{cls.__name__} is not a frozen, slotted dataclass")
    fields = dataclasses.fields(cls)  # type: ignore[arg-type]
    if any(not f.init for f in fields) or hasattr(cls, "__post_init__"):
        raise TypeError(f"{cls.__name__} has init=False fields or a __post_init__")
    namespace: dict[str, Any] = {"_FACTORY": _FACTORY}
    positional: list[str] = []
    keyword: list[str] = []
    body: list[str] = []
    for f in fields:
        name = f.name
        namespace[f"_set_{name}"] = cls.__dict__[name].__set__
        if f.default is not dataclasses.MISSING:
            namespace[f"_default_{name}"] = f.default
            param = f"{name}=_default_{name}"
            value = name
        elif f.default_factory is not dataclasses.MISSING:
            namespace[f"_factory_{name}"] = f.default_factory
            param = f"{name}=_FACTORY"
            value = f"_factory_{name}() if {name} is _FACTORY else {name}"
        else:
            param = value = name
        (keyword if f.kw_only else positional).append(param)
        body.append(f"    _set_{name}(self, {value})")
    params_text = ", ".join(["self", *positional, *(["*", *keyword] if keyword else [])])
    source = f"def __init__({params_text}):\n" + ("\n".join(body) or "    pass") + "\n"
    exec(source, namespace)
    init = namespace["__init__"]
    original = cls.__init__
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    init.__module__ = cls.__module__
    init.__doc__ = original.__doc__
    init.__annotations__ = dict(original.__annotations__)
    cls.__init__ = init  # type: ignore[method-assign]
    return cls
