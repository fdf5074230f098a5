"""MedSegAdaptLib.io on the real CTChest4 data shipped with slicerio, and on files made in tmp_path."""
from __future__ import annotations

from pathlib import Path

import nrrd
import numpy as np
import pytest
import SimpleITK as sitk
from dicom_files import sitk_image

from MedSegAdaptLib.core.errors import InputError
from MedSegAdaptLib.io import (
    Geometry,
    Segment,
    Segmentation,
    atomic_output,
    ctchest4_overlapping_segmentation_path,
    ctchest4_segmentation_path,
    ctchest4_volume_path,
    default_color,
    read_segmentation,
    read_volume,
    standard_names,
    standard_terminology,
    volume_from_array,
    write_segmentation,
    write_volume,
)

CTCHEST4_NAMES = [
    "ribs",
    "cervical vertebral column",
    "thoracic vertebral column",
    "lumbar vertebral column",
    "right lung",
    "left lung",
    "tissue",
]

# 30 degrees about the superior axis: columns are the I, J, K directions.
_C, _S = np.cos(np.pi / 6), np.sin(np.pi / 6)
ROTATED = (_C, -_S, 0.0, _S, _C, 0.0, 0.0, 0.0, 1.0)


@pytest.fixture(scope="module")
def reference() -> Segmentation:
    return read_segmentation(ctchest4_segmentation_path())


def _assert_same_segments(actual: Segmentation, expected: Segmentation) -> None:
    assert actual.names() == expected.names()
    assert actual.geometry == expected.geometry
    for got, want in zip(actual.segments, expected.segments):
        assert np.array_equal(got.mask, want.mask), got.name
        assert got.color == want.color, got.name
        assert got.terminology == want.terminology, got.name


# --- volumes -------------------------------------------------------------------------------------


def test_ctchest4_volume_geometry_and_axis_order():
    volume = read_volume(ctchest4_volume_path())
    geometry = volume.geometry
    assert volume.array.shape == geometry.shape == (128, 128, 34)
    assert geometry.spacing == pytest.approx((3.046876, 3.046876, 10.0), abs=1e-5)
    assert np.allclose(np.reshape(geometry.direction, (3, 3)), np.diag([-1.0, -1.0, 1.0]))
    assert geometry.origin == pytest.approx((193.096, 216.396, -340.25), abs=1e-3)
    assert volume.modality_hint is None
    assert volume.path == str(ctchest4_volume_path())
    # Slicer's IJK order is the NRRD file's axis order, which pynrrd returns with index_order="F".
    raw, header = nrrd.read(str(ctchest4_volume_path()))
    assert np.array_equal(volume.array, raw)
    ijk_to_lps = geometry.ijk_to_lps()
    assert np.allclose(ijk_to_lps[:3, :3], header["space directions"].T)
    assert np.allclose(ijk_to_lps[:3, 3], header["space origin"])


def test_checksum_depends_on_voxels_and_geometry():
    volume = read_volume(ctchest4_volume_path())
    same = volume_from_array(volume.array.copy(), volume.geometry)
    assert same.checksum() == volume.checksum()
    changed = volume.array.copy()
    changed[5, 6, 7] += 1
    assert volume_from_array(changed, volume.geometry).checksum() != volume.checksum()
    moved = Geometry(volume.geometry.shape, volume.geometry.spacing, (0.0, 0.0, 0.0), volume.geometry.direction)
    assert volume_from_array(volume.array, moved).checksum() != volume.checksum()
    # what an encoder sees: the voxels alone
    assert volume_from_array(volume.array, moved).voxel_checksum() == volume.voxel_checksum()
    assert volume_from_array(changed, volume.geometry).voxel_checksum() != volume.voxel_checksum()


