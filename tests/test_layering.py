"""The import graph of the installed packages, read from the sources with `ast`: every import counts,
also the ones inside functions (the way a cycle hides).

Layers, bottom first (docs/design.md): nothing imports a module of a higher layer, and no module
imports itself back through others. Imports under `if TYPE_CHECKING:` never run: they count for
the layers (a type from above is still a dependency upward) but not for cycles of running code.
"""

from __future__ import annotations

import ast
import fnmatch
from pathlib import Path

import pytest

from conftest import PROJECT_DIR

# The source folder of each import package (pyproject.toml's package-dir).
PACKAGE_DIRS = {"mlcanary": PROJECT_DIR / "mlcanary", "mlcanary.components": PROJECT_DIR / "components",
                "mlcanary.policies": PROJECT_DIR / "policies"}
LAYERS = (
    ("components", ["mlcanary.components", "mlcanary.components.*"]),
    ("policies", ["mlcanary.policies", "mlcanary.policies.*"]),
    ("local runtime", ["mlcanary.local_runtime", "mlcanary.local_runtime.*"]),
    ("the gate", ["mlcanary.check", "mlcanary.policy_config", "mlcanary.violation_text", "mlcanary.console"]),
    ("rollout", ["mlcanary.rollout", "mlcanary.rollout.*"]),
    ("command line", ["mlcanary", "mlcanary.cli", "mlcanary.cli_support", "mlcanary.*_cli"]),
)


def modules() -> dict[str, Path]:
    """Module name -> source file, for every module pyproject.toml installs."""
    found = {}
    for package, folder in PACKAGE_DIRS.items():
        # components/ and policies/ are flat; mlcanary/ holds the subpackages local_runtime and rollout
        for path in folder.rglob("*.py") if package == "mlcanary" else folder.glob("*.py"):
            parts = path.relative_to(folder).with_suffix("").parts
            found[".".join([package, *(p for p in parts if p != "__init__")])] = path
    return found


MODULES = modules()


def _owner(imported: str) -> str | None:
    """The module of ours an import name lands in (`a.b.name` -> `a.b` when `name` is not a module)."""
    while imported and imported not in MODULES:
        imported = imported.rpartition(".")[0]
    return imported or None


def _type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imports_of(module: str) -> tuple[set[str], set[str]]:
    """(imports that run, imports for type checking only): our modules that `module` imports."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    running, typing_only = set(), set()

    def visit(node: ast.AST, only_types: bool) -> None:
        if isinstance(node, ast.If) and _type_checking(node):
            for child in node.body:
                visit(child, True)
            for child in node.orelse:
                visit(child, only_types)
            return
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package
                for _ in range(node.level - 1):
                    anchor = anchor.rpartition(".")[0]
                base = f"{anchor}.{base}" if base else anchor
            names = [f"{base}.{alias.name}" for alias in node.names]
        for name in names:
            owner = _owner(name)
            if owner and owner != module:
                (typing_only if only_types else running).add(owner)
        for child in ast.iter_child_nodes(node):
            visit(child, only_types)

    visit(ast.parse(path.read_text()), False)
    return running, typing_only - running


def layer_of(module: str) -> int:
    matches = [i for i, (_, patterns) in enumerate(LAYERS) if any(fnmatch.fnmatchcase(module, p) for p in patterns)]
    assert matches, f"{module} is in no layer of tests/test_layering.py: add it where it belongs (docs/design.md)"
    return matches[0]


def test_the_sources_are_found():
    assert {"mlcanary.components.spec", "mlcanary.policies.azure_ml", "mlcanary.local_runtime.server",
            "mlcanary.rollout.runner", "mlcanary.cli"} <= set(MODULES)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_nothing_imports_a_layer_above_it(module):
    running, typing_only = imports_of(module)
    upward = sorted(m for m in running | typing_only if layer_of(m) > layer_of(module))
    assert not upward, (f"{module} ({LAYERS[layer_of(module)][0]}) imports from a layer above it: "
                        + ", ".join(f"{m} ({LAYERS[layer_of(m)][0]})" for m in upward))


def test_components_import_only_components():
    for module in (m for m in MODULES if m.startswith("mlcanary.components")):
        running, typing_only = imports_of(module)
        assert all(m.startswith("mlcanary.components") for m in running | typing_only), module


def test_no_import_cycle():
    graph = {module: imports_of(module)[0] for module in MODULES}
    state: dict[str, str] = {}  # module -> "open" while on the path, "done" after
    path: list[str] = []

    def walk(module: str) -> None:
        state[module] = "open"
        path.append(module)
        for imported in sorted(graph[module]):
            if state.get(imported) == "open":
                cycle = path[path.index(imported):] + [imported]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if imported not in state:
                walk(imported)
        path.pop()
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            walk(module)


def test_the_checker_sees_an_import_inside_a_function(tmp_path, monkeypatch):
    """The way the old cycles hid: components importing the runtime inside a function."""
    hidden = tmp_path / "hidden.py"
    hidden.write_text("def f():\n    from mlcanary.local_runtime.client import RuntimeClient\n    return RuntimeClient\n")
    monkeypatch.setitem(MODULES, "mlcanary.components.hidden", hidden)
    running, _ = imports_of("mlcanary.components.hidden")
    assert running == {"mlcanary.local_runtime.client"}
    with pytest.raises(AssertionError, match="imports from a layer above it"):
        test_nothing_imports_a_layer_above_it("mlcanary.components.hidden")
