"""Static checks of the Slicer module's files (no Slicer needed): UI names, CMake lists, imports.

The GUI runs only inside Slicer, so a widget name mistyped in the code or a file missing from
the CMake lists would only show there; these tests catch both here.
"""
from __future__ import annotations

import ast
import re
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest

MODULE_DIR = Path(__file__).resolve().parents[1] / "MedSegAdapt"
MODULE_FILE = MODULE_DIR / "MedSegAdapt.py"
LOGIC_FILE = MODULE_DIR / "MedSegAdaptLogic.py"
UI_FILE = MODULE_DIR / "Resources" / "UI" / "MedSegAdapt.ui"
CMAKE_FILE = MODULE_DIR / "CMakeLists.txt"


def ui_tree() -> ElementTree.Element:
    return ElementTree.parse(UI_FILE).getroot()


def ui_widget_names() -> list[str]:
    return [w.get("name") for w in ui_tree().iter("widget")]


def ui_code_names(path: Path) -> set[str]:
    """Every ``self.ui.NAME`` the module code uses."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute)
                and node.value.attr == "ui" and isinstance(node.value.value, ast.Name)
                and node.value.value.id == "self"):
            names.add(node.attr)
    return names


def cmake_list(variable: str) -> list[str]:
    text = CMAKE_FILE.read_text()
    module_name = re.search(r"set\(MODULE_NAME\s+(\S+)\)", text).group(1)
    match = re.search(rf"set\({variable}\s+(.*?)\)", text, re.S)
    assert match, f"{variable} is not set in {CMAKE_FILE}"
    return [entry.replace("${MODULE_NAME}", module_name) for entry in match.group(1).split()]


def test_ui_file_is_well_formed_with_unique_names():
    root = ui_tree()
    assert root.tag == "ui"
    top = root.find("widget")
    assert top is not None and top.get("class") == "qMRMLWidget"
    names = ui_widget_names()
    duplicates = sorted({n for n in names if names.count(n) > 1})
    assert not duplicates, f"widget names used more than once in {UI_FILE.name}: {duplicates}"


def test_every_ui_name_used_by_the_module_exists_in_the_ui_file():
    used = ui_code_names(MODULE_FILE)
    # the check sees real uses, in every panel
    assert {"applyButton", "submitCorrectionButton", "progressBar", "suggestButton", "suggestionsTableWidget",
            "fineTuneButton", "fineTuneProgressBar", "reviewQueueTableWidget", "acceptLabelButton"} <= used
    missing = sorted(used - set(ui_widget_names()))
    assert not missing, f"{MODULE_FILE.name} uses self.ui names absent from {UI_FILE.name}: {missing}"


def test_ui_connections_name_existing_widgets():
    names = set(ui_widget_names())
    for connection in ui_tree().iter("connection"):
        assert connection.findtext("sender") in names
        assert connection.findtext("receiver") in names


def test_required_panels_and_widgets_exist():
    root = ui_tree()
    by_name = {w.get("name"): w for w in root.iter("widget")}
    panels = [w.get("name") for w in root.iter("widget") if w.get("class") == "ctkCollapsibleButton"]
    assert panels == ["inputsCollapsibleButton", "segmentCollapsibleButton", "suggestionsCollapsibleButton",
                      "correctionsCollapsibleButton", "adaptCollapsibleButton", "settingsCollapsibleButton"]
    expected = {"suggestionsCollapsibleButton": {"budgetSpinBox": "QSpinBox", "suggestButton": "QPushButton",
                                                 "suggestionsTableWidget": "QTableWidget",
                                                 "suggestProgressBar": "QProgressBar"},
                "adaptCollapsibleButton": {"epochsSpinBox": "QSpinBox", "priorsLineEdit": "QLineEdit",
                                           "fineTuneOutputPathLineEdit": "ctkPathLineEdit",
                                           "fineTuneButton": "QPushButton", "fineTuneProgressBar": "QProgressBar",
                                           "reviewQueueTableWidget": "QTableWidget", "reviewerLineEdit": "QLineEdit",
                                           "previewLabelButton": "QPushButton", "acceptLabelButton": "QPushButton",
                                           "rejectLabelButton": "QPushButton"}}
    for panel, widgets in expected.items():
        inside = {w.get("name"): w.get("class") for w in by_name[panel].iter("widget")}
        for name, widget_class in widgets.items():
            assert inside.get(name) == widget_class, f"{name} ({widget_class}) is not in the {panel} panel"
    # The report box is live and its tooltip says what a report does.
    report = by_name["reportTextEdit"]
    properties = {p.get("name"): p for p in report.iter("property")}
    assert "enabled" not in properties or properties["enabled"].findtext("bool") == "true"
    assert "MedSeg-R" in properties["toolTip"].findtext("string")


def parameter_fields() -> set[str]:
    for node in ast.parse(MODULE_FILE.read_text()).body:
        if isinstance(node, ast.ClassDef) and any(
            getattr(d, "id", None) == "parameterNodeWrapper" for d in node.decorator_list
        ):
            return {s.target.id for s in node.body if isinstance(s, ast.AnnAssign)}
    raise AssertionError(f"no @parameterNodeWrapper class in {MODULE_FILE.name}")


def test_the_rank_for_choices_are_the_library_ranking_purposes():
    from MedSegAdaptLib.suggestions.options import RANKING_PURPOSES

    assignment = next(node for node in ast.parse(MODULE_FILE.read_text()).body if isinstance(node, ast.Assign)
                      and getattr(node.targets[0], "id", None) == "RANKING_PURPOSE_NAMES")
    assert ast.literal_eval(assignment.value) == list(RANKING_PURPOSES)


def test_slicer_parameter_names_in_ui_are_parameter_node_fields():
    fields = parameter_fields()
    bound = [p.findtext("string") for p in ui_tree().iter("property") if p.get("name") == "SlicerParameterName"]
    assert bound, "no widget is bound to the parameter node"
    unknown = sorted(set(bound) - fields)
    assert not unknown, f"SlicerParameterName values with no parameter node field: {unknown}"


def _widget_class() -> ast.ClassDef:
    return next(node for node in ast.parse(MODULE_FILE.read_text()).body
                if isinstance(node, ast.ClassDef) and node.name == "MedSegAdaptWidget")


def test_every_connected_slot_is_a_method_of_the_widget():
    widget = _widget_class()
    methods = {node.name for node in widget.body if isinstance(node, ast.FunctionDef)}
    slots = set()
    for node in ast.walk(widget):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "connect":
            slots.update(arg.attr for arg in node.args[1:] if isinstance(arg, ast.Attribute)
                         and isinstance(arg.value, ast.Name) and arg.value.id == "self")
    assert {"onSuggestButton", "onSuggestionClicked", "onFineTuneButton", "onAcceptLabel"} <= slots
    assert not slots - methods, f"connected to methods the widget does not have: {sorted(slots - methods)}"


def test_logic_methods_the_widget_calls_exist():
    logic_class = next(node for node in ast.parse(LOGIC_FILE.read_text()).body
                       if isinstance(node, ast.ClassDef) and node.name == "MedSegAdaptLogic")
    logic_names = {node.name for node in logic_class.body if isinstance(node, ast.FunctionDef)}
    logic_names |= {target.id for node in logic_class.body if isinstance(node, ast.Assign) for target in node.targets}
    module_names = {node.name for node in ast.parse(LOGIC_FILE.read_text()).body
                    if isinstance(node, (ast.FunctionDef, ast.ClassDef))}
    called, module_called = set(), set()
    for node in ast.walk(ast.parse(MODULE_FILE.read_text())):
        if isinstance(node, ast.Attribute):
            owner = node.value
            if (isinstance(owner, ast.Name) and owner.id == "core") or (
                    isinstance(owner, ast.Attribute) and owner.attr == "core"):
                called.add(node.attr)
            elif isinstance(owner, ast.Call) and getattr(owner.func, "id", None) == "_logic_base":
                module_called.add(node.attr)
    assert {"prepare_suggestion", "run_suggestion", "fine_tune", "review", "preview_label"} <= called
    assert not called - logic_names, f"the widget calls Logic methods that do not exist: {sorted(called - logic_names)}"
    assert not module_called - module_names, sorted(module_called - module_names)


def test_every_file_listed_in_cmake_exists():
    listed = cmake_list("MODULE_PYTHON_SCRIPTS") + cmake_list("MODULE_PYTHON_RESOURCES")
    assert "MedSegAdapt.py" in listed
    missing = [entry for entry in listed if not (MODULE_DIR / entry).is_file()]
    assert not missing, f"{CMAKE_FILE} lists files that do not exist: {missing}"


def test_every_module_file_is_listed_in_cmake():
    scripts = set(cmake_list("MODULE_PYTHON_SCRIPTS"))
    resources = set(cmake_list("MODULE_PYTHON_RESOURCES"))
    python_files = {p.relative_to(MODULE_DIR).as_posix() for p in MODULE_DIR.rglob("*.py")
                    if "__pycache__" not in p.parts}
    resource_files = {p.relative_to(MODULE_DIR).as_posix() for p in (MODULE_DIR / "Resources").rglob("*")
                      if p.is_file() and "__pycache__" not in p.parts}
    assert python_files - scripts == set(), "Python files not installed by CMake"
    assert resource_files - resources == set(), "resources not installed by CMake"


@pytest.mark.parametrize("path", [MODULE_FILE, LOGIC_FILE], ids=lambda p: p.name)
def test_module_files_compile(path):
    compile(path.read_text(), str(path), "exec")


def top_level_imports(path: Path) -> set[str]:
    names = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_logic_imports_no_qt_and_no_scripted_module_base():
    imports = top_level_imports(LOGIC_FILE)
    forbidden = {"qt", "ctk", "slicer.ScriptedLoadableModule", "slicer.parameterNodeWrapper", "slicer.util"}
    assert not imports & forbidden, imports & forbidden


def test_module_loads_before_dependencies_are_installed():
    # Slicer imports the module at start-up: MedSegAdaptLib (torch...) may not be installed yet.
    imports = top_level_imports(MODULE_FILE)
    assert not any(name.split(".")[0] in {"MedSegAdaptLib", "MedSegAdaptLogic", "torch", "numpy"} for name in imports)