def test_voxel_checksum_survives_a_file_round_trip_that_changes_the_geometry_digits(tmp_path: Path):
    """A generated volume's float geometry (spacing 2.437500762939456, direction -0.9999999999999999) comes
    back from NRRD with other last digits: the volume checksum changes, the voxel checksum that keys slice
    embeddings does not, so embeddings made before the volume was stored serve it after."""
    spacing = 0.8125000254313187 * 3
    geometry = Geometry((8, 9, 4), (spacing, spacing, 5.999999999999997), (1.0, 2.0, 3.0),
                        (-0.9999999999999999, 0.0, 0.0, 0.0, -0.9999999999999999, 0.0, 0.0, 0.0, 1.0))
    volume = volume_from_array(np.random.default_rng(1).normal(size=(8, 9, 4)).astype(np.float32), geometry)
    write_volume(tmp_path / "v.nrrd", volume)
    back = read_volume(tmp_path / "v.nrrd")
    assert np.array_equal(back.array, volume.array)
    assert back.checksum() != volume.checksum()
    assert back.voxel_checksum() == volume.voxel_checksum()


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".mha", ".nrrd"])
def test_single_file_formats_round_trip(tmp_path: Path, suffix: str):
    rng = np.random.default_rng(0)
    array = rng.normal(size=(7, 5, 4)).astype(np.float32)
    spacing, origin = (0.7, 1.3, 2.5), (-12.5, 40.0, 3.25)
    source = tmp_path / f"source{suffix}"
    sitk.WriteImage(sitk_image(array, spacing, origin, ROTATED), str(source))

    volume = read_volume(source)
    assert np.array_equal(volume.array, array)
    assert volume.geometry.matches(Geometry((7, 5, 4), spacing, origin, ROTATED), atol=1e-5)

    copy = tmp_path / "copy.nrrd"
    write_volume(copy, volume)
    again = read_volume(copy)
    assert np.array_equal(again.array, array)
    assert again.geometry.matches(volume.geometry, atol=1e-9)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["copy.nrrd", source.name])


def test_mhd_with_detached_data(tmp_path: Path):
    array = np.arange(60, dtype=np.int16).reshape(5, 4, 3)
    sitk.WriteImage(sitk_image(array, (1.0, 2.0, 3.0), (0.0, 0.0, 0.0), ROTATED), str(tmp_path / "v.mhd"))
    volume = read_volume(tmp_path / "v.mhd")
    assert volume.array[4, 3, 2] == 59 and volume.array[1, 0, 0] == 12
    assert volume.geometry.spacing == pytest.approx((1.0, 2.0, 3.0))


def test_4d_with_one_time_point_reads_as_3d(tmp_path: Path):
    array = np.arange(24, dtype=np.float32).reshape(1, 4, 3, 2)  # (t, K, J, I)
    sitk.WriteImage(sitk.GetImageFromArray(array, isVector=False), str(tmp_path / "one.nii.gz"))
    volume = read_volume(tmp_path / "one.nii.gz")
    assert volume.array.shape == (2, 3, 4)
    assert volume.array[1, 2, 3] == array[0, 3, 2, 1]


# --- volume errors -------------------------------------------------------------------------------


def test_missing_volume_names_the_path(tmp_path: Path):
    missing = tmp_path / "nope.nrrd"
    with pytest.raises(InputError, match="not found") as error:
        read_volume(missing)
    assert str(missing) in str(error.value)


def test_text_file_is_not_an_image(tmp_path: Path):
    text = tmp_path / "notes.nrrd"
    text.write_text("this is not an image\n")
    with pytest.raises(InputError, match="Cannot read") as error:
        read_volume(text)
    assert str(text) in str(error.value) and "expected" in str(error.value)




def test_4d_image_is_refused(tmp_path: Path):
    path = tmp_path / "series.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((3, 4, 5, 6), np.float32), isVector=False), str(path))
    with pytest.raises(InputError, match=r"4D image of size \(6, 5, 4, 3\)") as error:
        read_volume(path)
    assert str(path) in str(error.value)


