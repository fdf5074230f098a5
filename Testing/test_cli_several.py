"""`medsegadapt segment` with several structures in one output (boxes paired with --structure, or a report
naming several) and `--refine PREVIOUS.seg.nrrd` (issue #18 items 2 and 3), run in-process."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from scipy.ndimage import distance_transform_edt

from MedSegAdaptLib.cli import main
from MedSegAdaptLib.evaluation.metrics import dice
from MedSegAdaptLib.io import (
    Segment,
    Segmentation,
    read_segmentation,
    write_segmentation,
)
from MedSegAdaptLib.io.sample_data import ctchest4_volume_path

CT = str(ctchest4_volume_path())
LEFT_BOX, RIGHT_BOX = "11,30,4,68,98,33", "55,32,5,112,101,33"


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture()
def shared_segmenter(monkeypatch, segmenter):
    """The session's Segmenter for the command, so its slice embeddings are reused and no model is loaded."""
    monkeypatch.setattr("MedSegAdaptLib.cli.segment.load_segmenter", lambda *args, **kwargs: segmenter)
    return segmenter


@pytest.mark.parametrize("argv, message", [
    (["--structure", "left lung", "--structure", "right lung", "--box-ijk", LEFT_BOX],
     "2 --structure and 1 --box-ijk given"),
    (["--structure", "left lung", "--box-ijk", LEFT_BOX, "--box-ijk", RIGHT_BOX], "1 --structure and 2 --box-ijk"),
    (["--structure", "left lung", "--structure", "right lung", "--box-ijk", LEFT_BOX, "--box-ijk", RIGHT_BOX,
      "--point-ijk", "30,60,20"], "--point-ijk is for one structure"),
    (["--structure", "left lung", "--structure", "Left Lung", "--box-ijk", LEFT_BOX, "--box-ijk", RIGHT_BOX],
     "is given twice"),
    (["--structure", "left lung", "--structure", "right lung", "--box-ijk", LEFT_BOX, "--box-ijk", "0,0,0,5,5,99"],
     "reaches outside the volume along k"),
    (["--structure", "left lung", "--refine", "prev.seg.nrrd"], "--refine needs the edit"),
    (["--report", "left lung", "--refine", "prev.seg.nrrd", "--point-ijk", "30,60,20"], "--refine needs one --structure"),
    (["--structure", "left lung", "--refine", "prev.seg.nrrd", "--point-ijk", "30,60,20", "--point-ijk", "30,60,21"],
     "must lie on one slice along --axis k; they are on k = 20, 21"),
    (["--structure", "left lung", "--refine", "prev.seg.nrrd", "--edit-box-ijk", "10,30,19,60,90,20"],
     "must be one slice thick along --axis k"),
    (["--structure", "left lung", "--refine", "prev.seg.nrrd", "--point-ijk", "30,60,20", "--box-ijk", "0,0,22,60,90,30"],
     "outside --box-ijk's slices 22..30"),
    (["--structure", "left lung", "--refine", "missing.seg.nrrd", "--point-ijk", "30,60,20"], "missing.seg.nrrd"),
    (["--structure", "left lung", "--box-ijk", LEFT_BOX, "--only-this-slice"], "are for --refine"),
])
def test_bad_several_or_refine_arguments_exit_2_before_any_model(capsys, tmp_path, monkeypatch, argv, message):
    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded before the arguments were checked")

    monkeypatch.setattr("MedSegAdaptLib.cli.segment.load_segmenter", no_model)
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(capsys, "segment", CT, *argv, "-o", str(tmp_path / "out.seg.nrrd"))
    assert code == 2 and err.startswith("error: ") and message in err
    assert list(tmp_path.iterdir()) == []


def test_refine_rejects_a_previous_segmentation_off_the_grid_or_without_the_segment(capsys, tmp_path, monkeypatch,
                                                                                 ctchest4):
    monkeypatch.setattr("MedSegAdaptLib.cli.segment.load_segmenter", lambda *a, **k: pytest.fail("model loaded"))
    volume, reference = ctchest4
    previous = tmp_path / "prev.seg.nrrd"
    write_segmentation(previous, Segmentation(volume.geometry, [reference.get("right lung")]))
    argv = ["segment", CT, "--refine", str(previous), "--point-ijk", "30,60,20", "-o", str(tmp_path / "out.seg.nrrd")]
    code, _, err = run_cli(capsys, *argv, "--structure", "left lung")
    assert code == 2 and "No segment named 'left lung'" in err and "'right lung'" in err
    small = dataclasses.replace(volume.geometry, shape=(8, 8, 8))
    write_segmentation(previous, Segmentation(small, [Segment("left lung", np.ones((8, 8, 8), bool))]))
    code, _, err = run_cli(capsys, *argv, "--structure", "left lung")
    assert code == 2 and "does not lie on the image's voxel grid" in err
    assert not (tmp_path / "out.seg.nrrd").exists()


