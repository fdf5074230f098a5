"""The torch-free ground floor every other package imports down to: errors, hashing, progress, axes and
shared constants. Nothing here imports from the rest of the library."""
from __future__ import annotations

from MedSegAdaptLib.core.lazy_exports import lazy_exports

__all__, __getattr__ = lazy_exports(__name__, {
    "AXIS_NAMES": "axes",
    "DEFAULT_AXIS": "axes",
    "InputError": "errors",
    "MIN_MASK_AREA": "constants",
    "ProgressCallback": "progress",
    "REFERENCE_BOX_MARGIN": "constants",
    "TerminalProgress": "progress",
    "axis_index": "axes",
    "closest_matches": "errors",
    "in_plane_axes": "axes",
    "nearest_slice": "axes",
    "put_slice": "axes",
    "sha256_file": "hashing",
    "take_slices": "axes",
    "unknown_name": "errors",
})
