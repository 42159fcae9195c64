"""Reading a YAML document as typed values, each mistake reported with its key's path and line.

``scheduler.spec`` turns service files into ``ServiceSpec``s; this module is the part that knows YAML.
Documents are *composed*, not loaded: nodes keep their positions, and scalars keep the text as written,
so ``restart: no`` is the word "no" (not YAML 1.1's ``False``), ``cpus: 0.50`` is "0.50" for the same
parser ``shoal run --cpus`` uses, and env values like ``VERSION: 1.10`` stay "1.10". Merge keys
(``<<: *defaults``) are applied as PyYAML's loader would.

A ``Reader`` collects ``Problem``s instead of stopping at the first: unknown keys (with the closest known
key as a suggestion), keys given twice, wrong types, missing required keys, and whatever a converter
refuses (it raises ``Invalid``). ``SpecError`` carries them all; its text is one line per problem,
``web.yaml:7: template.resources.memory: invalid memory limit '64X': ...``.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import TypeVar

import yaml
from yaml.constructor import ConstructorError, SafeConstructor

T = TypeVar("T")
D = TypeVar("D")

INT_TAG = "tag:yaml.org,2002:int"
FLOAT_TAG = "tag:yaml.org,2002:float"
BOOL_TAG = "tag:yaml.org,2002:bool"
NULL_TAG = "tag:yaml.org,2002:null"
# libyaml's parser when PyYAML has it (composing a typical file: 0.25 ms against 3.8 ms);
# both give nodes with their positions.
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
INT32_MAX = (1 << 31) - 1
MAX_PROBLEMS = 20  # past this, the rest are probably consequences of the first ones


@dataclass(frozen=True)
class Problem:
    line: int     # 1-based; 0 when unknown (a spec that did not come from YAML)
    path: str     # "template.ports[1].host"; "" for the document itself
    message: str


class SpecError(ValueError):
    """A service file (or structured spec) that cannot be used, with every problem found in it."""

    def __init__(self, problems: list[Problem] | tuple[Problem, ...], *, source: str = "") -> None:
        self.problems = tuple(problems)
        self.source = source
        super().__init__(str(self))

    def __str__(self) -> str:
        return "\n".join(self.line_of(p) for p in self.problems)

    def line_of(self, problem: Problem) -> str:
        where = ":".join(part for part in (self.source, str(problem.line) if problem.line else "") if part)
        head = ": ".join(part for part in (where, problem.path) if part)
        return f"{head}: {problem.message}" if head else problem.message


class Invalid(Exception):
    """Raised by converters: this node cannot be used, for this reason (the Reader adds where)."""

    def __init__(self, message: str, *, node: yaml.Node | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.node = node


def line_of(node: yaml.Node | None) -> int:
    return node.start_mark.line + 1 if node is not None and node.start_mark is not None else 0


def join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def compose_documents(text: str, *, source: str) -> list[yaml.Node]:
    """Every non-empty document of ``text``; ``SpecError`` on a YAML syntax error, with its line."""
    try:
        nodes = [n for n in yaml.compose_all(text, Loader=_LOADER)
                 if n is not None and not is_null(n)]  # empty documents (a stray "---")
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        line = mark.line + 1 if mark is not None else 0
        detail = " ".join(part for part in (err.context, err.problem) if part)
        raise SpecError([Problem(line, "", f"not valid YAML: {detail}")], source=source) from None
    except yaml.YAMLError as err:
        raise SpecError([Problem(0, "", f"not valid YAML: {err}")], source=source) from None
    merger = SafeConstructor()
    for node in nodes:
        try:
            _apply_merges(node, merger, seen=set())
        except ConstructorError as err:
            mark = err.problem_mark
            raise SpecError([Problem(mark.line + 1 if mark else 0, "", f"bad merge key: {err.problem}")],
                            source=source) from None
    return nodes


def _apply_merges(node: yaml.Node, merger: SafeConstructor, *, seen: set[int]) -> None:
    if id(node) in seen:  # aliases share nodes; an anchor may even contain itself
        return
    seen.add(id(node))
    if isinstance(node, yaml.MappingNode):
        merger.flatten_mapping(node)  # what the loader does with "<<" keys
        for key, value in node.value:
            _apply_merges(key, merger, seen=seen)
            _apply_merges(value, merger, seen=seen)
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            _apply_merges(item, merger, seen=seen)


def kind_of(node: yaml.Node) -> str:
    """What a node is, in the words of a type error: "a list", "a mapping", "the number 3"..."""
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    if node.tag == NULL_TAG:
        return "nothing (null)"
    if node.tag in (INT_TAG, FLOAT_TAG):
        return f"the number {node.value}"
    if node.tag == BOOL_TAG:
        return f"the boolean {node.value}"
    return f"{node.value!r}"


# -- converters: node → value, or Invalid ----------------------------------------------------------------

def is_null(node: yaml.Node) -> bool:
    return isinstance(node, yaml.ScalarNode) and node.tag == NULL_TAG


def text(node: yaml.Node) -> str:
    """Any scalar, as written (numbers and booleans included: ``user: 1000`` is "1000")."""
    if not isinstance(node, yaml.ScalarNode) or node.tag == NULL_TAG:
        raise Invalid(f"expected a string, got {kind_of(node)}", node=node)
    return str(node.value)


def integer(node: yaml.Node) -> int:
    if not isinstance(node, yaml.ScalarNode) or node.tag != INT_TAG:
        raise Invalid(f"expected a whole number, got {kind_of(node)}", node=node)
    try:
        value = int(SafeConstructor().construct_yaml_int(node))
    except ValueError:
        raise Invalid(f"expected a whole number, got {node.value!r}", node=node) from None
    if abs(value) > INT32_MAX:  # every whole number of the API is an int32
        raise Invalid(f"{node.value} is too large (at most {INT32_MAX})", node=node)
    return value


def boolean(node: yaml.Node) -> bool:
    if not isinstance(node, yaml.ScalarNode) or node.tag != BOOL_TAG:
        raise Invalid(f"expected true or false, got {kind_of(node)}", node=node)
    return bool(SafeConstructor().construct_yaml_bool(node))


def scalar_text(node: yaml.Node) -> str:
    """A number or a string with a unit (``0.5``, ``250m``, ``64M``, ``2s``), as written."""
    if not isinstance(node, yaml.ScalarNode) or node.tag in (NULL_TAG, BOOL_TAG):
        raise Invalid(f"expected a number or a string like \"64M\", got {kind_of(node)}", node=node)
    return str(node.value)


def items(node: yaml.Node) -> list[yaml.Node]:
    if not isinstance(node, yaml.SequenceNode):
        raise Invalid(f"expected a list, got {kind_of(node)}", node=node)
    return list(node.value)


# -- the reader ---------------------------------------------------------------------------------------------

class Reader:
    """Collects the problems of one source; section parsers call it for every key they read."""

    def __init__(self, *, source: str) -> None:
        self.source = source
        self.problems: list[Problem] = []

    def report(self, node: yaml.Node | None, path: str, message: str) -> None:
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(Problem(line_of(node), path, message))

    def check(self) -> None:
        """``SpecError`` with every problem so far, in the order of the file."""
        if self.problems:
            raise SpecError(sorted(self.problems, key=lambda p: p.line), source=self.source)

    def mapping(self, node: yaml.Node, path: str, known: Collection[str], *,
                required: Collection[str] = (), aliases: Mapping[str, str] | None = None,
                ignored_prefix: str | None = None) -> dict[str, yaml.Node] | None:
        """The values of a mapping with only ``known`` keys (and keys starting with ``ignored_prefix``,
        skipped); problems for the rest. None (reported) if ``node`` is not a mapping."""
        if not isinstance(node, yaml.MappingNode):
            self.report(node, path, f"expected a mapping of keys to values, got {kind_of(node)}")
            return None
        found: dict[str, yaml.Node] = {}
        lines: dict[str, int] = {}
        for key_node, value in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == NULL_TAG:
                self.report(key_node, path, f"keys must be words, not {kind_of(key_node)}")
                continue
            key = str(key_node.value)
            where = join(path, key)
            if key in lines:
                self.report(key_node, where, f"given twice (first on line {lines[key]})")
                continue
            lines[key] = line_of(key_node)
            if ignored_prefix and key.startswith(ignored_prefix):
                continue
            if key not in known:
                self.report(key_node, where, f"unknown key{_suggestion(key, known, aliases or {})}")
                continue
            found[key] = value
        for key in required:
            if key not in found and key not in lines:
                self.report(node, join(path, key), "required")
        return found

    def read(self, values: Mapping[str, yaml.Node], key: str, path: str, convert: Callable[[yaml.Node], T],
             default: D, *, required: bool = False) -> T | D:
        """``convert(values[key])``; ``default`` when the key is absent or null (or after a problem,
        reported at ``path.key``). A required key given as null is a problem."""
        node = values.get(key)
        where = join(path, key)
        if node is None:
            return default
        if is_null(node):
            if required:
                self.report(node, where, "required, but empty")
            return default
        return self.convert(node, where, convert, default)

    def convert(self, node: yaml.Node, path: str, convert: Callable[[yaml.Node], T], default: D) -> T | D:
        try:
            return convert(node)
        except Invalid as err:
            self.report(err.node or node, path, err.message)
            return default


def _suggestion(key: str, known: Collection[str], aliases: Mapping[str, str]) -> str:
    guess = aliases.get(key) or aliases.get(key.lower())
    if guess is None:
        close = difflib.get_close_matches(key, list(known), n=1, cutoff=0.6)
        guess = close[0] if close else None
    if guess is not None:
        return f' (did you mean "{guess}"?)'
    return f" (expected one of: {', '.join(sorted(known))})"


__all__ = [
    "Invalid", "Problem", "Reader", "SpecError", "boolean", "compose_documents", "integer", "is_null",
    "items", "join", "kind_of", "line_of", "scalar_text", "text",
]
