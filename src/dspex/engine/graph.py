"""The program graph: built from a spec and validated once, before any run.

Nodes are modules (addressed by index internally, by name outside); an edge ``p -> c`` means ``c``
needs ``p`` finished, because one of ``c``'s inputs reads ``p.FIELD`` or because ``c`` lists ``p``
in ``after``. Validation collects every problem before raising:

==================  ===========================================================================
code                problem
==================  ===========================================================================
invalid_reference   a reference is neither ``$input.FIELD`` nor ``MODULE.FIELD``
unknown_module      a reference or ``after`` names a module that does not exist
unknown_field       a reference names a field the module (or the program input) does not have,
                    or ``inputs`` maps a field the module does not take
missing_input       a required module input is not mapped and has no default
ambiguous_input     an unmapped input could come from the program input and from a module
type_mismatch       a producer's output type cannot feed the consumer's input type
graph_cycle         the modules form a cycle (named: ``a -> b -> c -> a``)
unknown_output      ``outputs`` maps a field the program signature does not declare
unmapped_output     a program output is not mapped and no single module produces it
==================  ===========================================================================

Raises :class:`~dspex.errors.GraphCycleError` when any cycle exists (``errors`` still lists every
problem), :class:`~dspex.errors.GraphError` otherwise.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from dspex.engine.spec import ModuleSpec
from dspex.errors import ErrorDetail, GraphCycleError, GraphError
from dspex.signatures.compat import is_assignable
from dspex.signatures.parse import format_type
from dspex.signatures.signature import Signature
from dspex.signatures.types import FieldSpec, OptionalType, Scalar, TypeNode

__all__ = ["INPUT", "Binding", "Graph", "build_graph", "module_outputs"]

INPUT = -1
"""The pseudo module index of the program's own inputs (``$input``)."""

_INPUT_PREFIX = "$input"
_REASONING = FieldSpec("reasoning", Scalar("str"), description="the model's reasoning")
_MAX_CYCLES_REPORTED = 20
_Where = str | tuple[str, ...]


class Binding(NamedTuple):
    """Where one value comes from: ``source`` is a module index or :data:`INPUT`."""

    field: str
    source: int
    source_field: str


@dataclass(frozen=True, slots=True, eq=False)
class Graph:
    """A validated, immutable program graph (index based for speed).

    Attributes:
        names: module names in spec order; a module's index is its position here.
        index: module name → index.
        deps: per module, the indices it waits for (no duplicates).
        dependents: per module, the indices waiting for it.
        bindings: per module, where each of its inputs comes from.
        outputs: where each program output comes from (``field`` is the program output name).
        topo: a topological order of all indices (dependencies first).
    """

    names: tuple[str, ...]
    index: Mapping[str, int]
    deps: tuple[tuple[int, ...], ...]
    dependents: tuple[tuple[int, ...], ...]
    bindings: tuple[tuple[Binding, ...], ...]
    outputs: tuple[Binding, ...]
    topo: tuple[int, ...]

    def __len__(self) -> int:
        return len(self.names)

    def edges(self) -> list[tuple[str, str]]:
        """Every edge as ``(producer, consumer)`` names."""
        return [(self.names[d], self.names[i]) for i, deps in enumerate(self.deps) for d in deps]


def module_outputs(spec: ModuleSpec, signature: Signature) -> dict[str, FieldSpec]:
    """The fields a module makes available to others (``chain_of_thought`` adds ``reasoning``)."""
    fields = {f.name: f for f in signature.output_fields}
    if spec.kind == "chain_of_thought" and "reasoning" not in fields:
        fields["reasoning"] = _REASONING
    return fields


def build_graph(
    program_signature: Signature,
    modules: Mapping[str, ModuleSpec],
    signatures: Mapping[str, Signature],
    outputs: Mapping[str, str],
) -> Graph:
    """Build and validate the graph of a program.

    Args:
        program_signature: the program's external signature.
        modules: module specs by name, in spec order.
        signatures: each module's parsed signature.
        outputs: the program's output mapping as written in the spec.

    Raises:
        GraphCycleError: the modules form at least one cycle.
        GraphError: any other problem; ``errors`` lists them all.
    """
    return _Builder(program_signature, modules, signatures).build(outputs)


