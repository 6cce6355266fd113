"""Dependencies point down and never come back round (ARCHITECTURE.md, STYLE.md rule 25).

The layers are the import-linter contracts in ``pyproject.toml``; this file runs them, and
checks on the whole module graph (imports inside functions included) that no module
reaches itself through its imports, and that no module uses another's private names.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grimp
import pytest

import metronome

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "metronome"


@pytest.fixture(scope="module")
def graph() -> grimp.ImportGraph:
    # the checkout under test, not another installed copy
    assert Path(metronome.__file__).resolve().parent == PACKAGE
    return grimp.build_graph("metronome", cache_dir=None)


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _sources() -> Iterator[tuple[str, Path, ast.Module]]:
    for path in sorted(PACKAGE.rglob("*.py")):
        yield _module_name(path), path, ast.parse(path.read_text(), str(path))


def _imported(module: str, path: Path, node: ast.Import | ast.ImportFrom) -> list[list[str]]:
    """Per name an import statement brings in, the metronome modules it may be: ``from
    metronome.events import fields`` is the module ``metronome.events.fields``, ``from
    metronome.store import open_store`` a name of ``metronome.store``."""
    if isinstance(node, ast.Import):
        return [[a.name] for a in node.names if a.name.split(".")[0] == "metronome"]
    if node.level:  # relative: from the module's package, up level - 1 more
        package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
        base = ".".join(package[: len(package) - node.level + 1])
        target = f"{base}.{node.module}" if node.module else base
    else:
        target = node.module or ""
    if target.split(".")[0] != "metronome":
        return []
    return [[f"{target}.{alias.name}", target] for alias in node.names]


def _is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def test_import_contracts_hold() -> None:
    """The layers and acyclic-siblings contracts of pyproject.toml ([tool.importlinter])."""
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from importlinter.cli import lint_imports;"
            " sys.exit(lint_imports(no_cache=True, no_logo=True))",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_imports_inside_functions_are_in_the_checked_graph(graph: grimp.ImportGraph) -> None:
    """The contracts and the cycle check see the imports made inside functions too."""
    modules = graph.modules
    inside: list[tuple[str, list[str]]] = []
    for module, path, tree in _sources():
        for function in ast.walk(tree):
            if isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef):
                for node in ast.walk(function):
                    if isinstance(node, ast.Import | ast.ImportFrom):
                        inside += [(module, names) for names in _imported(module, path, node)]
    assert inside, "no import inside a function left to check"
    unseen = [
        (importer, names[0])
        for importer, names in inside
        if not any(
            graph.direct_import_exists(importer=importer, imported=n) for n in names if n in modules
        )
    ]
    assert not unseen


def test_no_module_reaches_itself_through_its_imports(graph: grimp.ImportGraph) -> None:
    """No import cycle between modules, however long, through any kind of import."""
    cycles = []
    for module in sorted(graph.modules):
        for imported in sorted(graph.find_modules_directly_imported_by(module)):
            back = graph.find_shortest_chain(importer=imported, imported=module)
            if back is not None:
                cycles.append(" -> ".join((module, *back)))
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_no_module_imports_another_modules_private_names() -> None:
    """``from metronome.x import _helper`` reaches into x: make the name public, or move it."""
    private = []
    for module, path, tree in _sources():
        for node in ast.walk(tree):
            if not isinstance(node, ast.ImportFrom):
                continue
            for names in _imported(module, path, node):
                target = names[-1]
                name = names[0].rsplit(".", 1)[1]
                if target != module and _is_private(name):
                    private.append(f"{module}:{node.lineno} imports {target}.{name}")
                if any(_is_private(part) for part in target.split(".")):
                    private.append(f"{module}:{node.lineno} imports the private module {target}")
    assert not private, "\n".join(private)
