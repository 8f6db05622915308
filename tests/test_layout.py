"""The package layout keeps its rules (CONTRIBUTING.md, "The layout"): every module sits on a floor and imports only
from its own floor or below, there are no import circles, and inference never imports ``hubclf.train``.

The imports are read with ``ast`` from the source, function-level (lazy) imports included; imports under
``if TYPE_CHECKING:`` are annotations, not imports, and are skipped.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "hubclf"

# Module (or package: its submodules too, unless listed themselves) -> floor. Mirrors CONTRIBUTING.md's table.
FLOORS: dict[str, float] = {
    "hubclf._version": 0, "hubclf._faults": 0, "hubclf.atomic": 0, "hubclf.logs": 0, "hubclf.text": 0,
    "hubclf.tensor_file": 0,
    "hubclf.models": 1, "hubclf._timm_hook": 1,
    "hubclf.config_check": 2, "hubclf.refs": 2, "hubclf.stats": 2, "hubclf.hardware": 2, "hubclf.plots": 2,
    "hubclf.data": 3, "hubclf.card": 3, "hubclf.publish": 3, "hubclf.remote_code": 3,
    "hubclf.hub": 4, "hubclf.metrics": 4,
    "hubclf.train.config": 5.0,
    # thin re-exports of old paths, kept for one release
    "hubclf.train.data": 5.0, "hubclf.train.csv_labels": 5.0, "hubclf.train.metrics": 5.0,
    "hubclf.train.hardware": 5.0,
    "hubclf.train.safety": 5.1, "hubclf.train.background": 5.1, "hubclf.train.checkpoints": 5.1,
    "hubclf.train.stages": 5.1,
    "hubclf.train.recipes": 5.1, "hubclf.train.features": 5.1, "hubclf.train.preflight": 5.1,
    "hubclf.train.input_size": 5.1, "hubclf.train.resume_check": 5.1,
    "hubclf.train.setup": 5.2,
    "hubclf.train.outputs": 5.3,
    "hubclf.train.loop": 5.4,
    "hubclf.train.strategy": 5.5, "hubclf.train.lr_find": 5.5,
    "hubclf.train.api": 5.6,
    "hubclf.predict": 5, "hubclf.evaluate": 5, "hubclf.export": 5, "hubclf.app": 5, "hubclf.convert": 5,
    "hubclf.compare": 6,
    "hubclf.cli": 7, "hubclf.demo": 7,
}  # fmt: skip
# Facades: they import their parts lazily (by name, through __getattr__), so nothing below may import them.
FACADES = {"hubclf": 8, "hubclf.train": 5.7}
INFERENCE = ("hubclf.predict", "hubclf.evaluate", "hubclf.export", "hubclf.app")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def floor(module: str) -> float:
    if module in FACADES:
        return FACADES[module]
    for prefix in sorted(FLOORS, key=len, reverse=True):
        if module == prefix or module.startswith(prefix + "."):
            return FLOORS[prefix]
    raise KeyError(module)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports_of(module: str) -> set[str]:
    """The hubclf modules ``module`` imports anywhere in its source (module level or inside functions)."""
    tree = ast.parse(MODULES[module].read_text(encoding="utf-8"))
    package = module if MODULES[module].name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.split(".")[0] == "hubclf")
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package, one level up per extra dot
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            if base.split(".")[0] == "hubclf":
                for alias in node.names:
                    candidate = f"{base}.{alias.name}"
                    found.add(candidate if candidate in MODULES else base)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    found.discard(module)
    return found


GRAPH = {module: imports_of(module) for module in MODULES}


def test_every_module_has_a_floor():
    missing = []
    for module in MODULES:
        try:
            floor(module)
        except KeyError:
            missing.append(module)
    assert not missing, f"add these modules to FLOORS (and CONTRIBUTING.md's table): {missing}"


def test_no_import_runs_up_a_floor():
    upward = [
        f"{module} (floor {floor(module)}) imports {target} (floor {floor(target)})"
        for module, targets in GRAPH.items()
        for target in sorted(targets)
        if floor(target) > floor(module)
    ]
    assert not upward, "\n".join(upward)


def test_no_import_circles():
    circles: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def walk(module: str) -> None:
        state[module] = 1
        path.append(module)
        for target in sorted(GRAPH.get(module, ())):
            if state.get(target) == 1:
                circles.append(path[path.index(target) :] + [target])
            elif target in GRAPH and target not in state:
                walk(target)
        path.pop()
        state[module] = 2

    for module in sorted(GRAPH):
        if module not in state:
            walk(module)
    assert not circles, "\n".join(" -> ".join(circle) for circle in circles)


@pytest.mark.parametrize("module", INFERENCE)
def test_inference_never_imports_training(module):
    seen, todo = set(), [module]
    while todo:
        current = todo.pop()
        for target in GRAPH.get(current, ()):
            assert not (target == "hubclf.train" or target.startswith("hubclf.train.")), (
                f"{module} reaches {target} (through {current})"
            )
            if target not in seen:
                seen.add(target)
                todo.append(target)


def test_the_layout_test_sees_real_edges():
    # A layout test that found no imports would pass vacuously.
    assert "hubclf.hub" in GRAPH["hubclf.train.outputs"] and "hubclf.data.images" in GRAPH["hubclf.predict"]
    assert floor("hubclf.data.images") == 3 and floor("hubclf.train.loop") == 5.4