class _Builder:
    def __init__(
        self,
        program_signature: Signature,
        modules: Mapping[str, ModuleSpec],
        signatures: Mapping[str, Signature],
    ) -> None:
        self.names = tuple(modules)
        self.index = {name: i for i, name in enumerate(self.names)}
        self.modules = modules
        self.signatures = signatures
        self.program_inputs = {f.name: f for f in program_signature.input_fields}
        self.program_outputs = {f.name: f for f in program_signature.output_fields}
        self.produced: list[dict[str, FieldSpec]] = [
            module_outputs(modules[name], signatures[name]) for name in self.names
        ]
        self.errors: list[ErrorDetail] = []
        self._producers: dict[str, list[int]] | None = None
        # Modules share signature objects (parsing is cached), so per-signature facts and
        # per-field-pair type checks are computed once, keyed by identity.
        self._inputs_of: dict[int, dict[str, FieldSpec]] = {}
        self._compatible: dict[tuple[int, int], bool] = {}

    def producers(self, field: str) -> list[int]:
        if self._producers is None:
            table: dict[str, list[int]] = {}
            for i, fields in enumerate(self.produced):
                for name in fields:
                    table.setdefault(name, []).append(i)
            self._producers = table
        return self._producers.get(field, [])

    def build(self, outputs: Mapping[str, str]) -> Graph:
        deps: list[tuple[int, ...]] = []
        bindings: list[tuple[Binding, ...]] = []
        for i, name in enumerate(self.names):
            module_bindings, module_deps = self._module(i, name)
            bindings.append(module_bindings)
            deps.append(module_deps)
        output_bindings = self._outputs(outputs)
        dependents: list[list[int]] = [[] for _ in self.names]
        for i, module_deps in enumerate(deps):
            for d in module_deps:
                dependents[d].append(i)
        topo, cycles = _toposort(deps, dependents)
        for cycle in cycles:
            named = [self.names[i] for i in cycle]
            self.errors.append(
                ErrorDetail(f"modules.{named[0]}", "graph_cycle", "cycle: " + " -> ".join(named))
            )
        if cycles:
            first = [self.names[i] for i in cycles[0]]
            raise GraphCycleError(first, errors=self.errors)
        if self.errors:
            raise GraphError(_summary(self.errors), self.errors)
        return Graph(
            names=self.names,
            index=self.index,
            deps=tuple(deps),
            dependents=tuple(tuple(d) for d in dependents),
            bindings=tuple(bindings),
            outputs=output_bindings,
            topo=topo,
        )

    def _module(self, i: int, name: str) -> tuple[tuple[Binding, ...], tuple[int, ...]]:
        spec = self.modules[name]
        signature = self.signatures[name]
        wanted = self._inputs_of.get(id(signature))
        if wanted is None:
            wanted = {f.name: f for f in signature.input_fields}
            self._inputs_of[id(signature)] = wanted
        found: dict[int, None] = {}  # ordered set of dependencies
        bindings: list[Binding] = []
        mapped = 0
        for field, ref in spec.inputs.items():
            target = wanted.get(field)
            if target is None:
                self._error(
                    ("modules", name, "inputs", field),
                    "unknown_field",
                    f"module {name!r} has no input {field!r}",
                )
                continue
            mapped += 1
            binding = self._resolve(("modules", name, "inputs", field), field, ref, target)
            if binding is not None:
                bindings.append(binding)
                if binding.source != INPUT:
                    found[binding.source] = None
        if mapped < len(wanted):
            for field, target in wanted.items():
                if field not in spec.inputs:
                    where = ("modules", name, "inputs", field)
                    binding = self._default_input(where, name, target)
                    if binding is not None:
                        bindings.append(binding)
        for position, other in enumerate(spec.after):
            j = self.index.get(other)
            if j is None:
                self._error(
                    ("modules", name, "after", str(position)),
                    "unknown_module",
                    f"no module {other!r}",
                )
            else:
                found[j] = None
        return tuple(bindings), tuple(found)

    def _default_input(self, where: _Where, name: str, target: FieldSpec) -> Binding | None:
        field = target.name
        in_program = field in self.program_inputs
        producers = [j for j in self.producers(field) if self.names[j] != name]
        if in_program and producers:
            others = ", ".join(f"{self.names[j]}.{field}" for j in producers[:3])
            self._error(
                where,
                "ambiguous_input",
                f"input {field!r} of {name!r} is not mapped and could be $input.{field} or "
                f"{others}; map it explicitly",
            )
            return None
        if in_program:
            source = self.program_inputs[field]
            self._check_types(where, f"$input.{field}", source, target)
            return Binding(field, INPUT, field)
        if not target.optional:
            self._error(
                where,
                "missing_input",
                f"input {field!r} of {name!r} is not mapped (use $input.FIELD or MODULE.FIELD)",
            )
        return None

    def _resolve(self, where: _Where, field: str, ref: str, target: FieldSpec) -> Binding | None:
        head, dot, tail = ref.partition(".")
        if not dot or not head or not tail or "." in tail:
            self._error(where, "invalid_reference", f"{ref!r} is not $input.FIELD or MODULE.FIELD")
            return None
        if head == _INPUT_PREFIX:
            source = self.program_inputs.get(tail)
            if source is None:
                self._error(where, "unknown_field", f"the program has no input {tail!r}")
                return None
            self._check_types(where, ref, source, target)
            return Binding(field, INPUT, tail)
        j = self.index.get(head)
        if j is None:
            self._error(where, "unknown_module", f"{ref!r} refers to no module {head!r}")
            return None
        produced = self.produced[j].get(tail)
        if produced is None:
            self._error(where, "unknown_field", f"module {head!r} has no output {tail!r}")
            return None
        self._check_types(where, ref, produced, target)
        return Binding(field, j, tail)

    def _check_types(self, where: _Where, ref: str, source: FieldSpec, target: FieldSpec) -> None:
        key = (id(source), id(target))
        ok = self._compatible.get(key)
        if ok is None:
            ok = self._compatible[key] = is_assignable(_effective(source), _effective(target))
        if not ok:
            src = _effective(source)
            dst = _effective(target)
            self._error(
                where,
                "type_mismatch",
                f"{ref} gives {format_type(src)} but {target.name!r} takes {format_type(dst)}",
            )

    def _outputs(self, outputs: Mapping[str, str]) -> tuple[Binding, ...]:
        bindings: list[Binding] = []
        for field, ref in outputs.items():
            where = f"outputs.{field}"
            target = self.program_outputs.get(field)
            if target is None:
                self._error(
                    where, "unknown_output", f"the program signature has no output {field!r}"
                )
                continue
            binding = self._resolve(where, field, ref, target)
            if binding is not None:
                bindings.append(binding)
        for field, target in self.program_outputs.items():
            if field in outputs:
                continue
            producers = self.producers(field)
            if len(producers) == 1:
                j = producers[0]
                self._check_types(
                    f"outputs.{field}", f"{self.names[j]}.{field}", self.produced[j][field], target
                )
                bindings.append(Binding(field, j, field))
                continue
            why = (
                "no module outputs it"
                if not producers
                else (
                    "several modules output it ("
                    + ", ".join(self.names[j] for j in producers[:3])
                    + ")"
                )
            )
            self._error(
                f"outputs.{field}",
                "unmapped_output",
                f"program output {field!r} is not mapped and {why}; map it to MODULE.FIELD",
            )
        return tuple(bindings)

    def _error(self, where: _Where, code: str, message: str) -> None:
        # Paths are built only here, on the error path: a valid graph never formats them.
        field = where if isinstance(where, str) else ".".join(where)
        self.errors.append(ErrorDetail(field, code, message))


