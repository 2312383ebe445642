"""The layout of `helpers/`: layers that only import downwards, no import cycles, and a teaching
core that never imports the notebook runtime or the tooling (helpers/__init__.py lists the
layers). Every import counts, function-level ones included: they are read from the source."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

# The source's import graph: the same with any versions.
pytestmark = pytest.mark.versionless

PACKAGE = Path(__file__).resolve().parent.parent / "helpers"
# Each module's layer; a module may import its own layer and the ones below it.
LAYERS = {
    "helpers": 0, "helpers.differences": 0, "helpers.threads": 0, "helpers.data": 0,
    "helpers.compat": 0, "helpers.model": 1, "helpers.training": 2, "helpers.experiments": 3,
    "helpers.notebook": 4, "helpers.tooling": 5, "helpers.doctor": 5,
}
CORE_LAYERS = {0, 1, 2, 3}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(module: str) -> int:
    """The layer of `module`: that of the longest entry of LAYERS it is in."""
    owners = [name for name in LAYERS if module == name or module.startswith(name + ".")]
    return LAYERS[max(owners, key=len)]


def helpers_imports(path: Path) -> set[str]:
    """The helpers modules `path` imports (``from helpers.x import y`` counts as helpers.x.y
    when that is a module, else as helpers.x)."""
    imported = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                candidate = f"{node.module}.{alias.name}"
                imported.add(candidate if candidate in MODULES else node.module)
    return {name for name in imported if name == "helpers" or name.startswith("helpers.")}


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}
GRAPH = {name: helpers_imports(path) - {name} for name, path in MODULES.items()}


def test_every_module_has_a_layer():
    assert all(layer(name) is not None for name in MODULES)
    assert set(MODULES) >= {"helpers.compat", "helpers.differences", "helpers.training",
                            "helpers.experiments", "helpers.notebook", "helpers.tooling"}


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_only_go_down(module):
    upward = sorted(name for name in GRAPH[module] if layer(name) > layer(module))
    assert not upward, f"{module} (layer {layer(module)}) imports higher layers: {upward}"


def test_the_core_never_imports_the_notebook_runtime_or_the_tooling():
    core = [name for name in MODULES if layer(name) in CORE_LAYERS]
    offenders = {name: sorted(i for i in GRAPH[name] if layer(i) not in CORE_LAYERS)
                 for name in core}
    assert not {name: found for name, found in offenders.items() if found}
    assert len(core) >= 15  # the check saw the whole core (data, model, training, experiments)


def test_no_import_cycles():
    # a package's __init__ importing its own submodules is how a package exports; a cycle is a
    # chain of imports that comes back to where it started through other modules
    def edges(name):
        return {i for i in GRAPH[name] if not i.startswith(name + ".")}

    visiting, done, cycles = [], set(), []

    def visit(name):
        if name in visiting:
            cycles.append(visiting[visiting.index(name):] + [name])
            return
        if name in done or name not in GRAPH:
            return
        visiting.append(name)
        for imported in sorted(edges(name)):
            visit(imported)
        visiting.pop()
        done.add(name)

    for name in sorted(GRAPH):
        visit(name)
    assert not cycles, cycles


def test_the_graph_sees_a_known_edge():
    """The parser finds imports at all: the training loop imports the differences."""
    assert "helpers.differences" in set().union(*(GRAPH[m] for m in MODULES
                                                   if m.startswith("helpers.training")))


@pytest.mark.parametrize("module", ["helpers.differences", "helpers.threads",
                                    "helpers.experiments.compare"])
def test_imports_without_a_framework(module):
    """Plain data and statistics load no TensorFlow (a JAX or analysis-only user imports them)."""
    code = (f"import sys, {module}; "
            "print(sorted(m for m in ('tensorflow', 'keras') if m in sys.modules))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True).stdout.strip()
    assert loaded == "[]", f"importing {module} loaded {loaded}"
