"""`medsegadapt segment IMAGE --report TEXT` with no box: candidates, picks and the segmentation (real weights)."""
from __future__ import annotations

import json

import pytest

from MedSegAdaptLib.cli import main
from MedSegAdaptLib.evaluation.metrics import dice
from MedSegAdaptLib.io import read_segmentation
from MedSegAdaptLib.io.sample_data import ctchest4_volume_path


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.slow
def test_a_report_alone_segments_the_nodule_and_lists_the_others(capsys, tmp_path, clinical):
    case, _, reference = clinical["lung1"]
    output = tmp_path / "nodule.seg.nrrd"
    code, out, err = run_cli(capsys, "segment", str(case.image_path), "--report", case.reports[0], "-o", str(output),
                             "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["picked_rank"] == 1 and result["method"] == "backbone" and len(result["candidates"]) > 1
    assert "right upper lobe" in result["candidates"][0]["reason"] and result["lesion"]["MedSegAdapt.VolumeMl"]
    segment = read_segmentation(output).get("lung nodule")
    assert dice(segment.mask, reference) > 0.85  # 0.943 measured (docs/segmentation.md)

    code, out, _ = run_cli(capsys, "segment", str(case.image_path), "--report", case.reports[0], "--list")
    assert code == 0 and out.count("score ") == len(result["candidates"]) and "*" not in out
    second = tmp_path / "second.seg.nrrd"
    code, out, _ = run_cli(capsys, "segment", str(case.image_path), "--report", case.reports[0], "--pick", "2",
                           "-o", str(second))
    assert code == 0 and " * 2." in out
    assert not (read_segmentation(second).get("lung nodule").mask & reference).any()
    code, _, err = run_cli(capsys, "segment", str(case.image_path), "--report", case.reports[0], "--pick", "99",
                           "-o", str(tmp_path / "none.seg.nrrd"))
    assert code == 2 and "candidate 99 does not exist" in err and not (tmp_path / "none.seg.nrrd").exists()


@pytest.mark.slow
def test_an_organ_query_uses_the_localisers_mask_and_a_wrong_request_writes_nothing(capsys, tmp_path, ctchest4):
    _, reference = ctchest4
    output = tmp_path / "lung.seg.nrrd"
    code, out, err = run_cli(capsys, "segment", str(ctchest4_volume_path()), "--report", "segment the left lung",
                             "-o", str(output))
    assert code == 0, err
    assert "the localiser's own mask" in out
    assert dice(read_segmentation(output).get("left lung").mask, reference.get("left lung").mask) > 0.95
    code, _, err = run_cli(capsys, "segment", str(ctchest4_volume_path()), "--report", "segment the liver",
                           "-o", str(tmp_path / "liver.seg.nrrd"))
    assert code == 2 and "draw a box" in err and not (tmp_path / "liver.seg.nrrd").exists()
    code, _, err = run_cli(capsys, "segment", str(ctchest4_volume_path()), "--structure", "left lung",
                           "--box-ijk", "13,32,6,66,96,33", "--list")
    assert code == 2 and "give --report without a box" in err
