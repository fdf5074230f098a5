"""DICOM as it comes from a scanner: folders of several series, single 2D slices, oblique series, colour
and multi-frame files; read_volume, list_dicom_series and `medsegadapt series` / `--series`. Every file
is a real DICOM file written in tmp_path with SimpleITK (GDCM)."""
from __future__ import annotations

import json
from pathlib import Path

import nrrd
import numpy as np
import pytest
import SimpleITK as sitk
from dicom_files import FLIPPED, write_dicom_series, write_multiframe, write_rgb_capture

from MedSegAdaptLib.cli import main
from MedSegAdaptLib.core.errors import InputError
from MedSegAdaptLib.io import (
    Geometry,
    Segment,
    Segmentation,
    list_dicom_series,
    read_segmentation,
    read_volume,
    write_segmentation,
)

UID = "1.2.826.0.1.3680043.2.1125."
THIN, THICK, SCOUT, DOSE, ENHANCED = (UID + suffix for suffix in ("111", "222", "333", "444", "555"))
SPACING, ORIGIN = (0.75, 0.8, 2.5), (100.0, -50.0, 20.0)


def _rotation(degrees_about_s: float, degrees_about_l: float) -> tuple[float, ...]:
    """A rotation (columns: the I, J, K directions in LPS) tilted about S then L: an oblique acquisition."""
    a, b = np.radians(degrees_about_s), np.radians(degrees_about_l)
    about_s = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    about_l = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    return tuple((about_l @ about_s).ravel())


OBLIQUE = _rotation(30.0, 20.0)


def _array(shape, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(-1000, 1000, size=shape, dtype=np.int16)


@pytest.fixture()
def scanner_folder(tmp_path: Path) -> Path:
    """A scanner's export: a one-slice scout, a thin 4-slice and a thick 2-slice series, a colour dose
    report, each series with its number and description."""
    folder = tmp_path / "export"
    folder.mkdir()
    write_dicom_series(folder, _array((6, 5, 1), 3), SPACING, ORIGIN, SCOUT, description="Scout", number=1)
    write_dicom_series(folder, _array((6, 5, 4)), SPACING, ORIGIN, THIN, description="Chest 2.5mm", number=2)
    write_dicom_series(folder, _array((6, 5, 2), 2), (0.75, 0.8, 5.0), ORIGIN, THICK, description="Chest 5mm",
                       number=3)
    write_rgb_capture(folder / "dose.dcm", DOSE)
    return folder


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# --- several series in a folder ------------------------------------------------------------------


def test_series_of_a_folder_are_listed_from_their_headers(scanner_folder: Path):
    series = list_dicom_series(scanner_folder)
    assert [one.uid for one in series] == [SCOUT, THIN, THICK, DOSE]  # by series number, unnumbered last
    scout, thin, thick, dose = series
    assert [one.description for one in series] == ["Scout", "Chest 2.5mm", "Chest 5mm", "dose report"]
    assert [one.modality for one in series] == ["CT", "CT", "CT", "OT"]
    assert [one.number for one in series] == [1, 2, 3, None]
    assert [len(one.files) for one in series] == [1, 4, 2, 1]
    assert thin.size == (6, 5, 4) and thick.size == (6, 5, 2) and dose.size == (10, 12, 1)
    assert thin.spacing == pytest.approx(SPACING) and thick.spacing == pytest.approx((0.75, 0.8, 5.0))
    assert scout.spacing is None  # a single slice has no slice spacing
    assert thin.problem is None and thick.problem is None
    assert "single 2D slice" in scout.problem and "colour" in dose.problem
    assert [Path(f).name for f in thin.files] == [f"111_{k:03d}.dcm" for k in range(4)]  # in slice order


def test_without_a_uid_the_largest_series_is_read_and_the_choice_is_said(scanner_folder: Path):
    notes = []
    volume = read_volume(scanner_folder, notify=notes.append)
    assert np.array_equal(volume.array, _array((6, 5, 4)))
    assert volume.modality_hint == "CT"
    expected = Geometry((6, 5, 4), SPACING, ORIGIN, FLIPPED)
    assert volume.geometry.matches(expected), volume.geometry.describe_mismatch(expected)
    assert volume.dicom_series.uid == THIN and volume.path == str(scanner_folder)
    assert len(notes) == 1
    assert THIN in notes[0] and "largest" in notes[0] and "4 series" in notes[0] and "'Chest 2.5mm'" in notes[0]


def test_the_default_skips_a_larger_series_that_is_not_a_greyscale_volume(tmp_path: Path):
    for index in (1, 2, 3):
        write_rgb_capture(tmp_path / f"capture{index}.dcm", DOSE, index)
    write_dicom_series(tmp_path, _array((6, 5, 2), 2), SPACING, ORIGIN, THICK)
    assert [len(one.files) for one in list_dicom_series(tmp_path)] == [2, 3]
    assert read_volume(tmp_path).dicom_series.uid == THICK


def test_a_series_uid_picks_that_series(scanner_folder: Path):
    notes = []
    volume = read_volume(scanner_folder, THICK, notify=notes.append)
    assert np.array_equal(volume.array, _array((6, 5, 2), 2))
    assert volume.geometry.spacing == pytest.approx((0.75, 0.8, 5.0))
    assert volume.dicom_series.description == "Chest 5mm"
    assert THICK in notes[0] and "chosen" in notes[0]


def test_an_unknown_series_uid_names_the_folder_and_the_uids_there(scanner_folder: Path):
    with pytest.raises(InputError) as error:
        read_volume(scanner_folder, UID + "999")
    message = str(error.value)
    assert f"{UID}999" in message and str(scanner_folder) in message
    assert all(uid in message for uid in (SCOUT, THIN, THICK, DOSE))


def test_a_series_uid_for_a_single_file_is_refused(scanner_folder: Path):
    file = scanner_folder / "111_000.dcm"
    with pytest.raises(InputError, match="picks one series of a DICOM folder") as error:
        read_volume(file, THIN)
    assert str(file) in str(error.value)


def test_folder_without_dicom(tmp_path: Path):
    (tmp_path / "readme.txt").write_text("no images here")
    for read in (read_volume, list_dicom_series):
        with pytest.raises(InputError, match="No DICOM series found") as error:
            read(tmp_path)
        assert str(tmp_path) in str(error.value)


# --- a single 2D slice ---------------------------------------------------------------------------


def _one_dicom_file(folder: Path) -> Path:
    return write_dicom_series(folder, _array((6, 5, 4)), SPACING, ORIGIN, THIN)[2]


def _single_slice_folder(folder: Path) -> Path:
    return write_dicom_series(folder, _array((6, 5, 1)), SPACING, ORIGIN, SCOUT)[0]


def _nrrd_2d(folder: Path) -> Path:
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((5, 6), np.int16)), str(folder / "slice.nrrd"))
    return folder / "slice.nrrd"