def test_multi_component_image_is_refused(tmp_path: Path):
    path = tmp_path / "rgb.nrrd"
    vector = sitk.GetImageFromArray(np.zeros((4, 5, 6, 3), np.uint8), isVector=True)
    sitk.WriteImage(vector, str(path))
    with pytest.raises(InputError, match="3 components per voxel") as error:
        read_volume(path)
    assert str(path) in str(error.value)


def test_nan_voxels_are_counted_and_refused(tmp_path: Path):
    array = np.zeros((4, 5, 6), np.float32)
    array[0, 0, 0] = array[1, 2, 3] = array[3, 4, 5] = np.nan
    path = tmp_path / "nan.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(array), str(path))
    with pytest.raises(InputError, match="contains 3 NaN voxels; expected finite intensities") as error:
        read_volume(path)
    assert str(path) in str(error.value)
    array[:] = 0
    array[2, 2, 2] = np.inf
    geometry = Geometry((4, 5, 6), (1, 1, 1), (0, 0, 0), np.eye(3).ravel())
    with pytest.raises(InputError, match="1 infinite voxels"):
        volume_from_array(array, geometry)


def test_array_and_geometry_shapes_must_agree():
    geometry = Geometry((4, 5, 6), (1, 1, 1), (0, 0, 0), np.eye(3).ravel())
    with pytest.raises(InputError, match=r"shape \(4, 5, 7\) but its geometry says \(4, 5, 6\)"):
        volume_from_array(np.zeros((4, 5, 7)), geometry)


def test_write_volume_refuses_detached_or_unknown_formats(tmp_path: Path):
    volume = read_volume(ctchest4_volume_path())
    for name in ("out.nhdr", "out.mhd", "out.png"):
        with pytest.raises(InputError, match=name):
            write_volume(tmp_path / name, volume)
    assert list(tmp_path.iterdir()) == []


# --- segmentations -------------------------------------------------------------------------------


def test_reference_segmentation(reference: Segmentation):
    assert reference.names() == CTCHEST4_NAMES
    assert reference.geometry.matches(read_volume(ctchest4_volume_path()).geometry)
    raw, _ = nrrd.read(str(ctchest4_segmentation_path()))
    for label, segment in enumerate(reference.segments, start=1):
        assert segment.mask.dtype == bool and segment.mask.shape == (128, 128, 34)
        assert np.array_equal(segment.mask, raw == label), segment.name
        # The terminology module carries exactly this file's codes and colours.
        assert segment.terminology == standard_terminology(segment.name)
        assert segment.color == default_color(segment.name)
    right_lung = reference.get("right lung")
    assert right_lung.terminology["type"][1] == "39607008"
    assert right_lung.terminology["typeModifier"] == ["SCT", "24028007", "Right"]


def test_segmentation_round_trip_is_exact(tmp_path: Path, reference: Segmentation):
    path = tmp_path / "copy.seg.nrrd"
    write_segmentation(path, reference)
    _assert_same_segments(read_segmentation(path), reference)
    assert [p.name for p in tmp_path.iterdir()] == ["copy.seg.nrrd"]


def test_overlapping_segments_round_trip(tmp_path: Path):
    original = read_segmentation(ctchest4_overlapping_segmentation_path())
    assert original.names() == CTCHEST4_NAMES + ["overlapping sphere"]
    sphere = original.get("overlapping sphere").mask
    overlapped = [s.name for s in original.segments[:-1] if np.any(s.mask & sphere)]
    assert overlapped, "the sample must contain overlapping segments"

    path = tmp_path / "overlap.seg.nrrd"
    write_segmentation(path, original)
    _assert_same_segments(read_segmentation(path), original)
    header = nrrd.read_header(str(path))
    assert list(header["sizes"]) == [2, 128, 128, 34]
    assert header["Segment7_Name"] == "overlapping sphere"
    assert header["Segment7_Layer"] == "1"
    assert {header[f"Segment{i}_Layer"] for i in range(7)} == {"0"}


