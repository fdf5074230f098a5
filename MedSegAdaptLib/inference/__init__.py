"""Volumetric inference: preprocessing, prompts, cached slice embeddings, propagation from slice to
slice, report guidance for MedSeg-R priors, the Segmenter that ties them together, and segmentation from a
report alone (the localiser's candidates segmented from their boxes)."""
from __future__ import annotations

from MedSegAdaptLib.core.lazy_exports import lazy_exports

__all__, __getattr__ = lazy_exports(__name__, {
    "Box3D": "prompts",
    "EmbeddingCache": "embedding_cache",
    "Point3D": "prompts",
    "PriorGuidance": "report_guidance",
    "PropagationOptions": "propagation",
    "ReportSegmentation": "report_segmentation",
    "SegmentationOutcome": "segmenter",
    "Segmenter": "segmenter",
    "build_slice_encoder": "slice_encoder",
    "find_candidates": "report_segmentation",
    "segment_from_report": "report_segmentation",
})
