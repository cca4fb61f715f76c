"""The house's one-way rules, read from the source with `ast` (function-level imports included).

Services never reach into RQ or the job entry points (they call app/queue.py), only the modules that run or own
jobs import the `rq` package, and nothing in app/ imports in a circle.
"""
from __future__ import annotations

import ast
from pathlib import Path

APP = Path(__file__).resolve().parent.parent / "app"
JOB_MODULES = {"app.jobs", "app.integrations.jobs"}
#: The modules that may import the rq package: the one that owns queues and job ids, the extension that makes
#: queues, the worker's reliability (leases, abandoned jobs) and the log context (the current job's id).
RQ_OWNERS = {"app.queue", "app.extensions", "app.workers", "app.logs"}


def module_of(path: Path) -> str:
    parts = list(path.relative_to(APP.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_of(p): p for p in APP.rglob("*.py")}


def imported_names(path: Path) -> set[str]:
    """Every dotted name a file imports, anywhere in it (relative imports made absolute; `from a import b` → a.b)."""
    module = module_of(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def _app_module(name: str) -> str | None:
    """The module of app/ a dotted name lives in (`app.extensions.db` → app.extensions), or None."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def import_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for module, path in MODULES.items():
        targets = {_app_module(name) for name in imported_names(path)}
        graph[module] = {t for t in targets if t and t != module}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path (first module repeated at the end), or None."""
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start)):
            return found
    return None


def test_the_scan_sees_imports_made_inside_functions():
    graph = import_graph()
    assert "app.services.invoicing" in graph["app.jobs"]  # `from app.services.invoicing import …` in a job
    assert "app.services.dunning" in graph["app.services.admin_actions"]  # inside an action


def _imports_rq(names: set[str]) -> list[str]:
    return sorted(n for n in names if n == "rq" or n.startswith("rq."))


def test_services_never_import_rq_or_the_job_entry_points():
    offenders: dict[str, list[str]] = {}
    for path in sorted((APP / "services").rglob("*.py")):  # packages too (services/webhooks/)
        names = imported_names(path)
        bad = _imports_rq(names) + sorted(n for n in names if _app_module(n) in JOB_MODULES)
        if bad:
            offenders[str(path.relative_to(APP))] = bad
    assert not offenders, f"services must enqueue through app/queue.py, not rq or app.jobs: {offenders}"


def test_only_the_queue_and_the_worker_side_import_rq():
    offenders = {module: bad for module, path in sorted(MODULES.items())
                 if module not in RQ_OWNERS and (bad := _imports_rq(imported_names(path)))}
    assert not offenders, f"enqueue and read job status through app/queue.py: {offenders}"


def test_app_has_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle in app/: " + " → ".join(cycle)


# -- the tests: fixtures in conftest files, helpers in tests/factories.py and tests/support/ ----------------------

TESTS = APP.parent / "tests"
TEST_MODULES = {module_of(p): p for p in TESTS.rglob("*.py")}


def _tests_module(name: str) -> str | None:
    """The module under tests/ a dotted name lives in (`tests.conftest.login` → tests.conftest), or None."""
    while name and name not in TEST_MODULES:
        name = name.rpartition(".")[0]
    return name or None


def test_nothing_in_tests_imports_a_conftest_or_a_test_module():
    """pytest hands fixtures to tests; a helper or factory is imported from tests/factories.py or tests/support/."""
    offenders: dict[str, list[str]] = {}
    for module, path in sorted(TEST_MODULES.items()):
        bad = sorted(n for n in imported_names(path) if (target := _tests_module(n)) and target != module and (
            TEST_MODULES[target].name == "conftest.py" or TEST_MODULES[target].name.startswith("test_")))
        if bad:
            offenders[str(path.relative_to(TESTS))] = bad
    assert not offenders, f"move these to tests/factories.py or tests/support/ and import them from there: {offenders}"
