"""Where MedSegAdaptLib is: installed with the extension, beside the module, or in a source checkout.

Standard library only: this runs when Slicer loads the module, before anything is installed.

- An extension from the Extensions Manager has only what its CMake installs: the library's files
  go into the same ``qt-scripted-modules`` folder as ``MedSegAdapt.py`` (MedSegAdapt/CMakeLists.txt).
- A source checkout added to Slicer's module paths (the Extension Wizard, or Application settings >
  Modules > Additional module paths pointing at ``MedSegAdapt/``) has the library one folder up.

Slicer puts the module's own folder on ``sys.path``; the library's folder is added here.
"""
from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path

__all__ = ["LIBRARY_PACKAGE", "MODULE_FOLDER", "ensure_library_importable", "find_library", "library_candidates"]

LIBRARY_PACKAGE = "MedSegAdaptLib"
#: The module folder: the one holding MedSegAdapt.py and this package.
MODULE_FOLDER = Path(__file__).resolve().parents[1]


def library_candidates(module_folder: Path = MODULE_FOLDER) -> list[Path]:
    """Folders that may hold the library package, in order: beside the module (an installed
    extension), then the module folder's parent (a source checkout)."""
    return [module_folder, module_folder.parent]


def find_library(module_folder: Path = MODULE_FOLDER) -> Path | None:
    """The first candidate folder with a ``MedSegAdaptLib/__init__.py``, else None."""
    for folder in library_candidates(module_folder):
        if (folder / LIBRARY_PACKAGE / "__init__.py").is_file():
            return folder
    return None


def ensure_library_importable(module_folder: Path = MODULE_FOLDER) -> Path | None:
    """Make ``import MedSegAdaptLib`` find the library that came with the module; returns the folder
    holding it (None when there is none: the extension is incomplete and needs reinstalling).

    The library shipped with the module comes first on ``sys.path``, so an older copy pip-installed
    into Slicer's Python does not shadow it; once the library is imported, it is left as it is.
    """
    folder = find_library(module_folder)
    if LIBRARY_PACKAGE in sys.modules:
        package = sys.modules[LIBRARY_PACKAGE]
        return Path(package.__file__).resolve().parents[1] if getattr(package, "__file__", None) else folder
    if folder is not None:
        if str(folder) not in sys.path:
            sys.path.insert(0, str(folder))
            importlib.invalidate_caches()
        return folder
    spec = importlib.util.find_spec(LIBRARY_PACKAGE)  # pip-installed (pip install -e . in a checkout)
    return Path(spec.origin).resolve().parents[1] if spec is not None and spec.origin else None
