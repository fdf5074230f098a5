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
LOGIC_PACKAGE = MODULE_DIR / "MedSegAdaptLogic"
LOGIC_FILE = LOGIC_PACKAGE / "logic.py"
LIBRARY_DIR = MODULE_DIR.parent / "MedSegAdaptLib"
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


def test_the_widget_takes_its_choice_lists_from_the_library():
    from MedSegAdaptLib.core.choices import DEVICE_CHOICES, RANKING_PURPOSE_NAMES
    from MedSegAdaptLib.models.device import resolve_device
    from MedSegAdaptLib.suggestions.options import RANKING_PURPOSES

    assert tuple(RANKING_PURPOSES) == RANKING_PURPOSE_NAMES
    assert all(str(resolve_device(choice)) for choice in DEVICE_CHOICES if choice != "cuda")
    tree = ast.parse(MODULE_FILE.read_text())
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                and node.module == "MedSegAdaptLib.core.choices" for alias in node.names}
    assert imported == {"DEVICE_CHOICES", "RANKING_PURPOSE_NAMES"}
    # No copy of the library's lists in the module: no list or tuple literal of three or more strings
    # (the dependency list, the devices, the structures) beyond the fallback of a missing library.
    literals = [node for node in ast.walk(tree) if isinstance(node, (ast.List, ast.Tuple)) and len(node.elts) >= 3
                and all(isinstance(e, ast.Constant) and isinstance(e.value, str) for e in node.elts)]
    assert not [ast.literal_eval(node) for node in literals if {"torch", "auto", "right lung"} & set(
        ast.literal_eval(node))]


def ui_spin_box_ranges() -> dict[str, tuple[int, int]]:
    """{SlicerParameterName: (minimum, maximum)} of the .ui's bound spin boxes."""
    ranges = {}
    for widget in ui_tree().iter("widget"):
        if widget.get("class") != "QSpinBox":
            continue
        properties = {p.get("name"): p for p in widget.findall("property")}
        name = properties["SlicerParameterName"].findtext("string")
        ranges[name] = (int(properties["minimum"].findtext("number")), int(properties["maximum"].findtext("number")))
    return ranges


def test_int_parameters_keep_the_ui_spin_box_limits():
    """The parameter-node connector sets a bound spin box's range from the annotation, to +-2^31 without one."""
    annotations = {}
    for node in ast.parse(MODULE_FILE.read_text()).body:
        if isinstance(node, ast.ClassDef) and node.name == "MedSegAdaptParameterNode":
            annotations = {s.target.id: s.annotation for s in node.body if isinstance(s, ast.AnnAssign)}
    ranges = ui_spin_box_ranges()
    assert set(ranges) == {"budget", "epochs", "environmentCount"}
    for name, limits in ranges.items():
        annotation = annotations[name]
        assert isinstance(annotation, ast.Subscript) and annotation.value.id == "Annotated", name
        kind, *validators = annotation.slice.elts
        assert kind.id == "int", name
        within = [v for v in validators if isinstance(v, ast.Call) and v.func.id == "WithinRange"]
        assert within, f"{name} has no WithinRange: the spin box would accept -2^31..2^31-1"
        assert tuple(ast.literal_eval(a) for a in within[0].args) == limits, name


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
    called = set()
    for node in ast.walk(ast.parse(MODULE_FILE.read_text())):
        if isinstance(node, ast.Attribute):
            owner = node.value
            if (isinstance(owner, ast.Name) and owner.id == "logic") or (
                    isinstance(owner, ast.Attribute) and owner.attr == "logic"):
                called.add(node.attr)
    assert {"prepare", "apply", "prepare_suggestion", "run_suggestion", "fine_tune", "review", "preview_label"} <= called
    assert not called - logic_names, f"the widget calls Logic methods that do not exist: {sorted(called - logic_names)}"


def test_one_logic_class_without_forwarding():
    """One Logic class (in the package), no ``__getattr__`` forwarding, none in the module file."""
    classes = {}
    for path in [MODULE_FILE, *sorted(LOGIC_PACKAGE.glob("*.py"))]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and node.name.endswith("Logic"):
                classes.setdefault(node.name, []).append(path.name)
            assert not (isinstance(node, ast.FunctionDef) and node.name == "__getattr__"), path.name
    assert classes == {"MedSegAdaptLogic": ["logic.py"]}


def test_only_scripted_module_files_at_the_top_of_the_module_folder():
    """Slicer's factory loads each top-level .py as a module named after the file."""
    assert sorted(p.name for p in MODULE_DIR.glob("*.py")) == ["MedSegAdapt.py"]
    assert sorted(p.name for p in MODULE_DIR.glob("*.pyc")) == []


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


def library_files(*suffixes: str) -> set[str]:
    return {p.relative_to(LIBRARY_DIR).as_posix() for p in LIBRARY_DIR.rglob("*")
            if p.is_file() and p.suffix in suffixes and "__pycache__" not in p.parts}


