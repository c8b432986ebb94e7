"""The project's own modules import one another in one direction only, and importing them
does no work.

The import graph is read from the source with ``ast`` (every ``import``, also those inside
functions and ``TYPE_CHECKING`` blocks: a lazy import still closes a circle, only later); an
import circle is a strongly connected component of more than one module.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("scenerec", "streams", "serving", "embeddings", "vectorstore", "deploy", "evaluation")
#: What the model code may not import: the streaming, serving and deployment layers.
NOT_IN_EMBEDDINGS = ("faust", "aiokafka", "ray", "mode", "streams", "serving", "deploy")
#: The worker process's edge (``faust -A streams.app worker``): it builds the worker when
#: imported, so nothing else may import it.
PROCESS_EDGE = "streams.app"


def module_files() -> dict[str, Path]:
    out: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


def imported_names(module: str, path: Path) -> Iterator[str]:
    """Every dotted name ``module`` imports (``from a import b`` gives ``a.b``, which is the
    module ``a.b`` or a name in the module ``a``)."""
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package this module is in
                package = module.split(".")
                drop = node.level - 1 if is_package else node.level
                anchor = package[: len(package) - drop]
                base = ".".join([*anchor, base] if base else anchor)
            yield from (f"{base}.{alias.name}" for alias in node.names)


def import_graph() -> dict[str, set[str]]:
    """Module -> the project modules it imports.

    The module a name resolves to is an edge; so are the packages above it, whose
    ``__init__`` Python runs first, except those above the importing module itself: they
    are running already whenever it is imported (a package's ``__init__`` that imports its
    own submodules is no circle; a submodule that imports names from that ``__init__`` is).
    """
    files = module_files()
    graph: dict[str, set[str]] = {name: set() for name in files}
    for module, path in files.items():
        parts_of_module = module.split(".")
        own_packages = {".".join(parts_of_module[:end]) for end in range(1, len(parts_of_module))}
        for name in imported_names(module, path):
            parts = name.split(".")
            prefixes = [".".join(parts[:end]) for end in range(1, len(parts) + 1)]
            known = [p for p in prefixes if p in files]
            if not known:
                continue
            target, above = known[-1], known[:-1]
            graph[module].update(p for p in above if p not in own_packages)
            graph[module].add(target)
        graph[module].discard(module)
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component: list[str] = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def one_cycle(graph: dict[str, set[str]], component: list[str]) -> list[str]:
    """A shortest path from the component's first module back to it, for the message."""
    members = set(component)
    start = component[0]
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        nxt_frontier = []
        for node in frontier:
            for nxt in sorted(graph[node] & members):
                if nxt == start:
                    return [*paths[node], start]
                if nxt not in paths:
                    paths[nxt] = [*paths[node], nxt]
                    nxt_frontier.append(nxt)
        frontier = nxt_frontier
    return component


def test_the_reader_sees_imports_inside_functions_and_relative_ones(tmp_path: Path) -> None:
    src = tmp_path / "mod.py"
    src.write_text(
        "import a.b\nfrom . import sibling\n"
        "def f():\n    from c import d\n"
        "if True:\n    from .e import g\n"
    )
    names = set(imported_names("pkg.mod", src))
    assert names == {"a.b", "pkg.sibling", "c.d", "pkg.e.g"}
    graph = {"x": {"y"}, "y": {"z"}, "z": {"x"}, "w": {"x"}}
    assert circles(graph) == [["x", "y", "z"]]
    assert one_cycle(graph, ["x", "y", "z"]) == ["x", "y", "z", "x"]


def test_no_import_circles_among_the_project_modules() -> None:
    graph = import_graph()
    assert "streams.worker" in graph and "deploy.stack" in graph  # it read the project
    found = [" -> ".join(one_cycle(graph, c)) + f"  (component: {c})" for c in circles(graph)]
    assert not found, "import circles:\n" + "\n".join(found)


def test_only_the_process_runs_the_worker_edge() -> None:
    importers = sorted(m for m, targets in import_graph().items() if PROCESS_EDGE in targets)
    assert importers == [], f"{PROCESS_EDGE} builds a worker when imported; imported by {importers}"


def test_the_model_code_imports_no_streaming_serving_or_deployment() -> None:
    files = module_files()
    wrong = sorted(
        f"{module} imports {name}"
        for module, path in files.items()
        if module == "embeddings" or module.startswith("embeddings.")
        for name in imported_names(module, path)
        if name.split(".")[0] in NOT_IN_EMBEDDINGS
    )
    assert not wrong, "\n".join(wrong)


def test_importing_the_worker_and_the_encoder_changes_nothing_process_wide() -> None:
    """Building happens in ``create_worker`` and ``SentenceEncoder``, not at import."""
    probe = (
        "import gc, json, os, sys\n"
        "env, callbacks = dict(os.environ), list(gc.callbacks)\n"
        "import embeddings.encoder, streams.agents, streams.runtime, streams.worker\n"
        "keys = set(env) | set(os.environ)\n"
        "changed = sorted(k for k in keys if env.get(k) != os.environ.get(k))\n"
        "print(json.dumps({'env': changed, 'gc_callbacks': len(gc.callbacks) - len(callbacks),"
        " 'app': 'streams.app' in sys.modules}))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen == {"env": [], "gc_callbacks": 0, "app": False}
