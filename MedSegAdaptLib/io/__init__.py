"""Files in and out: volumes, DICOM series, segmentations, geometry, terminology, modality, atomic writes and sample data."""
from __future__ import annotations

from MedSegAdaptLib.core.lazy_exports import lazy_exports

__all__, __getattr__ = lazy_exports(__name__, {
    "Geometry": "geometry",
    "Segment": "segmentation",
    "Segmentation": "segmentation",
    "ClinicalCase": "clinical_cases",
    "DicomSeries": "dicom",
    "Volume": "volume",
    "atomic_output": "atomic",
    "choose_dicom_series": "dicom",
    "cases_dir": "clinical_cases",
    "clinical_cases": "clinical_cases",
    "ctchest4_overlapping_segmentation_path": "sample_data",
    "ctchest4_segmentation_path": "sample_data",
    "ctchest4_volume_path": "sample_data",
    "default_color": "terminology",
    "detect_modality": "modality",
    "fetch_clinical_cases": "clinical_cases",
    "list_dicom_series": "dicom",
    "read_segmentation": "segmentation",
    "read_volume": "volume",
    "standard_names": "terminology",
    "standard_terminology": "terminology",
    "volume_from_array": "volume",
    "write_segmentation": "segmentation",
    "write_volume": "volume",
})