def test_written_file_has_slicer_header(tmp_path: Path, reference: Segmentation):
    path = tmp_path / "slicer.seg.nrrd"
    write_segmentation(path, reference)
    header = nrrd.read_header(str(path))
    assert header["space"] == "left-posterior-superior"
    assert list(header["sizes"]) == [128, 128, 34]
    assert np.allclose(header["space directions"].T, reference.geometry.ijk_to_lps()[:3, :3])
    assert np.allclose(header["space origin"], reference.geometry.origin)
    assert header["Segmentation_MasterRepresentation"] == "Binary labelmap"
    assert header["Segmentation_ReferenceImageExtentOffset"] == "0 0 0"
    for index, name in enumerate(CTCHEST4_NAMES):
        assert header[f"Segment{index}_Name"] == name
        assert header[f"Segment{index}_ID"] == f"Segment_{index + 1}"
        assert header[f"Segment{index}_Extent"] == "0 127 0 127 0 33"
        color = tuple(float(v) for v in header[f"Segment{index}_Color"].split())
        assert color == reference.segments[index].color
    assert "TerminologyEntry:Segmentation category and type - 3D Slicer General Anatomy list" in header[
        "Segment4_Tags"
    ]
    assert "SCT^39607008^Lung~SCT^24028007^Right" in header["Segment4_Tags"]


def test_new_segments_get_standard_terminology_and_colours(tmp_path: Path):
    geometry = Geometry((10, 12, 8), (0.8, 0.8, 2.0), (-5.0, 7.0, 11.0), ROTATED)
    liver = np.zeros(geometry.shape, bool)
    liver[2:6, 3:9, 1:5] = True
    segmentation = Segmentation(geometry)
    segmentation.add(Segment("Liver", liver))
    segmentation.add(Segment("left kidney", np.roll(liver, 4, axis=0)))
    segmentation.add(Segment("nodule", liver & ~np.roll(liver, 1, axis=2)))
    assert segmentation.get("liver").terminology["type"] == ["SCT", "10200004", "Liver"]
    assert segmentation.get("left kidney").terminology["typeModifier"] == ["SCT", "7771000", "Left"]
    assert segmentation.get("nodule").terminology is None
    assert segmentation.get("nodule").color == default_color("NODULE")
    assert segmentation.get("liver").color == pytest.approx((221 / 255, 130 / 255, 101 / 255))

    path = tmp_path / "organs.seg.nrrd"
    write_segmentation(path, segmentation)
    again = read_segmentation(path)
    _assert_same_segments(again, segmentation)
    assert again.geometry.matches(geometry, atol=1e-12)


def test_standard_terminology_names():
    expected = set(CTCHEST4_NAMES) | {
        "liver", "spleen", "right kidney", "left kidney", "heart", "aorta", "pancreas", "stomach", "gallbladder",
    }
    assert set(standard_names()) == expected
    codes = {name: standard_terminology(name.upper())["type"][1] for name in expected}
    assert codes["spleen"] == "78961009" and codes["gallbladder"] == "28231008"
    assert codes["aorta"] == "15825003" and codes["right kidney"] == "64033007"
    assert standard_terminology("unknown thing") is None
    first = standard_terminology("heart")
    first["type"][1] = "changed"
    assert standard_terminology("heart")["type"][1] == "80891009"


# --- segmentation errors -------------------------------------------------------------------------


def test_get_is_case_insensitive_and_suggests(reference: Segmentation):
    assert reference.get("RIGHT Lung") is reference.segments[4]
    with pytest.raises(InputError) as error:
        reference.get("rigth lung")
    message = str(error.value)
    assert "'rigth lung'" in message and str(ctchest4_segmentation_path()) in message
    assert "closest match: 'right lung'" in message
    assert "'left lung'" in message and "'tissue'" in message


