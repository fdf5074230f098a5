"""Real sample data shipped inside the installed ``slicerio`` package (never copied into this repo)."""
from __future__ import annotations

from importlib.resources import files
from pathlib import Path

__all__ = ["ctchest4_overlapping_segmentation_path", "ctchest4_segmentation_path", "ctchest4_volume_path"]


def _slicerio_data(name: str) -> Path:
    path = Path(str(files("slicerio").joinpath("data", name)))
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; slicerio>=1.4 ships it, reinstall slicerio")
    return path


def ctchest4_volume_path() -> Path:
    """CTChest4.nrrd: a real chest CT, 128 x 128 x 34 voxels."""
    return _slicerio_data("CTChest4.nrrd")


def ctchest4_segmentation_path() -> Path:
    """Segmentation.seg.nrrd: Slicer segmentation of CTChest4 (ribs, vertebral columns, lungs, tissue)."""
    return _slicerio_data("Segmentation.seg.nrrd")


def ctchest4_overlapping_segmentation_path() -> Path:
    """SegmentationOverlapping.seg.nrrd: the same plus an overlapping sphere (two layers)."""
    return _slicerio_data("SegmentationOverlapping.seg.nrrd")
