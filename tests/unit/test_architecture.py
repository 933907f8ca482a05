"""The import contract of the package, read from the source with ``ast``.

Only module-level imports count: an import inside a function runs when it is called, and one
under ``if TYPE_CHECKING:`` never runs. A package's ``__init__`` is a module of its own, and
importing ``a.b.c`` runs ``a/__init__`` and ``a/b/__init__`` first.

- No import cycle among ``cloudrec`` modules. A module's own parent packages are initialised
  before it by Python itself, so they are no edge of the graph unless an import names them:
  ``from cloudrec.media import x`` reads ``x`` from ``cloudrec.media`` (an edge to it, and to
  ``cloudrec.media.x`` when that is a submodule).
- The control plane (api, models, tasks, cluster, callbacks, console, and the workers'
  supervisor and client) reaches nothing of the media plane (rooms, media, recorder, relay, rtp,
  webrtc) and none of aiortc, aioice or PyAV, through any chain of module-level imports.
- No module is over 450 lines.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from functools import cache
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "src" / "cloudrec"
MAX_LINES = 450

CONTROL_PLANE = ("cloudrec.api", "cloudrec.models", "cloudrec.tasks", "cloudrec.cluster",
                 "cloudrec.callbacks", "cloudrec.console", "cloudrec.workers.supervisor",
                 "cloudrec.workers.client")
MEDIA_PLANE = ("cloudrec.rooms", "cloudrec.media", "cloudrec.recorder", "cloudrec.relay",
               "cloudrec.rtp", "cloudrec.webrtc")
MEDIA_LIBRARIES = ("aiortc", "aioice", "av")


def _name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES: dict[str, Path] = {_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _top_level_imports(tree: ast.Module) -> list[ast.Import | ast.ImportFrom]:
    """Imports that run when the module is imported: at module level, also inside ``try`` and
    ``if`` blocks, but not in functions, classes or ``if TYPE_CHECKING:``."""
    found: list[ast.Import | ast.ImportFrom] = []

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                found.append(node)
            elif isinstance(node, ast.If):
                if not _is_type_checking(node.test):
                    visit(node.body)
                visit(node.orelse)
            elif isinstance(node, ast.Try):
                for block in (node.body, node.orelse, node.finalbody,
                              *(h.body for h in node.handlers)):
                    visit(block)
            elif isinstance(node, (ast.With, ast.AsyncWith)):
                visit(node.body)

    visit(tree.body)
    return found


def _with_parents(name: str) -> list[str]:
    """``name`` and the packages whose ``__init__`` importing it runs first."""
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1)]


@cache
def imports_of(module: str) -> frozenset[str]:
    """Every module (of cloudrec or outside) that ``module`` imports directly, with the parent
    packages that the import initialises, except the module's own parents."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names: set[str] = set()
    for node in _top_level_imports(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            # ``from pkg import name`` reads name from pkg; name may be a submodule too.
            targets = [base] + [f"{base}.{a.name}" for a in node.names
                                if f"{base}.{a.name}" in MODULES]
        own_parents = set(_with_parents(module)[:-1])
        for target in targets:
            for name in _with_parents(target):
                if name in own_parents and name != target:
                    continue
                if name.split(".")[0] != "cloudrec" or name in MODULES:
                    names.add(name)
    names.discard(module)
    return frozenset(names)


def cloudrec_graph() -> dict[str, set[str]]:
    return {m: {n for n in imports_of(m) if n in MODULES} for m in MODULES}


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each as one
    cycle through it, shortest first by component size."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def strongconnect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10 * len(graph)))
    for v in sorted(graph):
        if v not in index:
            strongconnect(v)
    return [_cycle_through(c, graph) for c in sorted(components, key=len)]


def _cycle_through(component: list[str], graph: dict[str, set[str]]) -> list[str]:
    """One cycle inside a strongly connected component, from its first module back to it."""
    members, start = set(component), component[0]
    paths = {start: [start]}
    queue = [start]
    while queue:
        v = queue.pop(0)
        for w in sorted(graph[v] & members):
            if w == start:
                return paths[v] + [start]
            if w not in paths:
                paths[w] = paths[v] + [w]
                queue.append(w)
    return component


def _in(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def forbidden_chain(module: str) -> list[str] | None:
    """The shortest chain of module-level imports from ``module`` to the media plane or a
    media library, or None."""
    paths = {module: [module]}
    queue = [module]
    while queue:
        v = queue.pop(0)
        # Importing v also runs its parent packages' __init__ first.
        parents = {p for p in _with_parents(v)[:-1] if p in MODULES}
        for w in sorted(imports_of(v) | parents):
            if w in paths:
                continue
            paths[w] = paths[v] + [w]
            if _in(w, MEDIA_PLANE) or _in(w, MEDIA_LIBRARIES):
                return paths[w]
            if w in MODULES:
                queue.append(w)
    return None


def test_the_reader_sees_imports() -> None:
    """The reader itself: a module it must see importing another does."""
    assert "cloudrec" in MODULES and "cloudrec.api" in MODULES
    assert any(n.startswith("cloudrec.") for n in imports_of("cloudrec.api"))
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycles(graph) == [["a", "b", "c", "a"]]


def test_no_import_cycle() -> None:
    cycles = find_cycles(cloudrec_graph())
    report = "\n".join(" -> ".join(c) for c in cycles)
    assert not cycles, f"{len(cycles)} import cycle(s) among cloudrec modules:\n{report}"


def test_the_control_plane_does_not_import_the_media_plane() -> None:
    control = [m for m in MODULES if _in(m, CONTROL_PLANE)]
    assert control
    chains = [chain for m in control if (chain := forbidden_chain(m)) is not None]
    report = "\n".join(" -> ".join(chain) for chain in chains)
    assert not chains, (f"{len(chains)} control-plane module(s) reach the media plane or "
                        f"aiortc/aioice/av at import time:\n{report}")


def test_no_module_over_the_size_limit() -> None:
    sizes = {m: len(p.read_text().splitlines()) for m, p in MODULES.items()}
    over = sorted((n, m) for m, n in sizes.items() if n > MAX_LINES)
    report = "\n".join(f"{MODULES[m].relative_to(PACKAGE.parent)}: {n} lines" for n, m in over)
    assert not over, f"modules over {MAX_LINES} lines:\n{report}"


def test_the_api_app_loads_no_media_library() -> None:
    """What the front process maps: importing the app leaves PyAV and aiortc unloaded."""
    code = ("import sys, cloudrec.api.app; "
            "print(' '.join(sorted(m for m in ('av', 'aiortc', 'aioice') if m in sys.modules)))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "", f"importing cloudrec.api.app loads: {done.stdout.strip()}"
