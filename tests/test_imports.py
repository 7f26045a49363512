"""The ``onepass`` package has no import cycle, and ``import onepass`` works on its own.

The graph is read from the source, not from a running interpreter: every
``import`` and ``from ... import`` of every module, including lazy ones inside
functions (only blocks under ``if TYPE_CHECKING:`` are left out, since they
never run). An edge ``A → B`` means running A's imports executes B:

* ``import onepass.x.y`` and ``from onepass.x.y import z`` execute
  ``onepass.x.y`` and, first, the ``__init__`` of every package on the way
  (``onepass.x``), except the packages that enclose A (they already ran, or
  are running, before A could);
* ``from onepass.x import y`` where ``y`` is a submodule executes
  ``onepass.x`` and ``onepass.x.y``; taking a name from a package's
  ``__init__`` (``from onepass.sweep import run_sweep``) depends on that
  ``__init__`` even from inside the package (that is how a package and its
  submodules end up in a cycle);
* relative imports are resolved against A's package.
"""
from __future__ import annotations

import ast
import pkgutil
import subprocess
import sys
from pathlib import Path

import onepass

PACKAGE = "onepass"


def modules() -> dict[str, Path]:
    """Every module of the package: dotted name → source file."""
    found = {PACKAGE: Path(onepass.__file__)}
    errors = []
    for info in pkgutil.walk_packages(onepass.__path__, PACKAGE + ".", onerror=errors.append):
        last = info.name.rsplit(".", 1)[-1]
        base = Path(info.module_finder.path)
        found[info.name] = base / last / "__init__.py" if info.ispkg else base / f"{last}.py"
    assert not errors, f"packages that failed to import while walking: {errors}"
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST):
    """Import nodes that can run (not under ``if TYPE_CHECKING:``)."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        stack.extend(ast.iter_child_nodes(node))


def _ancestors(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:k]) for k in range(1, len(parts))]


def dependencies(name: str, path: Path, known: set[str]) -> dict[str, int]:
    """The modules of the package that importing ``name`` executes: target → line."""
    is_package = path.name == "__init__.py"
    package = name if is_package else name.rpartition(".")[0]
    enclosing = set(_ancestors(name))
    out: dict[str, int] = {}

    def add(target: str, line: int, named: bool) -> None:
        """``target`` is executed, after the packages above it."""
        for above in _ancestors(target):
            if above not in enclosing and above != name:
                out.setdefault(above, line)
        if target != name and (named or target not in enclosing):
            out.setdefault(target, line)

    tree = ast.parse(path.read_text(), str(path))
    for node in sorted(_imports(tree), key=lambda n: (n.lineno, n.col_offset)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == PACKAGE or alias.name.startswith(PACKAGE + "."):
                    add(alias.name, node.lineno, False)
            continue
        if node.level:
            base = package.split(".")
            base = base[:len(base) - (node.level - 1)]
            module = ".".join(base + ([node.module] if node.module else []))
        else:
            module = node.module or ""
        if module != PACKAGE and not module.startswith(PACKAGE + "."):
            continue
        submodules = [f"{module}.{a.name}" for a in node.names if f"{module}.{a.name}" in known]
        add(module, node.lineno, len(submodules) < len(node.names))  # names from its __init__
        for submodule in submodules:
            add(submodule, node.lineno, False)
    return {t: line for t, line in out.items() if t in known}


def import_graph() -> tuple[dict[str, dict[str, int]], dict[str, Path]]:
    found = modules()
    known = set(found)
    return {name: dependencies(name, path, known) for name, path in found.items()}, found


def cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """One cycle through each strongly connected component of more than one module."""
    index, low, on_stack, stack, components = {}, {}, set(), [], []
    counter = [0]

    def connect(v):  # Tarjan, iterative
        work = [(v, iter(sorted(graph[v])))]
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        while work:
            node, children = work[-1]
            for w in children:
                if w not in index:
                    index[w] = low[w] = counter[0]
                    counter[0] += 1
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                    break
                if w in on_stack:
                    low[node] = min(low[node], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        w = stack.pop()
                        on_stack.discard(w)
                        component.append(w)
                        if w == node:
                            break
                    if len(component) > 1:
                        components.append(set(component))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return [_cycle_in(graph, component) for component in components]


def _cycle_in(graph, component: set[str]) -> list[str]:
    """A shortest cycle through the component's first module (breadth first)."""
    start = min(component)
    parents = {start: None}
    queue = [start]
    while queue:
        node = queue.pop(0)
        for w in sorted(graph[node]):
            if w == start:
                path = [node]
                while parents[path[-1]] is not None:
                    path.append(parents[path[-1]])
                return list(reversed(path)) + [start]
            if w in component and w not in parents:
                parents[w] = node
                queue.append(w)
    raise AssertionError("not a cycle")  # pragma: no cover


def describe(cycle: list[str], graph, files) -> str:
    root = Path(onepass.__file__).parent.parent
    steps = []
    for a, b in zip(cycle, cycle[1:]):
        steps.append(f"    {a} ({files[a].relative_to(root)}:{graph[a][b]}) imports {b}")
    return " → ".join(cycle) + "\n" + "\n".join(steps)


def test_the_package_has_no_import_cycle():
    graph, files = import_graph()
    assert len(graph) > 20 and "onepass.sweep" in graph  # the walk found the package
    found = cycles(graph)
    assert not found, "import cycles in onepass:\n" + "\n".join(
        describe(c, graph, files) for c in found)


def test_the_cycle_finder_finds_cycles():
    graph = {"a": {"b": 1}, "b": {"c": 2}, "c": {"a": 3, "d": 4}, "d": {}, "e": {"e": 5}}
    assert cycles(graph) == [["a", "b", "c", "a"]]


def test_imports_are_resolved_as_python_runs_them(tmp_path):
    known = {"onepass", "onepass.sweep", "onepass.sweep.plan", "onepass.sweep.executors",
             "onepass.sweep.executors.local", "onepass.experiment", "onepass.experiment.run"}
    source = tmp_path / "local.py"
    source.write_text(
        "from onepass.sweep.plan import RunSpec\n"       # own ancestors are not edges
        "def f():\n"
        "    from onepass.experiment import run\n"       # lazy; a submodule: both
        "    from .. import plan\n"                      # relative; sweep already runs
        "    import onepass.sweep\n"                     # nothing new runs
        "    from ..executors import local\n"            # itself
        "    from onepass.sweep import make_units\n"     # a name from an enclosing __init__
        "if TYPE_CHECKING:\n"
        "    from onepass.experiment.run import x\n")    # never runs
    deps = dependencies("onepass.sweep.executors.local", source, known)
    assert deps == {"onepass.sweep.plan": 1, "onepass.experiment": 3,
                    "onepass.experiment.run": 3, "onepass.sweep": 7}


def test_import_onepass_in_a_fresh_interpreter():
    done = subprocess.run([sys.executable, "-c", "import onepass"], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
