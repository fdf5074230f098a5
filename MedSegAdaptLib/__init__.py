"""MedSegAdapt backend: report-guided volumetric segmentation that adapts to the local scanner.

Free of any Slicer, Qt, VTK or CTK import: the Slicer module is a thin GUI over this library.
"""

__all__ = ["__version__"]
__version__ = "0.1.0"