def test_add_refuses_duplicates_unless_replace(reference: Segmentation):
    segmentation = Segmentation(reference.geometry, list(reference.segments))
    new_ribs = Segment("Ribs", np.zeros(reference.geometry.shape, bool))
    with pytest.raises(InputError, match="already has a segment named 'ribs'"):
        segmentation.add(new_ribs)
    segmentation.add(new_ribs, replace=True)
    assert segmentation.names()[0] == "Ribs" and len(segmentation.segments) == 7
    assert not segmentation.get("ribs").mask.any()


def test_mask_shape_mismatch_is_refused(tmp_path: Path, reference: Segmentation):
    bad = Segmentation(reference.geometry, [Segment("liver", np.zeros((128, 128, 33), bool))])
    path = tmp_path / "bad.seg.nrrd"
    with pytest.raises(InputError, match=r"'liver'.*\(128, 128, 33\).*\(128, 128, 34\)"):
        write_segmentation(path, bad)
    with pytest.raises(InputError, match="'liver'"):
        Segmentation(reference.geometry).add(bad.segments[0])
    assert not path.exists()


def test_duplicate_names_are_refused_on_write(tmp_path: Path, reference: Segmentation):
    twice = Segmentation(reference.geometry, [reference.segments[0], Segment("RIBS", reference.segments[0].mask)])
    with pytest.raises(InputError, match="more than one segment named 'RIBS'"):
        write_segmentation(tmp_path / "twice.seg.nrrd", twice)
    assert list(tmp_path.iterdir()) == []


def test_read_segmentation_errors(tmp_path: Path):
    with pytest.raises(InputError, match="not found") as error:
        read_segmentation(tmp_path / "missing.seg.nrrd")
    assert "missing.seg.nrrd" in str(error.value)
    text = tmp_path / "text.seg.nrrd"
    text.write_text("hello")
    with pytest.raises(InputError, match="Cannot read .*text.seg.nrrd as a segmentation"):
        read_segmentation(text)
    with pytest.raises(InputError, match="CTChest4.nrrd as a segmentation"):
        read_segmentation(ctchest4_volume_path())


def test_write_segmentation_needs_seg_nrrd_name_and_existing_folder(tmp_path: Path, reference: Segmentation):
    with pytest.raises(InputError, match=r"\.seg\.nrrd"):
        write_segmentation(tmp_path / "labels.nrrd", reference)
    with pytest.raises(InputError, match="does not exist") as error:
        write_segmentation(tmp_path / "no" / "such" / "x.seg.nrrd", reference)
    assert str(tmp_path / "no" / "such") in str(error.value)


# --- atomic output -------------------------------------------------------------------------------


def test_atomic_output_publishes_only_on_success(tmp_path: Path):
    final = tmp_path / "result.seg.nrrd"
    with atomic_output(final) as temporary:
        assert temporary.parent == tmp_path
        assert temporary.name.endswith(".seg.nrrd") and temporary.name != final.name
        temporary.write_bytes(b"new")
        assert not final.exists()
    assert final.read_bytes() == b"new"
    assert [p.name for p in tmp_path.iterdir()] == ["result.seg.nrrd"]


def test_atomic_output_leaves_nothing_when_the_body_raises(tmp_path: Path):
    final = tmp_path / "fresh.nrrd"
    with pytest.raises(RuntimeError, match="writer failed"):
        with atomic_output(final) as temporary:
            temporary.write_bytes(b"half")
            raise RuntimeError("writer failed")
    assert list(tmp_path.iterdir()) == []

    existing = tmp_path / "kept.nrrd"
    existing.write_bytes(b"old")
    with pytest.raises(KeyboardInterrupt):
        with atomic_output(existing) as temporary:
            temporary.write_bytes(b"partial")
            raise KeyboardInterrupt
    assert existing.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["kept.nrrd"]
