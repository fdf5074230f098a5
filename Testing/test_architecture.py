"""The library's layout rules: no import cycle (function-local and type-checking imports included), packages
that import only downwards, a torch-free ground floor and parser, no Slicer import, `__all__` everywhere."""
from __future__ import annotations

import ast
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

LIBRARY = Path(__file__).resolve().parents[1] / "MedSegAdaptLib"
GUI_MODULES = ("slicer", "qt", "vtk", "ctk")


def _modules() -> dict[str, tuple[Path, bool]]:
    """{dotted module name: (file, is a package __init__)} of every module of the library."""
    modules = {}
    for path in sorted(LIBRARY.rglob("*.py")):
        parts = list(path.relative_to(LIBRARY.parent).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        modules[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return modules


MODULES = _modules()


def _imported(module: str, is_package: bool, node: ast.Import | ast.ImportFrom) -> list[str]:
    """Absolute names an import statement anywhere in `module` imports (a `from X import y` also names X.y)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if node.level:
        base = module.split(".") if is_package else module.split(".")[:-1]
        base = base[:len(base) - node.level + 1]
        target = ".".join(base + ([node.module] if node.module else []))
    else:
        target = node.module or ""
    return [target] + [f"{target}.{alias.name}" for alias in node.names]


def import_graph() -> dict[str, set[str]]:
    """{module: library modules it imports}, every import statement counted (function-local, under
    TYPE_CHECKING). Importing a.b.c runs a and a.b first: those count too, except the importer's own
    parent packages, which always run before it."""
    graph: dict[str, set[str]] = defaultdict(set)
    for module, (path, is_package) in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            for name in _imported(module, is_package, node):
                parts = name.split(".")
                for end in range(2, len(parts) + 1):
                    target = ".".join(parts[:end])
                    if target in MODULES and target != module and not module.startswith(target + "."):
                        graph[module].add(target)
                if name in MODULES and module.startswith(name + "."):  # an explicit import of its own package
                    graph[module].add(name)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one member (or a self-loop), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for successor in sorted(graph.get(node, ())):
            if successor not in index:
                visit(successor)
                low[node] = min(low[node], low[successor])
            elif successor in on_stack:
                low[node] = min(low[node], index[successor])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1 or node in graph.get(node, ()):
                found.append(sorted(component))

    for node in sorted(set(graph) | {m for targets in graph.values() for m in targets}):
        if node not in index:
            visit(node)
    return sorted(found)


def _package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def package_graph() -> dict[str, set[str]]:
    """{top-level package: the other top-level packages its modules import}."""
    packages: dict[str, set[str]] = defaultdict(set)
    for module, targets in import_graph().items():
        for target in targets:
            if _package(target) not in ("", _package(module)):
                packages[_package(module)].add(_package(target))
    return packages


def test_cycle_finder_finds_a_cycle_and_accepts_a_tree():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b", "c"}, "b": {"c"}}) == []
    assert cycles({"a": {"a"}}) == [["a"]]


def test_the_import_graph_sees_function_local_and_relative_imports(tmp_path):
    tree = ast.parse("def f():\n    from ..io import volume\n")
    node = next(n for n in ast.walk(tree) if isinstance(n, ast.ImportFrom))
    assert _imported("MedSegAdaptLib.inference.segmenter", False, node) == [
        "MedSegAdaptLib.io", "MedSegAdaptLib.io.volume"]
    graph = import_graph()
    assert "MedSegAdaptLib.core.errors" in graph["MedSegAdaptLib.cli.segment"]  # a top-level import
    assert "MedSegAdaptLib.inference" in graph["MedSegAdaptLib.cli.segment"]  # imported inside run_segment


def test_no_module_of_the_library_takes_part_in_an_import_cycle():
    assert cycles(import_graph()) == []


def test_packages_import_only_downwards():
    assert cycles(package_graph()) == []
    packages = package_graph()
    assert packages["core"] == set(), "core is the ground floor: it imports nothing else of the library"
    for low in ("core", "io", "knowledge", "evaluation"):
        assert "cli" not in packages[low] and "inference" not in packages[low]
    users = [name for name, targets in packages.items() if "cli" in targets]
    assert users == [], f"only the command line may import the command line: {users}"


def test_no_gui_toolkit_is_imported_anywhere_in_the_library():
    offenders = []
    for module, (path, is_package) in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for name in _imported(module, is_package, node):
                    if name.split(".")[0] in GUI_MODULES:
                        offenders.append(f"{module}: {name}")
    assert offenders == []


@pytest.mark.parametrize("module", sorted(m for m in MODULES if not m.endswith("__main__")))
def test_every_module_declares_its_public_names(module):
    path, _ = MODULES[module]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.Assign, ast.AnnAssign)):
            for target in node.targets if isinstance(node, ast.Assign) else [node.target]:
                names.update(getattr(e, "id", None) for e in (target.elts if isinstance(target, ast.Tuple) else [target]))
    assert "__all__" in names, f"{path} has no __all__"


def test_ground_floor_knowledge_base_and_command_line_parser_load_without_torch():
    code = ("import sys\n"
            "import MedSegAdaptLib.core, MedSegAdaptLib.core.axes, MedSegAdaptLib.core.errors\n"
            "from MedSegAdaptLib.knowledge import parse_report\n"
            "from MedSegAdaptLib.cli import build_parser\n"
            "build_parser().parse_args(['segment', 'x.nrrd', '-o', 'y.seg.nrrd', '--structure', 'liver'])\n"
            "heavy = ('torch', 'segment_anything', 'transformers', 'SimpleITK')\n"
            "heavy = sorted(m for m in heavy if m in sys.modules)\n"
            "print(','.join(heavy))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ""
