"""Dice, HD95 and segmentation comparison on constructed masks and on the real CTChest4 segmentation."""
from __future__ import annotations

import math

import numpy as np
import pytest

from MedSegAdaptLib.core.errors import InputError
from MedSegAdaptLib.evaluation import compare_segmentations, dice, format_table, hd95_mm
from MedSegAdaptLib.io import (
    Geometry,
    Segment,
    Segmentation,
    ctchest4_segmentation_path,
    read_segmentation,
)


@pytest.fixture(scope="module")
def reference() -> Segmentation:
    return read_segmentation(ctchest4_segmentation_path())


def _cube(shape=(40, 40, 30), start=(10, 10, 5), size=(10, 10, 10)) -> np.ndarray:
    mask = np.zeros(shape, bool)
    mask[tuple(slice(s, s + n) for s, n in zip(start, size))] = True
    return mask


def test_dice_known_values():
    ref = _cube(start=(10, 10, 5))
    half = _cube(start=(15, 10, 5))  # overlaps half of ref along I
    assert dice(ref, ref) == 1.0
    assert dice(half, ref) == pytest.approx(0.5)
    inside = _cube(start=(10, 10, 5), size=(5, 10, 10))  # 500 voxels inside 1000
    assert dice(inside, ref) == pytest.approx(2 * 500 / 1500)
    empty = np.zeros_like(ref)
    assert dice(empty, empty) == 1.0
    assert dice(empty, ref) == 0.0
    assert dice(_cube(start=(25, 25, 18)), ref) == 0.0


def test_dice_refuses_different_shapes():
    with pytest.raises(InputError, match=r"\(40, 40, 30\).*\(40, 40, 31\)"):
        dice(_cube(), np.zeros((40, 40, 31), bool))


@pytest.mark.parametrize(("axis", "shift", "expected_mm"), [(0, 3, 1.5), (1, 3, 3.0), (2, 2, 5.0)])
def test_hd95_of_shifted_cube_uses_anisotropic_spacing(axis, shift, expected_mm):
    spacing = (0.5, 1.0, 2.5)
    ref = _cube()
    pred = np.roll(ref, shift, axis=axis)
    assert hd95_mm(pred, ref, spacing) == pytest.approx(expected_mm)
    assert hd95_mm(ref, pred, spacing) == pytest.approx(expected_mm)


def test_hd95_identical_is_zero_and_empty_is_nan():
    ref = _cube()
    assert hd95_mm(ref, ref, (0.7, 0.7, 3.0)) == 0.0
    assert math.isnan(hd95_mm(np.zeros_like(ref), ref, (1, 1, 1)))
    assert math.isnan(hd95_mm(ref, np.zeros_like(ref), (1, 1, 1)))


def test_reference_against_itself(reference: Segmentation):
    rows = compare_segmentations(reference, reference)
    assert [row["name"] for row in rows] == reference.names()
    for row, segment in zip(rows, reference.segments):
        assert row["dice"] == 1.0
        assert row["hd95_mm"] == 0.0
        assert row["pred_voxels"] == row["ref_voxels"] == int(segment.mask.sum()) > 0


def test_matching_by_name_skips_and_ignores_case(reference: Segmentation):
    lung = reference.get("right lung").mask
    eroded = lung & np.roll(lung, 1, axis=0) & np.roll(lung, -1, axis=0)
    pred = Segmentation(
        reference.geometry,
        [Segment("RIGHT LUNG", eroded), Segment("nodule", lung), Segment("Tissue", reference.get("tissue").mask)],
    )
    rows = compare_segmentations(pred, reference)
    assert [row["name"] for row in rows] == ["right lung", "tissue"]
    lung_row = rows[0]
    assert lung_row["dice"] == pytest.approx(dice(eroded, lung)) and lung_row["dice"] < 1.0
    assert lung_row["hd95_mm"] == pytest.approx(reference.geometry.spacing[0], rel=1e-6)
    assert lung_row["pred_voxels"] == int(eroded.sum()) < lung_row["ref_voxels"]

    named = compare_segmentations(pred, reference, names=["tissue"])
    assert [row["name"] for row in named] == ["tissue"]
    with pytest.raises(InputError, match="'left lung'"):
        compare_segmentations(pred, reference, names=["left lung"])
    with pytest.raises(InputError, match="'nodule'.*available"):
        compare_segmentations(pred, reference, names=["nodule"])


def test_geometry_mismatch_is_refused(reference: Segmentation):
    g = reference.geometry
    shifted = Segmentation(Geometry(g.shape, g.spacing, (0.0, 0.0, 0.0), g.direction), reference.segments)
    with pytest.raises(InputError, match=r"origin \(0\.0, 0\.0, 0\.0\) vs \(193\.09"):
        compare_segmentations(shifted, reference)
    assert "shape" not in g.describe_mismatch(shifted.geometry)
    assert g.describe_mismatch(g) == ""


def test_format_table_aligns_columns(reference: Segmentation):
    rows = compare_segmentations(reference, reference, names=["ribs", "right lung"])
    rows[0]["hd95_mm"] = math.nan
    lines = format_table(rows).splitlines()
    assert len(lines) == 4
    assert lines[0].split() == ["name", "dice", "hd95_mm", "pred_voxels", "ref_voxels"]
    assert lines[2].startswith("ribs ") and lines[3].startswith("right lung ")
    assert "nan" in lines[2] and "1.000" in lines[3]
    # Numbers are right-aligned under their header.
    end = lines[0].index("dice") + len("dice")
    assert all(line[end - 5:end] == "1.000" for line in lines[2:])
    assert lines[3].endswith(str(int(reference.get("right lung").mask.sum())))
    assert format_table([]) == ""
