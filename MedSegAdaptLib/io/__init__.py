"""Files in and out: volumes, segmentations, geometry, terminology, atomic writes and sample data."""
from MedSegAdaptLib.io.atomic import atomic_output
from MedSegAdaptLib.io.geometry import Geometry
from MedSegAdaptLib.io.sample_data import (
    ctchest4_overlapping_segmentation_path,
    ctchest4_segmentation_path,
    ctchest4_volume_path,
)
from MedSegAdaptLib.io.segmentation import Segment, Segmentation, read_segmentation, write_segmentation
from MedSegAdaptLib.io.terminology import default_color, standard_names, standard_terminology
from MedSegAdaptLib.io.volume import Volume, read_volume, volume_from_array, write_volume

__all__ = [
    "Geometry",
    "Segment",
    "Segmentation",
    "Volume",
    "atomic_output",
    "ctchest4_overlapping_segmentation_path",
    "ctchest4_segmentation_path",
    "ctchest4_volume_path",
    "default_color",
    "read_segmentation",
    "read_volume",
    "standard_names",
    "standard_terminology",
    "volume_from_array",
    "write_segmentation",
    "write_volume",
]