def _nrrd_one_deep(folder: Path) -> Path:
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((1, 5, 6), np.int16)), str(folder / "flat.nrrd"))
    return folder / "flat.nrrd"


def _png(folder: Path) -> Path:
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((5, 6), np.uint8)), str(folder / "slice.png"))
    return folder / "slice.png"


@pytest.mark.parametrize("make, read_folder", [
    (_one_dicom_file, False), (_single_slice_folder, True), (_nrrd_2d, False), (_nrrd_one_deep, False),
    (_png, False),
], ids=["one DICOM file", "single-slice series folder", "2D NRRD", "NRRD one slice deep", "PNG"])
def test_a_single_2d_slice_is_refused_naming_the_file(tmp_path: Path, make, read_folder: bool):
    file = make(tmp_path)
    with pytest.raises(InputError, match=r"is a single 2D slice \(6 x 5 pixels\); a 3D volume is needed") as error:
        read_volume(tmp_path if read_folder else file)
    assert str(file) in str(error.value)
    if make is _one_dicom_file:
        assert "give the folder" in str(error.value)


# --- oblique series ------------------------------------------------------------------------------


def test_an_oblique_series_keeps_its_direction_and_a_segmentation_over_it_too(tmp_path: Path):
    files = write_dicom_series(tmp_path, _array((6, 5, 4)), SPACING, ORIGIN, THIN, direction=OBLIQUE)
    volume = read_volume(tmp_path)
    expected = Geometry((6, 5, 4), SPACING, ORIGIN, OBLIQUE)
    assert volume.geometry.matches(expected), volume.geometry.describe_mismatch(expected)
    assert np.array_equal(volume.array, _array((6, 5, 4)))
    # each slice lies where its file's Image Position (Patient) says
    for k, file in enumerate(files):
        position = [float(v) for v in sitk.ReadImage(str(file)).GetMetaData("0020|0032").split("\\")]
        assert volume.geometry.ijk_to_lps() @ (0, 0, k, 1) == pytest.approx([*position, 1.0], abs=1e-4)

    mask = np.zeros(volume.array.shape, bool)
    mask[1:4, 2:4, 1:3] = True
    output = tmp_path / "out.seg.nrrd"
    write_segmentation(output, Segmentation(volume.geometry, [Segment("nodule", mask)]))
    back = read_segmentation(output)
    assert back.geometry.matches(volume.geometry, atol=1e-9), back.geometry.describe_mismatch(volume.geometry)
    assert np.array_equal(back.get("nodule").mask, mask)
    _, header = nrrd.read(str(output))
    axes = np.asarray(header["space directions"], float)[-3:]  # rows: the I, J, K axes in LPS
    assert np.allclose(axes.T, np.reshape(OBLIQUE, (3, 3)) * SPACING, atol=1e-6)