def test_cmake_installs_every_library_file_with_the_module():
    """An extension from the Extensions Manager has only what CMake installs (issue: no MedSegAdaptLib)."""
    text = CMAKE_FILE.read_text()
    assert re.search(r"set\(MEDSEGADAPTLIB_SOURCE_DIR \$\{CMAKE_CURRENT_SOURCE_DIR\}/\.\./MedSegAdaptLib\)", text)
    scripts, resources = cmake_list("MEDSEGADAPTLIB_PYTHON_SCRIPTS"), cmake_list("MEDSEGADAPTLIB_PYTHON_RESOURCES")
    assert set(scripts) == library_files(".py"), "library .py files missing from (or stale in) the CMake list"
    assert set(resources) == library_files(".json"), "library data files missing from (or stale in) the CMake list"
    loop = re.search(r"foreach\(_file IN LISTS MEDSEGADAPTLIB_PYTHON_SCRIPTS MEDSEGADAPTLIB_PYTHON_RESOURCES\)"
                     r"(.*?)endforeach\(\)", text, re.S)
    assert loop, "the library lists are not installed"
    body = " ".join(loop.group(1).split())
    # Into the build tree beside MedSegAdapt.py, and installed there (where library.py looks first).
    assert ("${CMAKE_BINARY_DIR}/${Slicer_QTSCRIPTEDMODULES_LIB_DIR}/MedSegAdaptLib/${_file} COPYONLY") in body
    assert "DESTINATION ${Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR}/MedSegAdaptLib/${_folder}" in body
    assert "install( FILES ${MEDSEGADAPTLIB_SOURCE_DIR}/${_file}" in body


def test_extension_metadata_is_complete():
    text = (MODULE_DIR.parent / "CMakeLists.txt").read_text()
    values = dict(re.findall(r'set\((EXTENSION_\w+) "(.*?)"\)', text))
    for key in ("HOMEPAGE", "CATEGORY", "CONTRIBUTORS", "DESCRIPTION", "ICONURL", "SCREENSHOTURLS"):
        assert values.get(f"EXTENSION_{key}"), f"EXTENSION_{key} is empty"
    assert values["EXTENSION_DEPENDS"] == "PyTorch"
    for url in values["EXTENSION_SCREENSHOTURLS"].split():
        assert (MODULE_DIR.parent / url.split("/main/", 1)[1]).is_file(), url


def test_self_test_is_registered_with_ctest_and_installs_nothing():
    text = CMAKE_FILE.read_text()
    assert re.search(r"if\(BUILD_TESTING\)\s*slicer_add_python_unittest\(SCRIPT \$\{MODULE_NAME\}\.py\)", text)
    test_class = next(node for node in ast.parse(MODULE_FILE.read_text()).body
                      if isinstance(node, ast.ClassDef) and node.name == "MedSegAdaptTest")
    names = {node.attr if isinstance(node, ast.Attribute) else node.id for node in ast.walk(test_class)
             if isinstance(node, (ast.Attribute, ast.Name))}
    assert not names & {"pip_install", "install", "ensure_dependencies", "dependencyInstaller"}
    assert {"skipTest", "click", "applyButton", "submitCorrectionButton"} <= names  # it drives the widget


@pytest.mark.parametrize("path", [MODULE_FILE, *sorted(LOGIC_PACKAGE.glob("*.py"))], ids=lambda p: p.name)
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


def all_imports(path: Path) -> set[str]:
    """Every module an import statement anywhere in the file names (function-local ones included)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(("." * node.level) + node.module)
    return names


@pytest.mark.parametrize("path", sorted(LOGIC_PACKAGE.glob("*.py")), ids=lambda p: p.name)
def test_logic_imports_no_qt_and_no_scripted_module_base(path):
    forbidden = {"qt", "ctk", "slicer.ScriptedLoadableModule", "slicer.parameterNodeWrapper", "slicer.util"}
    assert not all_imports(path) & forbidden, all_imports(path) & forbidden


#: The package modules the scripted module imports at load time: they must need nothing that may be missing.
LOAD_TIME_MODULES = ("library", "state", "worker")


def test_module_loads_before_dependencies_are_installed():
    # Slicer imports the module at start-up: MedSegAdaptLib's dependencies (torch...) may not be installed yet.
    imports = top_level_imports(MODULE_FILE)
    assert {"MedSegAdaptLogic.library", "MedSegAdaptLogic.state", "MedSegAdaptLogic.worker"} <= imports
    assert not any(name.split(".")[0] in {"MedSegAdaptLib", "torch", "numpy"} for name in imports)
    assert not {name for name in imports if name.startswith("MedSegAdaptLogic.")} - {
        f"MedSegAdaptLogic.{m}" for m in LOAD_TIME_MODULES}
    for module in LOAD_TIME_MODULES + ("__init__", "dependencies"):
        imported = {name.split(".")[0] for name in top_level_imports(LOGIC_PACKAGE / f"{module}.py")}
        assert not imported & {"MedSegAdaptLib", "torch", "numpy", "slicer", "vtk", "qt"}, (module, imported)
