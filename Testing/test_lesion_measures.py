"""Lesion measurements: volume in mL and the longest axial diameter, edge to edge, in millimetres."""
from __future__ import annotations

import math

import numpy as np

from MedSegAdaptLib.evaluation.lesion_measures import (
    axial_axis,
    measure_if_lesion,
    measure_lesion,
)
from MedSegAdaptLib.io import (
    Geometry,
    Segment,
    Segmentation,
    read_segmentation,
    write_segmentation,
)

AXIS_ALIGNED = (1, 0, 0, 0, 1, 0, 0, 0, 1)


def test_a_rectangle_measures_its_diagonal_with_anisotropic_pixels():
    geometry = Geometry((30, 30, 6), (0.5, 2.0, 3.0), (0, 0, 0), AXIS_ALIGNED)
    mask = np.zeros(geometry.shape, dtype=bool)
    mask[5:15, 10:14, 2] = True  # 10 x 4 pixels: 5 mm along I, 8 mm along J
    mask[5:8, 10:12, 3] = True  # a smaller slice above
    found = measure_lesion(mask, geometry)
    assert math.isclose(found.longest_axial_diameter_mm, math.hypot(5.0, 8.0), rel_tol=1e-6)
    assert found.axial_slice == 2 and found.axial_axis == 2
    assert math.isclose(found.volume_ml, (40 + 6) * 0.5 * 2.0 * 3.0 / 1000)


def test_axial_slices_follow_the_direction_cosines_not_the_array_order():
    # A sagittally acquired volume: the third array axis runs left-right, the first head-foot.
    geometry = Geometry((20, 20, 20), (1, 1, 1), (0, 0, 0), (0, 0, 1, 0, 1, 0, 1, 0, 0))
    assert axial_axis(geometry) == 0
    mask = np.zeros(geometry.shape, dtype=bool)
    mask[4, 2:12, 3:5] = True  # on the axial slice I = 4: 10 mm by 2 mm
    assert math.isclose(measure_lesion(mask, geometry).longest_axial_diameter_mm, math.hypot(10, 2))


def test_only_lesions_are_measured_and_an_empty_mask_is_not():
    geometry = Geometry((10, 10, 3), (1, 1, 1), (0, 0, 0), AXIS_ALIGNED)
    mask = np.zeros(geometry.shape, dtype=bool)
    assert measure_lesion(mask, geometry) is None
    mask[2:5, 2:5, 1] = True
    assert measure_if_lesion("right lung", mask, geometry) is None
    assert measure_if_lesion("Right upper lobe: 14 mm nodule", mask, geometry) is not None


def test_measurements_travel_in_the_seg_nrrd_segment_tags(tmp_path):
    geometry = Geometry((10, 10, 3), (0.7, 0.7, 5), (0, 0, 0), AXIS_ALIGNED)
    mask = np.zeros(geometry.shape, dtype=bool)
    mask[2:6, 3:5, 1] = True
    tags = measure_lesion(mask, geometry).as_tags()
    path = tmp_path / "nodule.seg.nrrd"
    write_segmentation(path, Segmentation(geometry, [Segment("lung nodule", mask, tags=tags)]))
    read = read_segmentation(path).get("lung nodule")
    assert read.tags == tags
    assert float(read.tags["MedSegAdapt.VolumeMl"]) == round(8 * 0.7 * 0.7 * 5 / 1000, 3)
