"""The package's layers (docs/development.md): imports point one way, no module imports
another inside a function to dodge a cycle, there are no cycles, and the short module
names are the same module objects as their targets.

The layer order is read from the picture in docs/development.md, so the picture and the
imports cannot drift apart."""

from __future__ import annotations

import ast
import importlib
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "python" / "attnvar"
DOC = ROOT / "docs" / "development.md"
# Top-level modules of the package that sit outside the layers: the extension, its
# version check and build record (imported by everything), the alias finder.
BASE = {"attnvar._core", "attnvar._build_info", "attnvar._torch_check", "attnvar._aliases"}


def layer_order() -> list[str]:
    """The layers, lowest first, from the fenced block after <!-- layers --> in the doc."""
    text = DOC.read_text()
    block = re.search(r"<!-- layers -->\s*```text\n(.*?)```", text, re.S)
    assert block, "docs/development.md lost its layer picture (<!-- layers --> block)"
    # One layer a line, its name in the first column (indented lines continue the text).
    names = [line.split()[0] for line in block.group(1).splitlines() if line[:1].isalpha()]
    return list(reversed(names))


def modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


MODULES = modules()


def resolve(module: str, node: ast.ImportFrom | ast.Import, is_package: bool) -> list[str]:
    """The attnvar modules an import statement names (submodules where it names them)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name.split(".")[0] == "attnvar"]
    if node.level:
        base = module.split(".") if is_package else module.split(".")[:-1]
        base = base[: len(base) - (node.level - 1)]
        target = ".".join(base + ([node.module] if node.module else []))
    else:
        target = node.module or ""
    if target.split(".")[0] != "attnvar":
        return []
    out = []
    for alias in node.names:
        sub = f"{target}.{alias.name}"
        out.append(sub if sub in MODULES or sub in BASE else target)
    return out


def imports(module: str) -> tuple[set[str], list[tuple[int, str]]]:
    """(imports at module level, [(line, target)] of imports inside a function);
    imports under ``if TYPE_CHECKING:`` are for annotations and do not count."""
    path = MODULES[module]
    tree = ast.parse(path.read_text())
    top, inner = set(), []
    is_package = path.name == "__init__.py"

    def visit(node, in_function):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and ast.unparse(child.test) == "TYPE_CHECKING":
                continue  # annotations only: never executed, so never a dependency
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                for target in resolve(module, child, is_package):
                    (inner.append((child.lineno, target)) if in_function else top.add(target))
            visit(child, in_function or isinstance(
                child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

    visit(tree, False)
    return top, inner


def layer_of(module: str, order: list[str]) -> int | None:
    parts = module.split(".")
    if module in BASE or len(parts) == 1:
        return None  # the package itself re-exports; checked separately
    name = parts[1]
    if name == "__main__":
        name = "cli"
    assert name in order, f"{module}: its layer {name!r} is not in the picture"
    return order.index(name)


def test_the_picture_names_every_subpackage():
    order = layer_order()
    present = {m.split(".")[1] for m in MODULES if m.count(".") >= 1 and m not in BASE}
    present = {"cli" if p == "__main__" else p for p in present}
    assert present == set(order), (sorted(present), order)


def test_imports_point_down_the_layers():
    order = layer_order()
    bad = []
    for module in MODULES:
        mine = layer_of(module, order)
        if mine is None:
            continue
        for target in imports(module)[0]:
            theirs = layer_of(target, order)
            if theirs is not None and theirs > mine:
                bad.append(f"{module} ({order[mine]}) imports {target} ({order[theirs]})")
    assert not bad, "\n".join(bad)


def test_util_is_a_leaf():
    for module in MODULES:
        if module.startswith("attnvar.util"):
            outside = {t for t in imports(module)[0] if not t.startswith("attnvar.util")}
            assert not outside, (module, outside)


def test_the_package_root_imports_only_the_engine_eagerly():
    top, _ = imports("attnvar")
    assert {t.split(".")[1] for t in top if t.count(".")} <= {"engine", "_core", "_aliases",
                                                               "_build_info", "_torch_check"}
    code = ("import sys, attnvar; print(sorted({m.split('.')[1] for m in sys.modules "
            "if m.startswith('attnvar.')}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    loaded = set(eval(out))  # noqa: S307 - our own printout of a list of names
    assert not loaded & {"study", "analysis", "report", "cli"}, loaded


def test_no_package_import_hides_inside_a_function():
    hidden = [f"{module}:{line} imports {target}" for module in MODULES
              for line, target in imports(module)[1]]
    assert not hidden, "\n".join(hidden)


def test_no_import_cycles():
    graph = {m: {t for t in imports(m)[0] if t in MODULES} for m in MODULES}
    state: dict[str, int] = {}
    stack: list[str] = []

    def walk(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for t in sorted(graph[m]):
            if state.get(t) == 1:
                cycle = stack[stack.index(t):] + [t]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if t not in state:
                walk(t)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            walk(m)


def test_short_names_are_the_same_modules():
    import attnvar
    from attnvar import _aliases

    for alias, target in _aliases.ALIASES.items():
        assert importlib.import_module(alias) is importlib.import_module(target), alias
        assert getattr(attnvar, alias.split(".")[1]) is importlib.import_module(target)
        assert importlib.import_module(target).__spec__.name == target
    from attnvar.analysis.metrics.contrast import distance_levels
    from attnvar.metrics.contrast import distance_levels as via_alias

    assert via_alias is distance_levels
    with pytest.raises(AttributeError):
        attnvar.no_such_name  # noqa: B018


def test_the_analysis_draws_nothing():
    """H1–H4 compute tables only: the analysis layer never loads matplotlib."""
    code = ("import sys, attnvar.analysis, attnvar.analysis.hypotheses; "
            "print('matplotlib' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "False"
