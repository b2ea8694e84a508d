"""The package's layering, read from the source with `ast` (nothing is imported): `efficientvit` never imports
`analysis`, and no chain of imports inside `efficientvit` leads back to where it started."""

import ast
from pathlib import Path

ROOT = Path(__file__).parents[1]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """Every module `path` imports, at any depth of its code (function-local imports included), as absolute names."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else []))
            found.add(target)
            found.update(f"{target}.{alias.name}" for alias in node.names)  # `from . import x` imports module x
    return found


def import_graph(package: str) -> dict[str, set[str]]:
    modules = {module_name(p): p for p in (ROOT / package).rglob("*.py")}
    return {name: {m for m in imports(path) if m in modules and m != name} for name, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One import cycle through each strongly connected group of modules (Tarjan), shortest first."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in graph[node]:
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for node in graph:
        if node not in index:
            visit(node)
    return sorted(found, key=len)


def test_the_library_never_imports_the_analyses():
    wrong = {
        name: sorted(m for m in imports(path) if m.split(".")[0] == "analysis")
        for name, path in ((module_name(p), p) for p in (ROOT / "efficientvit").rglob("*.py"))
    }
    assert {name: found for name, found in wrong.items() if found} == {}


def test_no_import_cycles_inside_the_library():
    graph = import_graph("efficientvit")
    # a package's __init__ re-exports its modules; an edge back to it from one of them is how Python packages
    # work, not a cycle between layers
    graph = {name: {m for m in targets if not name.startswith(f"{m}.")} for name, targets in graph.items()}
    assert cycles(graph) == []


def test_the_checks_see_a_wrong_import_and_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    tree = ROOT / "efficientvit" / "fuse.py"
    assert "efficientvit.models.layers" in imports(tree)  # relative imports resolve to absolute names
