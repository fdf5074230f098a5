"""Choice lists shared by the command line and the Slicer module: devices and what suggestions rank for.

Torch-free, so the module's widget can fill its combo boxes before torch is installed.
"""
from __future__ import annotations

__all__ = ["DEVICE_CHOICES", "RANKING_PURPOSE_NAMES"]

#: --device values and the module's Device choices: 'auto' picks the GPU when there is one.
DEVICE_CHOICES = ("auto", "cpu", "cuda")

#: What suggested slices are ranked for: the keys of ``suggestions.options.RANKING_PURPOSES``.
RANKING_PURPOSE_NAMES = ("training", "correction")
