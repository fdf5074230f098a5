"""Volumetric inference: preprocessing, cached slice embeddings, prompt propagation."""
from .embedding_cache import EmbeddingCache
from .prompts import Box3D, Point3D
from .segmenter import SegmentationOutcome, Segmenter
from .volumetric import PropagationOptions

__all__ = ["Box3D", "EmbeddingCache", "Point3D", "PropagationOptions", "SegmentationOutcome", "Segmenter"]
