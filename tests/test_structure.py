"""The house's one-way rules, read from the source with `ast` (function-level imports included).

Services never reach into RQ or the job entry points (they call app/queue.py), and nothing in app/ imports in a
circle. The allow-lists name what issue 13's phase 2 still has to move; they may only shrink: an entry that is
no longer needed fails the test until it is removed.
"""
from __future__ import annotations

import ast
from pathlib import Path

APP = Path(__file__).resolve().parent.parent / "app"
JOB_MODULES = {"app.jobs", "app.integrations.jobs"}

# Services that still import rq or app.jobs (phase 2: webhooks split by phase, page read models beside pages).
SERVICES_STILL_ON_RQ = {"webhooks.py"}

# Imports that still close a cycle, as (importer, imported): app.jobs imports these services (and create_app,
# which imports every blueprint), and they import app.jobs back for enqueue_unique.
KNOWN_CYCLE_EDGES = {
    ("app.services.webhooks", "app.jobs"),
}


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


def test_services_never_import_rq_or_the_job_entry_points():
    offenders: dict[str, list[str]] = {}
    for path in sorted((APP / "services").glob("*.py")):
        names = imported_names(path)
        bad = sorted(n for n in names if n == "rq" or n.startswith("rq.") or _app_module(n) in JOB_MODULES)
        if bad:
            offenders[path.name] = bad
    unexpected = {name: bad for name, bad in offenders.items() if name not in SERVICES_STILL_ON_RQ}
    assert not unexpected, f"services must enqueue through app/queue.py, not rq or app.jobs: {unexpected}"
    fixed = SERVICES_STILL_ON_RQ - set(offenders)
    assert not fixed, f"no longer importing rq or app.jobs: remove {sorted(fixed)} from SERVICES_STILL_ON_RQ"


def test_app_has_no_import_cycle_but_the_known_ones():
    graph = import_graph()
    gone = {edge for edge in KNOWN_CYCLE_EDGES if edge[1] not in graph.get(edge[0], set())}
    assert not gone, f"these imports are gone: remove {sorted(gone)} from KNOWN_CYCLE_EDGES"
    for importer, imported in KNOWN_CYCLE_EDGES:
        graph[importer].discard(imported)
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle in app/: " + " → ".join(cycle)
