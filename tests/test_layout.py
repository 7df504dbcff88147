"""The package's layout: no import cycles, a model file that stands alone, small modules.

The import graph is read from the source (``ast``): every ``import`` and
``from ... import`` of a module of the package, at any depth (imports inside
functions count: they close a cycle as surely at call time), plus
``importlib.import_module`` with a literal name, plus any string constant
that names a module of the package (the CLI's router imports its commands by
names kept in a table: an import all the same). The root ``__init__``'s
imports inside functions are its lazy re-exports of the public API (``load``,
``sharded_load``, ``__getattr__``) and are left out; its module-level imports
count.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "talkie_kernels"

MAX_LINES = 450


#: Modules of the package without Python source: the compiled extension
#: (``native`` imports it; it imports nothing of the package).
EXTENSIONS = ("talkie_kernels._native",)


def module_names() -> dict:
    """Dotted module name -> path, for every Python file of the package."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _top_level(tree: ast.Module):
    """The nodes of ``tree`` outside any function or class body."""
    todo = list(tree.body)
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)):
            continue
        yield node
        todo.extend(ast.iter_child_nodes(node))


def imports_of(name: str, path: Path, modules: dict) -> set:
    """The package's modules that module ``name`` (at ``path``) imports."""
    tree = ast.parse(path.read_text(), str(path))
    nodes = _top_level(tree) if name == "talkie_kernels" else ast.walk(tree)
    is_package = path.name == "__init__.py"

    def resolve(dotted: str):
        # The longest prefix of `dotted` that is a module of the package.
        parts = dotted.split(".")
        while parts and ".".join(parts) not in modules:
            parts.pop()
        return ".".join(parts) or None

    def relative(level: int, module) -> str:
        base = name.split(".")
        if not is_package:
            base.pop()
        base = base[: len(base) - (level - 1)]
        return ".".join(base + ([module] if module else []))

    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            source = relative(node.level, node.module) if node.level else node.module
            # `from pkg import sub` imports pkg.sub when that is a module.
            targets = [f"{source}.{alias.name}" for alias in node.names]
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            text = node.args[0].value
            targets = [relative(len(text) - len(text.lstrip(".")), text.lstrip(".")) if text.startswith(".") else text]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in modules:
            targets = [node.value]  # a module imported by a name held in data (cli.COMMANDS)
        else:
            continue
        for target in targets:
            module = resolve(target)
            if module is not None and module != name:
                found.add(module)
    return found


def import_graph() -> dict:
    modules = module_names()
    known = {**modules, **dict.fromkeys(EXTENSIONS)}
    return {name: imports_of(name, path, known) for name, path in modules.items()}


def cycles(graph: dict) -> list:
    """The strongly connected components of more than one module (Tarjan), sorted."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
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
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(out)


def test_the_graph_sees_function_level_and_relative_imports():
    graph = import_graph()
    # generate.py imports launch inside sharded_loading; loader imports models.talkie at the top.
    assert "talkie_kernels.launch" in graph["talkie_kernels.generate"]
    assert "talkie_kernels.models.talkie" in graph["talkie_kernels.loader"]
    assert "talkie_kernels.models.pipeline" in graph["talkie_kernels.models.talkie"]
    # The root's lazy re-exports are not edges; its module-level imports are.
    assert "talkie_kernels.loader" not in graph["talkie_kernels"]
    assert "talkie_kernels.native" in graph["talkie_kernels"]
    assert graph["talkie_kernels.native"] == {"talkie_kernels._checks", "talkie_kernels._native"}
    # The router's table of commands: imports by name.
    assert "talkie_kernels.generate" in graph["talkie_kernels.cli"]
    # A cycle is found as one component.
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycles():
    found = cycles(import_graph())
    assert found == [], "import cycles: " + "; ".join(" <-> ".join(c) for c in found)


#: What the model file must not pull in: loading, launching, serving, the CLIs, the bench.
NOT_FROM_THE_MODEL = (
    "talkie_kernels.distributed", "talkie_kernels.loader", "talkie_kernels.launch",
    "talkie_kernels.lost_peer", "talkie_kernels.server", "talkie_kernels.generate",
    "talkie_kernels.cli", "talkie_kernels.convert", "talkie_kernels.checkpoint",
    "talkie_kernels.bench",
)


def test_the_model_file_imports_none_of_the_entry_points():
    run = subprocess.run(
        [sys.executable, "-c",
         "import sys, talkie_kernels.models.talkie; "
         "print('\\n'.join(m for m in sys.modules if m.startswith('talkie_kernels')))"],
        capture_output=True, text=True, timeout=120,
    )
    assert run.returncode == 0, run.stderr
    loaded = set(run.stdout.split())
    assert "talkie_kernels.models.talkie" in loaded
    bad = sorted(
        m for m in loaded
        if any(m == n or m.startswith(n + ".") for n in NOT_FROM_THE_MODEL)
    )
    assert bad == [], bad


def test_modules_are_small():
    sizes = {
        str(path.relative_to(ROOT)): len(path.read_text().splitlines())
        for path in module_names().values()
        if "testing" not in path.relative_to(PACKAGE).parts
    }
    big = {p: n for p, n in sizes.items() if n > MAX_LINES}
    assert big == {}, big