def _effective(field: FieldSpec) -> TypeNode:
    """The type including absence: an optional field may be ``None``."""
    if field.optional and not isinstance(field.type, OptionalType):
        return OptionalType(field.type)
    return field.type


def _summary(errors: Sequence[ErrorDetail]) -> str:
    head = "; ".join(f"{e.field}: {e.message}" for e in errors[:3])
    more = f" (and {len(errors) - 3} more)" if len(errors) > 3 else ""
    plural = "s" if len(errors) != 1 else ""
    return f"invalid program graph ({len(errors)} problem{plural}): {head}{more}"


def _toposort(
    deps: Sequence[Sequence[int]], dependents: Sequence[Sequence[int]]
) -> tuple[tuple[int, ...], list[list[int]]]:
    """Kahn's algorithm; when it stalls, the leftover nodes hold the cycles, which are named."""
    n = len(deps)
    waiting = [len(d) for d in deps]
    queue = deque(i for i in range(n) if waiting[i] == 0)
    order: list[int] = []
    append = order.append
    while queue:
        i = queue.popleft()
        append(i)
        for c in dependents[i]:
            waiting[c] -= 1
            if waiting[c] == 0:
                queue.append(c)
    if len(order) == n:
        return tuple(order), []
    leftover = {i for i in range(n) if waiting[i] > 0}
    return tuple(order), _find_cycles(leftover, dependents)


def _find_cycles(nodes: set[int], dependents: Sequence[Sequence[int]]) -> list[list[int]]:
    """One named cycle per back edge found by an iterative DFS, in data-flow direction."""
    state: dict[int, int] = {}  # 1 = on the stack, 2 = finished
    cycles: list[list[int]] = []
    seen: set[frozenset[int]] = set()
    for root in sorted(nodes):
        if root in state:
            continue
        stack: list[tuple[int, int]] = [(root, 0)]
        path: list[int] = [root]
        state[root] = 1
        while stack:
            node, pos = stack[-1]
            succ = [c for c in dependents[node] if c in nodes]
            if pos < len(succ):
                stack[-1] = (node, pos + 1)
                nxt = succ[pos]
                mark = state.get(nxt)
                if mark is None:
                    state[nxt] = 1
                    stack.append((nxt, 0))
                    path.append(nxt)
                elif mark == 1:
                    cycle = path[path.index(nxt) :]
                    key = frozenset(cycle)
                    if key not in seen and len(cycles) < _MAX_CYCLES_REPORTED:
                        seen.add(key)
                        start = cycle.index(min(cycle))  # start at the first module in spec order
                        rotated = cycle[start:] + cycle[:start]
                        cycles.append([*rotated, rotated[0]])
            else:
                state[node] = 2
                stack.pop()
                path.pop()
    return cycles