def test_a_report_naming_several_structures_gets_one_segment_each(capsys, tmp_path, ctchest4):
    """Whole structures from the localiser's own masks: no model runs. Liver cannot be found from a report
    on a chest CT: reported, not fatal."""
    _, reference = ctchest4
    output = tmp_path / "lungs.seg.nrrd"
    code, out, _ = run_cli(capsys, "segment", CT, "--report", "The left lung is clear.\nRight lung: clear. "
                           "Liver unremarkable.", "-o", str(output))
    assert code == 0, out
    assert "the report names 3 structures: left lung, right lung, liver" in out
    assert "liver (from 'Liver unremarkable.'): not segmented: finding 'liver' from a report alone" in out
    written = read_segmentation(output)
    assert written.names() == ["left lung", "right lung"]
    for name in written.names():
        assert dice(written.get(name).mask, reference.get(name).mask) > 0.8
    code, out, _ = run_cli(capsys, "segment", CT, "--report", "Left lung clear. Right lung clear.", "--list", "--json")
    entries = json.loads(out)
    assert code == 0 and [e["report"]["structure"] for e in entries] == ["left lung", "right lung"]
    assert all(e["candidates"] and e["picked_rank"] is None for e in entries)


@pytest.mark.slow
def test_several_structures_share_one_segmenter_and_one_output(capsys, tmp_path, shared_segmenter, ctchest4):
    _, reference = ctchest4
    output = tmp_path / "lungs.seg.nrrd"
    middle = ["--structure", "left lung", "--box-ijk", "11,30,16,68,98,22",  # seven slices each: decoding is the cost
              "--structure", "right lung", "--box-ijk", "55,32,16,112,101,22"]
    code, out, _ = run_cli(capsys, "segment", CT, *middle, "-o", str(output), "--json")
    assert code == 0
    left, right = json.loads(out)
    assert (left["structure"], right["structure"]) == ("left lung", "right lung")
    assert left["preset"] == right["preset"] and left["preset"].startswith("ct-lung")
    assert right["slices_encoded"] == 0  # the same slices on the same preset: the left lung's embeddings
    written = read_segmentation(output)
    assert written.names() == ["left lung", "right lung"]
    for name in written.names():
        assert dice(written.get(name).mask[:, :, 16:23], reference.get(name).mask[:, :, 16:23]) > 0.85
    code, out, _ = run_cli(capsys, "segment", CT, "--structure", "left lung", "--box-ijk", "11,30,18,68,98,20",
                           "--structure", "right lung", "--box-ijk", "55,32,18,112,101,20", "-o", str(output))
    assert code == 0
    assert "right lung: " in out and "0 slices encoded, embeddings shared with 'left lung'" in out
    assert f"wrote {output} (2 segments: left lung, right lung)" in out


@pytest.mark.slow
def test_refine_fills_a_cleared_slice_and_keeps_the_other_segments(capsys, tmp_path, shared_segmenter, ctchest4):
    volume, reference = ctchest4
    left, right = reference.get("left lung").mask, reference.get("right lung").mask
    cleared = left.copy()
    cleared[:, :, 20] = False
    previous = tmp_path / "prev.seg.nrrd"
    write_segmentation(previous, Segmentation(volume.geometry, [Segment("left lung", cleared),
                                                                 Segment("right lung", right)]))
    depth = distance_transform_edt(left[:, :, 20])
    i, j = np.unravel_index(int(np.argmax(depth)), depth.shape)
    output = tmp_path / "refined.seg.nrrd"
    code, out, _ = run_cli(capsys, "segment", CT, "--structure", "Left Lung", "--refine", str(previous),
                           "--point-ijk", f"{i},{j},20", "-o", str(output), "--json")
    assert code == 0
    summary = json.loads(out)
    assert summary["edited_slice"] == 20 and 20 in summary["changed_slices"]
    assert summary["kept_unchanged"] == ["right lung"] and summary["stopped_because"]
    written = read_segmentation(output)
    assert written.names() == ["left lung", "right lung"]
    assert np.array_equal(written.get("right lung").mask, right)
    assert dice(written.get("left lung").mask[:, :, 20], left[:, :, 20]) >= 0.9
    unchanged = [k for k in range(left.shape[2]) if k not in summary["changed_slices"]]
    assert np.array_equal(written.get("left lung").mask[:, :, unchanged], cleared[:, :, unchanged])
