"""The library's packages form layers (docs/CONTRACTS.md, "Layers"): a module imports only from its own
layer or the ones below, and no two packages import each other, whether the import sits at the top of
a file or inside a function. Read from the source with ast, so nothing is imported to check it."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

# Folders of the repository and the import names setup.py gives them.
SOURCES = {"cinescene": "cinescene", "kernels": "cinescene.kernels", "launch": "cinescene.launch"}

# Lowest first. A unit is a package or a top-level module; a module belongs to the longest unit that
# names it or one of its parents. `cinescene` is the package's own __init__ (its version) only.
LAYERS = [
    (
        "cinescene",
        "cinescene.errors",
        "cinescene.log",
        "cinescene.secrets",
        "cinescene.stack",
        "cinescene.rng",
        "cinescene.host_memory",
        "cinescene.durable",
        "cinescene.locks",
        "cinescene.hub",
        "cinescene.provenance",
        "cinescene.run_dir",
        "cinescene.kernels",
    ),
    ("cinescene.config",),
    ("cinescene.models", "cinescene.data", "cinescene.distributed"),
    ("cinescene.ckpt", "cinescene.plan"),
    ("cinescene.sampling", "cinescene.eval"),
    ("cinescene.train",),
    ("cinescene.slurm",),
    ("cinescene.launch", "cinescene.__main__"),
]
LAYER_OF = {unit: level for level, units in enumerate(LAYERS) for unit in units}


def module_files(root: Path, sources: dict[str, str]) -> dict[str, Path]:
    """Import name -> file, for every Python file under the source folders."""
    modules = {}
    for folder, name in sources.items():
        for path in sorted((root / folder).rglob("*.py")):
            parts = list(path.relative_to(root / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join([name, *parts])] = path
    return modules


def imports_of(module: str, path: Path, known: set[str]) -> Iterator[tuple[str, int]]:
    """(imported module, line) for every import anywhere in the file (module level, functions, classes).

    ``from package import name`` counts as importing ``package.name`` when that is a module.
    """
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                candidate = f"{target}.{alias.name}"
                yield (candidate if candidate in known else target), node.lineno


def unit_of(module: str) -> str | None:
    if module == "cinescene":
        return module
    parts = module.split(".")
    for end in range(len(parts), 1, -1):
        if ".".join(parts[:end]) in LAYER_OF:
            return ".".join(parts[:end])
    return None


def all_imports(modules: dict[str, Path]) -> dict[str, list[tuple[str, int]]]:
    """Module -> its imports of the library (``cinescene...``), each with its line."""
    known = set(modules)
    return {
        module: list(
            dict.fromkeys(
                (t, line) for t, line in imports_of(module, path, known) if t.split(".")[0] == "cinescene"
            )
        )
        for module, path in modules.items()
    }


def unplaced_modules(modules: dict[str, Path]) -> list[str]:
    return sorted(m for m in modules if unit_of(m) is None)


def upward_imports(modules: dict[str, Path], imports: dict[str, list[tuple[str, int]]]) -> list[str]:
    """Imports of a higher layer, one line each: ``file:line: unit (layer i) imports module (layer j)``."""
    found = []
    for module, path in modules.items():
        source = unit_of(module)
        for target, line in imports[module]:
            dest = unit_of(target)
            if source and dest and LAYER_OF[dest] > LAYER_OF[source]:
                found.append(
                    f"{path.relative_to(REPO) if path.is_relative_to(REPO) else path}:{line}: {source} "
                    f"(layer {LAYER_OF[source]}) imports {target} (layer {LAYER_OF[dest]})"
                )
    return found


def unit_graph(imports: dict[str, list[tuple[str, int]]]) -> dict[str, set[str]]:
    """Unit -> the other units it imports."""
    graph: dict[str, set[str]] = {}
    for module, targets in imports.items():
        source = unit_of(module)
        for target, _ in targets:
            dest = unit_of(target)
            if source and dest and dest != source:
                graph.setdefault(source, set()).add(dest)
    return graph


def cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the graph (its units in order, the first repeated at the end), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start)):
            return found
    return None


@pytest.fixture(scope="module")
def library() -> tuple[dict[str, Path], dict[str, list[tuple[str, int]]]]:
    modules = module_files(REPO, SOURCES)
    return modules, all_imports(modules)


def test_every_module_has_a_layer(library):
    modules, _ = library
    assert len(modules) > 100
    assert unplaced_modules(modules) == [], "add the new package to LAYERS here and in docs/CONTRACTS.md"


def test_no_module_imports_a_higher_layer(library):
    assert upward_imports(*library) == []


def test_no_two_packages_import_each_other(library):
    assert cycle(unit_graph(library[1])) is None


def test_the_check_sees_imports_inside_functions_and_relative_ones(tmp_path):
    # A miniature library: ckpt imports train inside a function, config imports models relatively.
    files = {
        "pkg/__init__.py": "",
        "pkg/ckpt/__init__.py": "",
        "pkg/ckpt/export.py": "def f():\n    from cinescene.train import rng\n    return rng\n",
        "pkg/config/__init__.py": "",
        "pkg/config/schema.py": "import os\n\n\nclass A:\n    def m(self):\n        from ..models import x\n",
        "pkg/models/__init__.py": "",
        "pkg/models/x.py": "from cinescene.config import schema\n",
        "pkg/train/__init__.py": "",
        "pkg/train/rng.py": "",
        "pkg/newpkg/__init__.py": "",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    modules = module_files(tmp_path, {"pkg": "cinescene"})
    assert unplaced_modules(modules) == ["cinescene.newpkg"]
    imports = all_imports(modules)
    found = upward_imports(modules, imports)
    assert [line.split(": ", 1)[1] for line in found] == [
        "cinescene.ckpt (layer 3) imports cinescene.train.rng (layer 5)",
        "cinescene.config (layer 1) imports cinescene.models.x (layer 2)",
    ]
    assert found[0].startswith(f"{tmp_path / 'pkg/ckpt/export.py'}:2:")
    assert cycle(unit_graph(imports)) == ["cinescene.config", "cinescene.models", "cinescene.config"]
