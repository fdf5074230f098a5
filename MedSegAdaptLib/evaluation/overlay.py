"""Pictures of results: slices with predicted segments filled and reference outlines drawn."""
from __future__ import annotations

import numpy as np
from PIL import Image
from skimage.segmentation import find_boundaries

from MedSegAdaptLib.core.axes import take_slices
from MedSegAdaptLib.io import Segmentation, Volume

__all__ = ["DISPLAY_WINDOW", "render_slices"]

DISPLAY_WINDOW = (-400.0, 1600.0)  # level, width in HU: lungs, soft tissue and bone all visible


def _radiological(image: np.ndarray, volume: Volume) -> np.ndarray:
    """Flip an axial (rows J, columns I) image so that columns run to patient left (+L) and rows to
    posterior (+P), from the signs of the I and J directions in LPS."""
    direction = np.asarray(volume.geometry.direction, dtype=float).reshape(3, 3)
    if direction[0, 0] < 0:
        image = image[:, ::-1]
    if direction[1, 1] < 0:
        image = image[::-1]
    return image


def render_slices(volume: Volume, prediction: Segmentation, indices: list[int], axis: int = 2,
                  reference: Segmentation | None = None, pixel_mm: float = 0.75) -> Image.Image:
    """One RGB picture of the given slices side by side.

    Predicted segments are filled in their colours at 45% opacity; the reference segment of the same
    name is outlined in white. Pixels are resampled to `pixel_mm` so the anatomy keeps its aspect.
    Axial slices are shown as radiologists read them: patient's left on the right, anterior up.
    """
    level, width = DISPLAY_WINDOW
    gray = np.clip((volume.array.astype(np.float32) - (level - width / 2)) / width, 0, 1)
    in_plane = [s for a, s in enumerate(volume.geometry.spacing) if a != axis]
    panels = []
    for index in indices:
        image = np.repeat(take_slices(gray, axis, [index])[0][..., None], 3, axis=2)
        for segment in prediction.segments:
            mask = take_slices(segment.mask, axis, [index])[0]
            image[mask] = 0.55 * image[mask] + 0.45 * np.asarray(segment.color)
            truth = reference.find(segment.name) if reference is not None else None
            if truth is not None:
                image[find_boundaries(take_slices(truth.mask, axis, [index])[0], mode="inner")] = 1.0
        if axis == 2:
            image = _radiological(image, volume)
        height, width_px = image.shape[:2]
        size = (round(width_px * in_plane[0] / pixel_mm), round(height * in_plane[1] / pixel_mm))
        panels.append(Image.fromarray((image * 255).astype(np.uint8)).resize(size, Image.NEAREST))
    canvas = Image.new("RGB", (sum(p.width for p in panels) + 8 * (len(panels) - 1), panels[0].height))
    x = 0
    for panel in panels:
        canvas.paste(panel, (x, 0))
        x += panel.width + 8
    return canvas
