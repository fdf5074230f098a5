"""The `medsegadapt` command line: help, bad input (clear message, exit 2, no output) and a real run."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk

from MedSegAdaptLib.cli import build_parser, main
from MedSegAdaptLib.io import read_segmentation
from MedSegAdaptLib.io.sample_data import (
    ctchest4_segmentation_path,
    ctchest4_volume_path,
)

CT = str(ctchest4_volume_path())


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_help_documents_every_option():
    parser = build_parser()
    for name, sub in parser._subparsers._group_actions[0].choices.items():
        for action in sub._actions:
            if action.option_strings and action.dest != "help":
                assert action.help, f"{name} {action.option_strings} has no help"
    out = subprocess.run([sys.executable, "-m", "MedSegAdaptLib.cli", "segment", "--help"],
                         capture_output=True, text=True, check=True).stdout
    for option in ("--box-ijk", "--point-ijk", "--modality", "--checkpoint", "--device", "--structure"):
        assert option in out


@pytest.mark.parametrize("argv, message", [
    (["segment", "missing.nrrd", "--structure", "liver", "--box-ijk", "0,0,0,5,5,5"], "missing.nrrd"),
    (["segment", CT, "--structure", "liver", "--box-ijk", "10,10,40,20,20,50"], "outside the volume along k"),
    (["segment", CT, "--structure", "liver", "--box-ijk", "30,10,5,20,20,6"], "empty along i"),
    (["segment", CT, "--structure", "liver", "--box-ijk", "1,2,3"], "not six comma-separated"),
    (["segment", CT, "--structure", "liver"], "needs a prompt"),
    (["segment", CT, "--structure", "liver", "--point-ijk", "1,2,3,9"], "label 0"),
    (["segment", CT, "--structure", "liver", "--box-ijk", "0,0,0,5,5,5", "--device", "tpu"], "unknown device 'tpu'"),
])
def test_bad_input_exits_2_with_a_clear_message_and_no_output(capsys, tmp_path, argv, message):
    output = tmp_path / "out.seg.nrrd"
    code, _, err = run_cli(capsys, *argv, "-o", str(output))
    assert code == 2
    assert err.startswith("error: ") and message in err
    assert list(tmp_path.iterdir()) == []


def test_corrupt_checkpoint(capsys, tmp_path):
    checkpoint = tmp_path / "model.pth"
    checkpoint.write_bytes(b"\x00garbage" * 50)
    code, _, err = run_cli(capsys, "segment", CT, "--structure", "liver", "--box-ijk", "0,0,0,5,5,5",
                           "--checkpoint", str(checkpoint), "-o", str(tmp_path / "out.seg.nrrd"))
    assert code == 2 and "model.pth could not be read" in err
    assert not (tmp_path / "out.seg.nrrd").exists()


@pytest.mark.parametrize("array, message", [
    (np.zeros((8, 8), np.float32), "is a single 2D slice (8 x 8 pixels); a 3D volume is needed"),
    (np.full((4, 4, 4), np.nan, np.float32), "NaN"),
])
def test_bad_images(capsys, tmp_path, array, message):
    path = tmp_path / "bad.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(array), str(path))
    code, _, err = run_cli(capsys, "segment", str(path), "--structure", "liver", "--box-ijk", "0,0,0,1,1,1",
                           "-o", str(tmp_path / "out.seg.nrrd"))
    assert code == 2 and "bad.nrrd" in err and message in err
    assert not (tmp_path / "out.seg.nrrd").exists()


def test_non_image_file(capsys, tmp_path):
    path = tmp_path / "notes.nrrd"
    path.write_text("radiology report, not an image")
    code, _, err = run_cli(capsys, "segment", str(path), "--structure", "liver", "--box-ijk", "0,0,0,1,1,1",
                           "-o", str(tmp_path / "out.seg.nrrd"))
    assert code == 2 and "notes.nrrd" in err


def test_evaluate_reference_against_itself(capsys):
    reference = str(ctchest4_segmentation_path())
    code, out, _ = run_cli(capsys, "evaluate", reference, reference, "--json")
    rows = json.loads(out)
    assert code == 0 and len(rows) == 7
    assert all(row["dice"] == 1.0 and row["hd95_mm"] == 0.0 for row in rows)


@pytest.mark.slow
def test_segment_and_evaluate_end_to_end(capsys, tmp_path, embedding_dir):
    output = tmp_path / "lung.seg.nrrd"
    code, out, _ = run_cli(capsys, "segment", CT, "--structure", "Left Lung", "--box-ijk", "11,30,4,68,98,33",
                           "-o", str(output), "--device", "cpu", "--cache-dir", str(embedding_dir))
    assert code == 0
    assert "modality: ct (1st intensity percentile" in out and "ct-lung" in out
    written = read_segmentation(output)
    assert written.names() == ["Left Lung"]
    assert written.get("left lung").terminology["type"][1] == "39607008"  # SNOMED CT: Lung
    assert written.geometry.matches(read_segmentation(ctchest4_segmentation_path()).geometry)
    code, out, _ = run_cli(capsys, "evaluate", str(output), str(ctchest4_segmentation_path()), "--json")
    (row,) = json.loads(out)
    assert row["name"].lower() == "left lung" and row["dice"] > 0.78