# --- colour and multi-frame files ----------------------------------------------------------------


@pytest.mark.parametrize("as_folder", [False, True], ids=["file", "folder"])
def test_a_colour_secondary_capture_is_refused_naming_the_file(tmp_path: Path, as_folder: bool):
    file = tmp_path / "capture.dcm"
    write_rgb_capture(file, DOSE)
    with pytest.raises(InputError, match=r"3 components per voxel.*a scalar \(greyscale\) image is expected") as error:
        read_volume(tmp_path if as_folder else file)
    assert str(file) in str(error.value)


@pytest.mark.parametrize("as_folder", [False, True], ids=["file", "folder"])
def test_a_multiframe_file_reads_as_a_3d_volume_with_its_geometry(tmp_path: Path, as_folder: bool):
    file = tmp_path / "enhanced.dcm"
    write_multiframe(file, _array((6, 5, 3)), (0.5, 0.6, 2.0), (1.0, 2.0, 3.0), OBLIQUE, ENHANCED)
    volume = read_volume(tmp_path if as_folder else file)
    assert np.array_equal(volume.array, _array((6, 5, 3)))
    assert volume.modality_hint == "CT"
    expected = Geometry((6, 5, 3), (0.5, 0.6, 2.0), (1.0, 2.0, 3.0), OBLIQUE)
    assert volume.geometry.matches(expected, atol=1e-5), volume.geometry.describe_mismatch(expected)
    if as_folder:
        (series,) = list_dicom_series(tmp_path)
        assert series.size == (6, 5, 3) and len(series.files) == 1 and series.problem is None


# --- command line --------------------------------------------------------------------------------


def test_series_command_lists_the_series_and_marks_the_default(capsys, scanner_folder: Path):
    code, out, _ = run_cli(capsys, "series", str(scanner_folder))
    assert code == 0
    rows = {line.split()[1] if line.startswith("*") else line.split()[0]: line for line in out.splitlines()}
    assert rows[THIN].startswith("*") and not rows[THICK].startswith("*")
    assert "Chest 5mm" in rows[THICK] and "6x5x2" in rows[THICK] and "0.75x0.8x5" in rows[THICK]
    assert "single 2D slice" in rows[SCOUT] and "colour" in rows[DOSE]
    assert "4 series" in out

    code, out, _ = run_cli(capsys, "series", str(scanner_folder), "--json")
    listed = json.loads(out)
    assert [(one["uid"], one["files"], one["default"]) for one in listed] == [
        (SCOUT, 1, False), (THIN, 4, True), (THICK, 2, False), (DOSE, 1, False)]


def test_series_command_on_a_file_or_an_empty_folder_exits_2(capsys, tmp_path: Path):
    code, _, err = run_cli(capsys, "series", str(tmp_path))
    assert code == 2 and "No DICOM series found" in err and str(tmp_path) in err
    code, _, err = run_cli(capsys, "series", str(tmp_path / "missing"))
    assert code == 2 and "is not a folder" in err


def test_store_add_image_reads_the_series_given(capsys, tmp_path: Path, scanner_folder: Path):
    store = tmp_path / "store"
    assert run_cli(capsys, "store", "init", str(store))[0] == 0
    code, out, err = run_cli(capsys, "store", "add-image", str(store), str(scanner_folder), "--series", THICK,
                             "--case-id", "thick")
    assert code == 0, err
    assert "6x5x2" in out and THICK in err and "chosen" in err


def test_segment_with_an_unknown_series_exits_2_and_writes_nothing(capsys, tmp_path: Path, scanner_folder: Path):
    output = tmp_path / "out.seg.nrrd"
    code, _, err = run_cli(capsys, "segment", str(scanner_folder), "--series", UID + "999", "--structure", "lung",
                           "--box-ijk", "0,0,0,3,3,1", "-o", str(output))
    assert code == 2 and err.startswith("error: ") and f"{UID}999" in err and THIN in err
    assert not output.exists()
