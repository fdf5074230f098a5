"""The MedSegAdapt module's Qt-free Logic, one module per job.

- :mod:`.library`: finds MedSegAdaptLib (installed with the extension, or a source checkout) and puts it
  on ``sys.path``; standard library only.
- :mod:`.dependencies`: what MedSegAdaptLib still needs and installing it into Slicer's Python (torch
  through the PyTorch extension); no import of the missing packages.
- :mod:`.worker`: the persistent worker thread, its jobs and the module's processing state.
- :mod:`.scene`: MRML <-> MedSegAdaptLib conversions (needs MedSegAdaptLib's dependencies).
- :mod:`.logic`: ``MedSegAdaptLogic``, the one Logic class (needs MedSegAdaptLib's dependencies).
- :mod:`.report`: the data of a report's Find (its ranked candidates) and the texts the panel shows.

Nothing is imported here, so ``library``, ``dependencies`` and ``worker`` load before the
dependencies are installed. This folder is a package, not a module file: Slicer's scripted-module
factory loads every ``*.py`` at the top of the module folder as a module, but not sub-packages.
"""

__all__: list[str] = []
