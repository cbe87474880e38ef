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


@dataclass(frozen=True, slots=True, eq=False, weakref_slot=True)
class Graph:
    """A validated, immutable program graph (index based for speed).

    Equal only to itself, and weakly referenceable: caches of what depends on one program (the
    engine's) are keyed by its graph and let it go with the program.

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


_Reference = tuple[int, str, FieldSpec, dict[int, bool]]
"""A resolved reference: source index, source field, its spec, type checks by ``id(target)``."""

_Outputs = tuple[dict[str, FieldSpec], tuple[tuple[str, FieldSpec, dict[int, bool]], ...]]
"""A module's outputs by name, and the same as rows of (field, spec, its type checks)."""

_new_binding = tuple.__new__  # skips NamedTuple's Python-level __new__ on the per-edge path


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
        self.errors: list[ErrorDetail] = []
        self._producers: dict[str, list[int]] | None = None
        # Modules share signature objects (parsing is cached), so per-signature facts and
        # per-field-pair type checks are computed once, keyed by identity.
        self._inputs_of: dict[int, dict[str, FieldSpec]] = {}
        self._checks: dict[int, dict[int, bool]] = {}
        self.produced: list[dict[str, FieldSpec]] = []
        self.references = self._references(modules, signatures)

    def _references(
        self, modules: Mapping[str, ModuleSpec], signatures: Mapping[str, Signature]
    ) -> dict[str, _Reference]:
        """Every valid reference text, resolved up front (and :attr:`produced` filled in).

        Each edge is then one dict lookup. Module names cannot contain dots, so ``MODULE.FIELD``
        has exactly one spelling and any text missing here is invalid (the slow path says why).
        """
        table: dict[str, _Reference] = {}
        for field, spec in self.program_inputs.items():
            table[f"{_INPUT_PREFIX}.{field}"] = (INPUT, field, spec, self._checks_for(spec))
        rows: dict[tuple[int, bool], _Outputs] = {}
        produced = self.produced
        for j, (name, module) in enumerate(modules.items()):
            signature = signatures[name]
            key = (id(signature), module.kind == "chain_of_thought")
            row = rows.get(key)
            if row is None:
                fields = module_outputs(module, signature)
                row = rows[key] = (
                    fields,
                    tuple((f, spec, self._checks_for(spec)) for f, spec in fields.items()),
                )
            produced.append(row[0])
            for field, spec, checks in row[1]:
                table[f"{name}.{field}"] = (j, field, spec, checks)
        return table

    def _inputs(self, signature: Signature) -> dict[str, FieldSpec]:
        wanted = self._inputs_of.get(id(signature))
        if wanted is None:
            wanted = self._inputs_of[id(signature)] = {f.name: f for f in signature.input_fields}
        return wanted

    def _checks_for(self, source: FieldSpec) -> dict[int, bool]:
        checks = self._checks.get(id(source))
        if checks is None:
            checks = self._checks[id(source)] = {}
        return checks

    def producers(self, field: str) -> list[int]:
        if self._producers is None:
            table: dict[str, list[int]] = {}
            for i, fields in enumerate(self.produced):
                for name in fields:
                    table.setdefault(name, []).append(i)
            self._producers = table
        return self._producers.get(field, [])

    def build(self, outputs: Mapping[str, str]) -> Graph:
        # One pass over every edge: this loop is the whole cost of validating a large graph, so
        # it works on locals and leaves anything unusual (errors, defaults, ``after``) to helpers.
        references = self.references
        names = self.names
        modules = self.modules  # iterated in the same order as names
        signatures = self.signatures
        inputs_of = self._inputs_of
        deps: list[tuple[int, ...]] = []
        bindings: list[tuple[Binding, ...]] = []
        dependents: list[list[int]] = [[] for _ in names]
        for i, (name, spec) in enumerate(modules.items()):
            signature = signatures[name]
            wanted = inputs_of.get(id(signature)) or self._inputs(signature)
            inputs = spec.inputs
            found: list[int] = []  # dependencies in first-seen order, no duplicates
            module_bindings: list[Binding] = []
            unknown = 0
            for field, ref in inputs.items():
                target = wanted.get(field)
                resolved = references.get(ref)
                if target is None or resolved is None:
                    unknown += self._bad_input(name, field, ref, target)
                    continue
                source, source_field, produced, checks = resolved
                ok = checks.get(id(target))
                if ok is None:
                    ok = checks[id(target)] = is_assignable(
                        _effective(produced), _effective(target)
                    )
                if not ok:
                    self._mismatch(("modules", name, "inputs", field), ref, produced, target)
                module_bindings.append(_new_binding(Binding, (field, source, source_field)))
                if source != INPUT and source not in found:
                    found.append(source)
            if spec.after or len(inputs) - unknown < len(wanted):
                self._defaults_and_after(name, spec, wanted, module_bindings, found)
            for d in found:
                dependents[d].append(i)
            bindings.append(tuple(module_bindings))
            deps.append(tuple(found))
        output_bindings = self._outputs(outputs, references)
        topo, cycles = _toposort(deps, dependents)
        for cycle in cycles:
            named = [names[i] for i in cycle]
            self.errors.append(
                ErrorDetail(f"modules.{named[0]}", "graph_cycle", "cycle: " + " -> ".join(named))
            )
        if cycles:
            first = [names[i] for i in cycles[0]]
            raise GraphCycleError(first, errors=self.errors)
        if self.errors:
            raise GraphError(_summary(self.errors), self.errors)
        return Graph(
            names=names,
            index=self.index,
            deps=tuple(deps),
            dependents=tuple(map(tuple, dependents)),
            bindings=tuple(bindings),
            outputs=output_bindings,
            topo=topo,
        )

    def _bad_input(self, name: str, field: str, ref: str, target: FieldSpec | None) -> int:
        """Report what is wrong with one mapped input; 1 when the module has no such input."""
        where = ("modules", name, "inputs", field)
        if target is None:
            self._error(where, "unknown_field", f"module {name!r} has no input {field!r}")
            return 1
        self._bad_reference(where, ref)
        return 0

    def _defaults_and_after(
        self,
        name: str,
        spec: ModuleSpec,
        wanted: Mapping[str, FieldSpec],
        bindings: list[Binding],
        found: list[int],
    ) -> None:
        """Bind unmapped inputs to their defaults and add ``after`` dependencies (in place)."""
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
            elif j not in found:
                found.append(j)

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

    def _bad_reference(self, where: _Where, ref: str) -> None:
        """Report why ``ref`` (missing from the reference table) resolves to nothing."""
        head, dot, tail = ref.partition(".")
        if not dot or not head or not tail or "." in tail:
            self._error(where, "invalid_reference", f"{ref!r} is not $input.FIELD or MODULE.FIELD")
        elif head == _INPUT_PREFIX:
            self._error(where, "unknown_field", f"the program has no input {tail!r}")
        elif head not in self.index:
            self._error(where, "unknown_module", f"{ref!r} refers to no module {head!r}")
        else:
            self._error(where, "unknown_field", f"module {head!r} has no output {tail!r}")

    def _check_types(self, where: _Where, ref: str, source: FieldSpec, target: FieldSpec) -> None:
        checks = self._checks_for(source)
        ok = checks.get(id(target))
        if ok is None:
            ok = checks[id(target)] = is_assignable(_effective(source), _effective(target))
        if not ok:
            self._mismatch(where, ref, source, target)

    def _mismatch(self, where: _Where, ref: str, source: FieldSpec, target: FieldSpec) -> None:
        self._error(
            where,
            "type_mismatch",
            f"{ref} gives {format_type(_effective(source))} but {target.name!r} takes "
            f"{format_type(_effective(target))}",
        )

    def _outputs(
        self, outputs: Mapping[str, str], references: Mapping[str, _Reference]
    ) -> tuple[Binding, ...]:
        bindings: list[Binding] = []
        for field, ref in outputs.items():
            where = f"outputs.{field}"
            target = self.program_outputs.get(field)
            if target is None:
                self._error(
                    where, "unknown_output", f"the program signature has no output {field!r}"
                )
                continue
            resolved = references.get(ref)
            if resolved is None:
                self._bad_reference(where, ref)
                continue
            source, source_field, produced, _ = resolved
            self._check_types(where, ref, produced, target)
            bindings.append(Binding(field, source, source_field))
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
    # The order list doubles as Kahn's FIFO queue: iterating a list sees what is appended to it.
    order = [i for i in range(n) if not waiting[i]]
    for i in order:
        for c in dependents[i]:
            waiting[c] -= 1
            if not waiting[c]:
                order.append(c)
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
