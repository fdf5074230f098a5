"""The demo's picture: segments filled in their colours, reference outlined, radiological orientation."""
from __future__ import annotations

import numpy as np

from MedSegAdaptLib.evaluation.overlay import render_slices
from MedSegAdaptLib.io import Geometry, Segment, Segmentation, volume_from_array


def _scene(direction: tuple[float, ...]):
    geometry = Geometry((20, 10, 3), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), direction)
    volume = volume_from_array(np.full((20, 10, 3), -1000, np.int16), geometry)
    mask = np.zeros((20, 10, 3), bool)
    mask[0:4, 0:3, 1] = True  # low i, low j corner of slice 1
    segment = Segment("left lung", mask, color=(1.0, 0.0, 0.0))
    return volume, Segmentation(geometry, [segment])


def test_segment_is_filled_and_outlined():
    volume, segmentation = _scene((1, 0, 0, 0, 1, 0, 0, 0, 1))
    picture = np.asarray(render_slices(volume, segmentation, [1], reference=segmentation, pixel_mm=1.0))
    assert picture.shape == (10, 20, 3)  # rows J, columns I
    assert tuple(picture[1, 1]) != tuple(picture[8, 15])  # inside vs outside the segment
    assert picture[1, 1, 0] > picture[1, 1, 1]  # red tint inside
    assert tuple(picture[2, 1]) == (255, 255, 255)  # reference outline (last row of the segment)
    assert picture[8, 15, 0] == picture[8, 15, 1]  # background stays gray


def test_axial_slices_follow_the_radiological_convention():
    volume, segmentation = _scene((-1, 0, 0, 0, -1, 0, 0, 0, 1))
    picture = np.asarray(render_slices(volume, segmentation, [1], pixel_mm=1.0))
    # I and J run to patient right and anterior here: the corner at i=0, j=0 is shown bottom right.
    assert picture[8, 18, 0] > picture[8, 18, 1]
    assert picture[1, 1, 0] == picture[1, 1, 1]
