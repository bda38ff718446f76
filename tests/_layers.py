"""The import structure of agent_core, checked with `ast`: layers, cycles, private names.

Run as a script for a report: ``python -m tests._layers`` (from the repository root).
tests/test_layers.py runs the same checks in the suite.

What is checked, over src/agent_core:

- the module import graph, with imports under ``TYPE_CHECKING`` and inside functions,
  has no cycle;
- every import points down (or sideways) in `LAYERS`;
- no module reaches into another package's private parts: no import of a ``_private``
  module or ``_name`` of another package, and no attribute ``x._name`` (``x`` not
  ``self``/``cls``) where ``_name`` is not defined in the accessing package.

A *package* is a subpackage directory (``agent_core.cache``) or a top-level module
(``agent_core.messages``, ``agent_core._quote``). Top-level ``_modules`` are shared,
library-internal helpers: any package of the library may import them, but not their
``_names``. Tests and benchmarks are outside the library: for them, any ``_``-named part
of ``agent_core`` (module, name or attribute) is private, and they must use none but the
test-facing exceptions listed, each with its reason, in `BENCHMARK_ALLOWED` and
`TEST_ALLOWED`. An entry there is a (module, what it uses) pair: a private module allowed
to a test or benchmark is theirs to test white-box, names and all. An entry that matches
nothing fails too, so the lists only shrink.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Final

ROOT: Final = Path(__file__).resolve().parent.parent
SRC: Final = ROOT / "src"
LIBRARY: Final = "agent_core"

#: The layers, lowest first: a module may import from its own layer and the ones below.
#: Keys are packages (subpackage directories or top-level modules, without ``agent_core.``).
LAYERS: Final[tuple[tuple[str, frozenset[str]], ...]] = (
    # Typed errors and the checks every entry point runs; no agent_core import above.
    (
        "base",
        frozenset(
            {"errors", "_quote", "_validation", "_urls", "_tasks", "_closing", "_extras", "_env"}
        ),
    ),
    # The Redis client factory: used by the cache tiers and the shared rate limiter.
    ("redis", frozenset({"_redis"})),
    # Histograms, loop lag, memory: used by every layer above, so it imports only base.
    ("observe", frozenset({"observe"})),
    # Message, Conversation, their shapes, per-message token counts and their codecs.
    # Encryption at rest: the keys file and the sealed-payload envelope (issue 14).
    # Messages as Anthropic's API takes them (the online count and the Anthropic model),
    # and the name that marks a compaction summary.
    (
        "messages",
        frozenset(
            {
                "messages",
                "_message_shape",
                "_token_counts",
                "_encryption",
                "_payload_cipher",
                "_anthropic_format",
                "_summary",
            }
        ),
    ),
    ("tokens", frozenset({"tokens"})),
    ("store", frozenset({"store"})),
    ("cache", frozenset({"cache"})),
    ("ratelimit", frozenset({"ratelimit"})),
    ("agent", frozenset({"agent"})),
    # API keys (issue 14) sit with the service that checks them.
    ("service", frozenset({"server", "bench", "serverless", "_demo", "_api_keys"})),
    ("cli", frozenset({"cli", "_keys_cli"})),
    # Drop-in memory for agent frameworks (issue 16), over the cache and the agent layer.
    ("integrations", frozenset({"integrations"})),
    # agent_core/__init__.py re-exports the public API: nothing inside imports it.
    ("root", frozenset({""})),
)

#: Private parts of agent_core that benchmarks use, (benchmark module, what it uses).
#: Anything else fails the suite. An entry that matches nothing fails too.
BENCHMARK_ALLOWED: Final[frozenset[tuple[str, str]]] = frozenset(
    {
        # Component benchmarks: they time one private component in isolation, which
        # no public API exposes; test-facing on purpose.
        ("benchmarks.eviction_policy", "agent_core.cache._l1"),
        ("benchmarks.eviction_policy", "agent_core.cache._policy"),
        ("benchmarks.eviction_policy", "agent_core.cache._tinylfu"),
        ("benchmarks.message_shape", "agent_core._message_shape"),
        ("benchmarks.pg_drivers", "agent_core.store._postgres_schema"),
        ("benchmarks.l2_signing", "agent_core.cache._redis_tier"),
        ("benchmarks.agent_turn", "agent_core.agent._agent"),
        ("benchmarks.agent_turn", "agent_core.agent._models"),
        ("benchmarks.agent_turn", "._body"),
        # The soak resizes L1 to measure the process without it; the agent-turn and
        # signing benchmarks time the L2 tier's own calls.
        ("benchmarks.l1_soak", "._l1"),
        ("benchmarks.l1_soak", "._redis"),
        ("benchmarks.agent_turn", "._l2"),
        ("benchmarks.l2_signing", "._l2"),
        # The L2 read path measured step by step against a raw GET (issue 12): the tier's
        # own get, its format module and its inline threshold, and the client factory.
        ("benchmarks.cache_latency", "agent_core._redis"),
        ("benchmarks.cluster_latency", "agent_core._redis"),
        ("benchmarks.cache_latency", "._l2"),
        ("benchmarks.l2_hot_path", "agent_core.cache._l2_format"),
        ("benchmarks.l2_hot_path", "agent_core.cache._redis_tier"),
        ("benchmarks.l2_hot_path", "._l2"),
        ("benchmarks.l2_hot_path", "._INLINE_BYTES"),
        # The API key verifier timed alone: per-request cost and wrong keys' timing.
        ("benchmarks.auth_timing", "agent_core._api_keys"),
    }
)

#: Private parts of agent_core that tests use, (test module, what it uses): white-box unit
#: tests of one private part, which the issue allows when explicit. Anything else fails
#: the suite; an entry that matches nothing fails too.
TEST_ALLOWED: Final[frozenset[tuple[str, str]]] = frozenset(
    {
        # Component tests: one private part alone, checked against a model or a table of
        # cases that no public API reaches (policies' accounting and admission, the shared
        # deadlines, the context-file loader and its limits, /v1/stats' recent samples, the
        # memory monitor driving a bare L1 tier, Retry-After forms, the GCRA decision that
        # RecordingLimiter keeps from the limiter's reservation step).
        ("tests.test_policy", "agent_core.cache._policy"),
        ("tests.test_policy", "agent_core.cache._tinylfu"),
        ("tests.test_tasks", "agent_core._tasks"),
        ("tests.test_context_files", "agent_core.agent._context_files"),
        ("tests.test_server", "agent_core.server._recent"),
        ("tests.test_observe", "agent_core.cache._l1"),
        ("tests.test_chat_models", "agent_core.agent._openai"),
        ("tests.test_ratelimit", "agent_core.ratelimit._gcra"),
        # Library-internal helpers, tested on their own: quoting bad input, masking URLs,
        # the Redis client factory's cluster URLs, and the thread-id check and
        # Idempotency-Key limit that the OpenAPI spec must state alike.
        ("tests.test_input_errors", "agent_core._quote"),
        ("tests.test_secrets", "agent_core._urls"),
        ("tests.test_cluster", "agent_core._redis"),
        ("tests.test_server", "agent_core._validation"),
        # The tokenizer's internals against tiktoken and Meta's tokenizer: pinned vocabulary
        # hashes, Unicode class tables, long-run cuts, the engine patched to count calls,
        # the window's payload search and its off-loop shape; and count_async's slicing
        # at small slice sizes (the public method fixes them at 64K characters, and a knob
        # on the public TokenCounter would be API for tests only).
        ("tests.test_tokens", "agent_core.tokens._encodings"),
        ("tests.test_tokens", "agent_core.tokens._uniclass"),
        ("tests.test_tokens", "agent_core.tokens._open_models"),
        ("tests.test_tokens", "._count_slices"),
        ("tests.test_windows", "agent_core.tokens._encodings"),
        ("tests.test_windows", "agent_core.tokens._window"),
        # Stored formats written or read as bytes: hostile L2 entries forged with the
        # format's own encoder, and stores migrated from an old schema built with the
        # stores' own migrations.
        ("tests.test_l2_trust", "agent_core.cache._l2_format"),
        ("tests.test_store_contract", "agent_core.store._sqlite"),
        ("tests.test_store_contract", "agent_core.store._postgres_schema"),
        ("tests.test_postgres_splice", "agent_core.store._postgres_schema"),
        # Order keys: locating a slice and making keys between neighbours, against a
        # list model over many more splices than the stores' tests can afford.
        ("tests.test_splice_order", "agent_core.store._order"),
        # The keys file and verifier on their own, and the service's tests making keys as
        # `agent-core keys create` does, without a subprocess per key.
        ("tests.test_keys", "agent_core._api_keys"),
        ("tests.test_auth", "agent_core._api_keys"),
        ("tests.test_openapi_fuzz", "agent_core._api_keys"),
        # The JWT verifier against a local JWKS server: its refresh policy (fetches counted
        # at the server) and every way a token fails, more cases than routes can afford.
        ("tests.test_jwt", "agent_core.server._jwt"),
    }
)

# Public API of the standard library that starts with an underscore.
_PUBLIC_UNDERSCORE: Final = frozenset({"_replace", "_asdict", "_fields", "_make", "_exit"})


@dataclass(frozen=True, order=True)
class Violation:
    """One finding: where, which rule, and what was used."""

    path: str
    line: int
    rule: str
    module: str
    used: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.rule}: {self.used}"


@dataclass
class Module:
    name: str
    path: Path
    tree: ast.Module
    is_package: bool
    #: (line, imported module, imported name or None)
    imports: list[tuple[int, str, str | None]] = field(default_factory=list)


def package_of(module: str) -> str:
    """``agent_core.cache._l1`` -> ``agent_core.cache``; ``agent_core._quote`` -> itself."""
    parts = module.split(".")
    if parts[0] != LIBRARY:
        return parts[0]
    return ".".join(parts[:2])


def layer_of(module: str) -> int:
    key = module.split(".")[1] if "." in module else ""
    for rank, (_, members) in enumerate(LAYERS):
        if key in members:
            return rank
    raise LookupError(f"{module} is in no layer: add it to LAYERS in tests/_layers.py")


def _module_name(path: Path, base: Path) -> tuple[str, bool]:
    parts = list(path.relative_to(base).with_suffix("").parts)
    is_package = parts[-1] == "__init__"
    if is_package:
        parts.pop()
    return ".".join(parts), is_package


def _resolve(module: Module, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    parts = module.name.split(".")
    if not module.is_package:
        parts.pop()
    if node.level > 1:
        parts = parts[: len(parts) - (node.level - 1)]
    return ".".join(parts + ([node.module] if node.module else []))


def parse(paths: Iterable[Path], base: Path) -> dict[str, Module]:
    """Every module under ``paths`` with its imports, wherever in the file they are."""
    modules: dict[str, Module] = {}
    for path in sorted(paths):
        name, is_package = _module_name(path, base)
        modules[name] = Module(name, path, ast.parse(path.read_text(), str(path)), is_package)
    for module in modules.values():
        for node in ast.walk(module.tree):
            if isinstance(node, ast.Import):
                module.imports.extend((node.lineno, alias.name, None) for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                source = _resolve(module, node)
                module.imports.extend((node.lineno, source, alias.name) for alias in node.names)
    return modules


def library() -> dict[str, Module]:
    return parse((SRC / LIBRARY).rglob("*.py"), SRC)


def import_graph(modules: dict[str, Module]) -> dict[str, set[str]]:
    """Module -> the library modules that importing it runs.

    Importing ``a.b.c`` from outside ``a.b`` also runs ``a/b/__init__.py``; the root
    package's own ``__init__`` is left out (it runs first for everyone).
    """
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for module in modules.values():
        for _, source, name in module.imports:
            for target in _targets(source, name, modules):
                graph[module.name].add(target)
                package = package_of(target)
                if (
                    package in modules
                    and package != LIBRARY
                    and package != module.name
                    and not module.name.startswith(package + ".")
                ):
                    graph[module.name].add(package)
    return graph


def _targets(source: str, name: str | None, modules: dict[str, Module]) -> Iterator[str]:
    if name is not None and f"{source}.{name}" in modules:
        yield f"{source}.{name}"
    elif source in modules:
        yield source


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1 or node in graph[node]:
                found.append(sorted(component))

    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 10 * len(graph)))
    try:
        for node in sorted(graph):
            if node not in index:
                visit(node)
    finally:
        sys.setrecursionlimit(limit)
    return sorted(found)


def _where(module: Module) -> str:
    path = module.path
    return str(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path)


def layer_violations(modules: dict[str, Module]) -> list[Violation]:
    """Imports of a module in a higher layer than the importer's."""
    found: set[Violation] = set()
    for module in modules.values():
        rank = layer_of(module.name)
        for line, source, name in module.imports:
            for target in _targets(source, name, modules):
                if layer_of(target) > rank:
                    found.add(
                        Violation(
                            _where(module),
                            line,
                            f"upward import ({LAYERS[rank][0]} -> {LAYERS[layer_of(target)][0]})",
                            module.name,
                            target,
                        )
                    )
    return sorted(found)


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def defined_names(modules: dict[str, Module]) -> dict[str, set[str]]:
    """Package -> the names it defines: defs, classes, class attributes, module-level
    assignments, ``self._x = ...``, ``__slots__`` entries and imported aliases."""
    names: dict[str, set[str]] = {}
    for module in modules.values():
        defined = names.setdefault(package_of(module.name), set())
        for node in ast.walk(module.tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                defined.add(node.name)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                defined.add(node.id)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                defined.add(node.attr)
            elif isinstance(node, ast.alias):
                defined.add(node.asname or node.name.split(".")[0])
            elif (
                isinstance(node, ast.Constant)
                and isinstance(node.value, str)
                and node.value.isidentifier()
            ):
                # __slots__ and the names given to setattr/object.__setattr__.
                defined.add(node.value)
    return names


def _is_own(node: ast.expr) -> bool:
    """``self``, ``cls`` or ``super()``: access to the class's own members."""
    if isinstance(node, ast.Name):
        return node.id in ("self", "cls")
    return (
        isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "super"
    )


def private_violations(
    modules: dict[str, Module], library_modules: dict[str, Module], *, outside: bool
) -> list[Violation]:
    """Private access across packages by ``modules``.

    ``outside``: the modules are not part of the library (tests, benchmarks), so every
    ``_``-named part of agent_core is private to them.
    """
    defined = defined_names(library_modules)
    found: set[Violation] = set()
    for module in modules.values():
        own = package_of(module.name)
        own_names = set() if outside else defined.get(own, set())
        for line, source, name in module.imports:
            if not source.startswith(LIBRARY):
                continue
            if package_of(source) == own:
                continue
            # ``from pkg import _module`` imports a module; ``from pkg import _name``, a name.
            target = next(_targets(source, name, library_modules), source)
            inner = target.split(".")[1:] if outside else target.split(".")[2:]
            if any(_private(part) for part in inner):
                found.add(_violation(module, line, "private module", target))
            elif name is not None and _private(name):
                found.add(_violation(module, line, "private name", f"{source}.{name}"))
        for node in ast.walk(module.tree):
            if (
                isinstance(node, ast.Attribute)
                and _private(node.attr)
                and node.attr not in own_names
                and node.attr not in _PUBLIC_UNDERSCORE
                and not _is_own(node.value)
                and (not outside or node.attr in _library_names(defined))
            ):
                found.add(_violation(module, node.lineno, "private attribute", f".{node.attr}"))
    return sorted(found)


def _library_names(defined: dict[str, set[str]]) -> set[str]:
    return set().union(*defined.values())


def _violation(module: Module, line: int, rule: str, used: str) -> Violation:
    return Violation(_where(module), line, rule, module.name, used)


def key(violation: Violation) -> tuple[str, str]:
    return violation.module, violation.used


@dataclass
class Findings:
    """Everything the checks find; `failures` is what the suite fails on."""

    cycles: list[list[str]]
    upward: list[Violation]
    private: list[Violation]
    benchmarks: list[Violation]
    tests: list[Violation]

    def failures(self) -> list[str]:
        failed = [f"import cycle: {' -> '.join(c)}" for c in self.cycles]
        failed += [str(v) for v in self.upward]
        failed += [str(v) for v in self.private]
        failed += [str(v) for v in self.benchmarks if key(v) not in BENCHMARK_ALLOWED]
        failed += [
            f"stale BENCHMARK_ALLOWED entry: {e}"
            for e in sorted(BENCHMARK_ALLOWED - self._keys(self.benchmarks))
        ]
        failed += [str(v) for v in self.tests if key(v) not in TEST_ALLOWED]
        failed += [
            f"stale TEST_ALLOWED entry: {e}" for e in sorted(TEST_ALLOWED - self._keys(self.tests))
        ]
        return failed

    @staticmethod
    def _keys(found: list[Violation]) -> set[tuple[str, str]]:
        return {key(v) for v in found}


@cache
def check() -> Findings:
    modules = library()
    return Findings(
        cycles(import_graph(modules)),
        layer_violations(modules),
        private_violations(modules, modules, outside=False),
        private_violations(outside_modules("benchmarks"), modules, outside=True),
        private_violations(outside_modules("tests"), modules, outside=True),
    )


def outside_modules(directory: str) -> dict[str, Module]:
    return parse((ROOT / directory).rglob("*.py"), ROOT)


def report() -> int:
    """Print every finding, then what the suite fails on; returns how many that is."""
    findings = check()
    print(f"import cycles: {len(findings.cycles)}")
    for component in findings.cycles:
        print(f"  {len(component)} modules: {', '.join(component)}")
    sections = (
        ("upward imports in src/", findings.upward, frozenset[tuple[str, str]]()),
        ("cross-package private access in src/", findings.private, None),
        ("private access from benchmarks/", findings.benchmarks, BENCHMARK_ALLOWED),
        ("private access from tests/", findings.tests, TEST_ALLOWED),
    )
    for title, items, allowed in sections:
        print(f"\n{title}: {len(items)}")
        for item in items:
            mark = "  [allowed]" if allowed is not None and key(item) in allowed else ""
            print(f"  {item}{mark}")
    failures = findings.failures()
    print(f"\nfailing: {len(failures)}")
    for failure in failures:
        print(f"  {failure}")
    return len(failures)


if __name__ == "__main__":
    raise SystemExit(1 if report() else 0)
