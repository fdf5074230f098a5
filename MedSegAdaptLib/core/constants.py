"""Constants shared by several stages, each with the reason for its value."""
from __future__ import annotations

__all__ = ["MIN_MASK_AREA", "REFERENCE_BOX_MARGIN"]

MIN_MASK_AREA = 5
"""A slice mask with fewer foreground pixels counts as empty: it gives no box prompt, propagation stops
there, and fine-tuning skips it."""

REFERENCE_BOX_MARGIN = 2
"""Voxels added on every side of a reference mask's bounding box when it stands in for the box a user
would draw (demos, benchmarks, prompts taken from a store's latest label)."""
