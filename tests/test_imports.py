"""The package's modules import each other without a cycle, counting imports inside functions too: a
lazy import that closes a cycle still ties the two modules together."""

import ast
from graphlib import CycleError, TopologicalSorter

from tests.conftest import REPO


def _import_graph() -> dict[str, set[str]]:
    modules = {}
    for path in (REPO / "instag").rglob("*.py"):
        parts = path.relative_to(REPO).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and not node.level:
                targets |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
            elif isinstance(node, ast.Import):
                targets |= {a.name for a in node.names}
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def test_no_import_cycle_in_the_package():
    graph = _import_graph()
    assert "instag.tagger.models" in graph["instag.tagger.backends.hf"]  # the walk sees real edges
    try:
        list(TopologicalSorter(graph).static_order())
    except CycleError as e:
        raise AssertionError(f"import cycle: {' -> '.join(e.args[1])}") from None
