"""Installing what MedSegAdaptLib needs into Slicer's Python, from the list the library owns.

The list is ``MedSegAdaptLib.core.dependencies.DEPENDENCIES`` (torch-free, checked against
pyproject.toml by a test); this module only decides how each missing package gets installed:

- torch and torchvision through the PyTorch extension (``PyTorchUtils``), which chooses the build
  for the computer's GPU driver; without that extension, a message says to install it;
- numpy and SimpleITK are Slicer's own and are never replaced: a pip constraints file pins the
  versions Slicer has (and the torch the PyTorch extension installed) while pip installs the rest;
- everything else with ``slicer.util.pip_install``, on the main thread, after the user agreed.

No Qt here: the dialogs and ``pip_install`` are passed in, so tests drive the whole sequence.
``pip_install`` processes GUI events while it runs (Slicer 5.10), so a second click on a button
could start a second pip over the first; :class:`DependencyInstaller` refuses that.
"""
from __future__ import annotations

import contextlib
import importlib
import logging
import os
import tempfile
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

__all__ = [
    "DependencyInstaller",
    "InstallError",
    "InstallOutcome",
    "constraints_lines",
    "pytorch_extension_installer",
]

logger = logging.getLogger("MedSegAdapt")

#: One installation at a time in this Slicer process, whatever widget or console started it.
_INSTALLING = threading.Lock()


class InstallError(RuntimeError):
    """A dependency cannot be installed here; the message says what the user can do."""


@dataclass
class InstallOutcome:
    """What :meth:`DependencyInstaller.install` did.

    status: 'ready' (nothing was missing), 'installed' (a restart is recommended), 'declined' (the
    user said no) or 'busy' (another installation is running).
    """

    status: str
    installed: list[str] = field(default_factory=list)
    message: str = ""

    @property
    def ready(self) -> bool:
        """Whether every dependency is importable now."""
        return self.status in ("ready", "installed")


def constraints_lines(distributions: Sequence[str]) -> list[str]:
    """``name==version`` of each installed distribution in ``distributions`` (pip constraints)."""
    from MedSegAdaptLib.core.dependencies import installed_version

    lines = []
    for name in distributions:
        version = installed_version(name)
        if version is not None:
            lines.append(f"{name}=={version}")
    return lines


@contextlib.contextmanager
def _constraints_file(lines: Sequence[str]):
    handle, path = tempfile.mkstemp(prefix="medsegadapt-constraints-", suffix=".txt", text=True)
    try:
        with os.fdopen(handle, "w") as out:
            out.write("\n".join(lines) + "\n")
        yield path
    finally:
        os.remove(path)


def pytorch_extension_installer() -> Callable[[str, str], object] | None:
    """``install(torch_specifier, torchvision_specifier)`` through the PyTorch extension's
    ``PyTorchUtilsLogic.installTorch`` (it asks the user first and returns None when declined), or
    None when the PyTorch extension is not installed."""
    try:
        import PyTorchUtils
    except ImportError:
        return None

    def install(torch_specifier: str, torchvision_specifier: str):
        return PyTorchUtils.PyTorchUtilsLogic().installTorch(
            askConfirmation=True, torchVersionRequirement=torch_specifier,
            torchvisionVersionRequirement=torchvision_specifier)

    return install


class DependencyInstaller:
    """Installs MedSegAdaptLib's missing dependencies; main thread only.

    pip_install: ``slicer.util.pip_install`` (called with a list of pip arguments); confirm(text) ->
    bool: the OK/Cancel dialog; torch_installer: :func:`pytorch_extension_installer`'s result (None
    when the PyTorch extension is absent); find_missing: the library's ``missing_dependencies``.
    """

    #: Distributions pinned at their installed versions while pip runs: Slicer's own, and the torch
    #: build the PyTorch extension chose.
    PINNED = ("numpy", "SimpleITK", "torch", "torchvision")

    def __init__(self, pip_install: Callable[[list[str]], object], confirm: Callable[[str], bool],
                 torch_installer: Callable[[str, str], object] | None = None,
                 find_missing: Callable[[], list] | None = None) -> None:
        self.pip_install = pip_install
        self.confirm = confirm
        self.torch_installer = torch_installer
        if find_missing is None:
            from MedSegAdaptLib.core.dependencies import missing_dependencies as find_missing
        self.find_missing = find_missing

    @staticmethod
    def describe(missing) -> str:
        """One line per missing dependency: requirement, what is installed, why it is needed."""
        return "\n".join(f"  {d.requirement}" + (f" (installed: {version})" if version else "") + f": {d.why}"
                         for d, version in missing)

    def install(self, ask: bool = True) -> InstallOutcome:
        """Install what is missing after the user agrees; see :class:`InstallOutcome`. Raises
        :class:`InstallError` when something cannot be installed from here."""
        if not _INSTALLING.acquire(blocking=False):
            return InstallOutcome("busy", message="An installation of MedSegAdapt's dependencies is already running.")
        try:
            return self._install(ask)
        finally:
            _INSTALLING.release()

    def _install(self, ask: bool) -> InstallOutcome:
        missing = self.find_missing()
        if not missing:
            return InstallOutcome("ready")
        slicers = [(d, v) for d, v in missing if d.source == "slicer"]
        if slicers:
            raise InstallError("Slicer's own Python packages are too old or missing and are never replaced:\n"
                               + self.describe(slicers) + "\nUse Slicer 5.10 or later.")
        torch = [d for d, _ in missing if d.source == "pytorch"]
        if torch and self.torch_installer is None:
            raise InstallError(
                "MedSegAdapt needs PyTorch (" + ", ".join(d.requirement for d in torch) + "). Install the "
                "PyTorch extension from the Extensions Manager (it picks the build for this computer's GPU), "
                "restart Slicer, then press Check / install dependencies again.")
        listing = self.describe(missing)
        if ask and not self.confirm(
                "MedSegAdapt needs these Python packages, which will now be installed into Slicer's Python "
                "(several minutes; torch through the PyTorch extension, a few GB):\n\n" + listing
                + "\n\nnumpy and SimpleITK stay at Slicer's versions. Slicer should be restarted afterwards."):
            return InstallOutcome("declined", message="Installation cancelled; nothing was installed.")
        installed = []
        if torch:
            by_name = {d.distribution: d for d in torch}
            specifier = {name: (by_name[name].requirement[len(name):] if name in by_name else "")
                         for name in ("torch", "torchvision")}
            if not self.torch_installer(specifier["torch"], specifier["torchvision"]):
                return InstallOutcome("declined", message="PyTorch was not installed; nothing else was installed.")
            installed += [d.requirement for d in torch]
        others = [d.requirement for d, _ in missing if d.source == "pip"]
        if others:
            with _constraints_file(constraints_lines(self.PINNED)) as constraints:
                logger.info("MedSegAdapt: pip install %s -c %s", " ".join(others), constraints)
                self.pip_install([*others, "-c", constraints])
            installed += others
        importlib.invalidate_caches()
        still = self.find_missing()
        if still:
            raise InstallError("Still missing after the installation:\n" + self.describe(still))
        return InstallOutcome("installed", installed,
                              "Installed " + ", ".join(installed) + ". Restart Slicer to use them.")
