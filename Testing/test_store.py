"""Fine-tuning store on the real CTChest4 image and its real Slicer segmentation."""
from __future__ import annotations

import argparse
import json
import sqlite3
from pathlib import Path

import nrrd
import numpy as np
import pytest
from monai.data import load_decathlon_datalist

from MedSegAdaptLib.cli.store import add_store_parser
from MedSegAdaptLib.core.errors import InputError
from MedSegAdaptLib.evaluation.metrics import dice
from MedSegAdaptLib.io import (
    Geometry,
    Segment,
    Segmentation,
    ctchest4_segmentation_path,
    ctchest4_volume_path,
    read_segmentation,
    read_volume,
    volume_from_array,
    write_segmentation,
    write_volume,
)
from MedSegAdaptLib.store import FineTuningStore, annotated_region, parse_slices
from MedSegAdaptLib.store.schema import SCHEMA_VERSION

CASE = "CTChest4"


@pytest.fixture(scope="module")
def reference() -> Segmentation:
    return read_segmentation(ctchest4_segmentation_path())


@pytest.fixture
def store(tmp_path: Path) -> FineTuningStore:
    """A store holding CTChest4 and the real segmentation as its prediction (version 1 of each)."""
    with FineTuningStore.init(tmp_path / "store") as opened:
        opened.add_image(ctchest4_volume_path(), modality="ct")
        opened.add_prediction(CASE, ctchest4_segmentation_path(), checkpoint_sha256="ab" * 32)
        yield opened


def cli(*argv: object) -> int:
    """Run ``medsegadapt store ...`` as the main command does: InputError prints and gives 2."""
    parser = argparse.ArgumentParser(prog="medsegadapt")
    add_store_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["store", *map(str, argv)])
    try:
        return args.func(args)
    except InputError as error:
        print(f"error: {error}")
        return 2


def corrected(reference: Segmentation, name: str, k: int) -> np.ndarray:
    """The reference mask of ``name``, slice ``k`` cleared and a 3x3 block added in the empty corner."""
    mask = reference.get(name).mask.copy()
    mask[:, :, k] = False
    mask[0:3, 0:3, k + 1] = True
    return mask


def write_seg(path: Path, geometry: Geometry, **masks: np.ndarray) -> Path:
    """A .seg.nrrd with one segment per keyword (underscores in names become spaces)."""
    write_segmentation(
        path, Segmentation(geometry, [Segment(n.replace("_", " "), m) for n, m in masks.items()])
    )
    return path


# --- init and opening ------------------------------------------------------------------------------


def test_init_refuses_non_stores_and_reopens(tmp_path: Path):
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="not empty and not a store"):
        FineTuningStore.init(busy)
    with pytest.raises(InputError, match="not a MedSegAdapt fine-tuning store"):
        FineTuningStore(busy)
    (busy / "manifest.sqlite").write_text("not a database")
    with pytest.raises(InputError, match="manifest"):
        FineTuningStore(busy)
    other = tmp_path / "other"
    other.mkdir()
    sqlite3.connect(other / "manifest.sqlite").execute("CREATE TABLE t (x)").connection.commit()
    with pytest.raises(InputError, match="not a MedSegAdapt fine-tuning store"):
        FineTuningStore(other)

    with FineTuningStore.init(tmp_path / "new" / "store") as store:
        store.add_image(ctchest4_volume_path())
    with FineTuningStore.init(tmp_path / "new" / "store") as again:  # init of a store opens it
        assert [case.case_id for case in again.cases()] == [CASE]
    connection = sqlite3.connect(tmp_path / "new" / "store" / "manifest.sqlite")
    assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert connection.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    connection.close()
    with pytest.raises(InputError, match="newer than this MedSegAdapt"):
        FineTuningStore(tmp_path / "new" / "store")


# --- cases -----------------------------------------------------------------------------------------


def test_add_image_copies_and_recognises_the_same_image(tmp_path: Path):
    with FineTuningStore.init(tmp_path / "store") as store:
        case, created = store.add_image(ctchest4_volume_path(), modality="CT")
        assert created and case.case_id == CASE and case.modality == "ct"
        assert case.image.parent == store.root / "images"
        copy = read_volume(case.image)
        original = read_volume(ctchest4_volume_path())
        assert np.array_equal(copy.array, original.array) and copy.geometry.matches(original.geometry)
        assert nrrd.read_header(str(case.image))["encoding"] == "gzip"

        again, created = store.add_image(ctchest4_volume_path(), case_id="other")
        assert not created and again.case_id == CASE
        # The same voxels in another format, with float noise in the geometry, are the same image.
        nifti = tmp_path / "chest.nii.gz"
        write_volume(nifti, original)
        assert store.add_image(nifti) == (again, False)
        # Different voxels are a different image: a new case, and its id must be free.
        changed = volume_from_array(original.array + 1, original.geometry)
        with pytest.raises(InputError, match="already used .* by a different image"):
            store.add_image(changed, case_id="ctchest4")  # case ids ignore letter case
        assert store.add_image(changed, case_id="chest-2")[1]
        assert store.case("chest-2").modality == "ct"  # no tag, no --modality: read from the intensities
        mr_like = volume_from_array(np.full(original.array.shape, 300.0, np.float32), original.geometry)
        assert store.add_image(mr_like, case_id="mr-1")[0].modality == "mr"
        with pytest.raises(InputError, match="Modality 'pet' is not supported"):
            store.add_image(mr_like, case_id="pet-1", modality="pet")
        assert [c.case_id for c in store.cases()] == ["chest-2", CASE, "mr-1"]
        assert store.case("CTCHEST4").case_id == CASE


@pytest.mark.parametrize("case_id", ["../escape", ".hidden", "a/b", "a b", "", "x" * 129, "/abs"])
def test_case_ids_that_could_escape_are_refused(tmp_path: Path, case_id: str):
    with FineTuningStore.init(tmp_path / "store") as store:
        with pytest.raises(InputError, match="Case id .* is not allowed"):
            store.add_image(ctchest4_volume_path(), case_id=case_id)
        assert store.cases() == [] and not any((store.root / "images").iterdir())


def test_unknown_case_suggests_the_closest(store: FineTuningStore, reference: Segmentation):
    with pytest.raises(InputError, match="Unknown case 'CTChest5'.*closest match: 'CTChest4'"):
        store.submit_mask("CTChest5", "ribs", reference.get("ribs").mask, "alice")


# --- submitting ------------------------------------------------------------------------------------


def test_correction_from_seg_nrrd_records_the_diff(store: FineTuningStore, reference: Segmentation, tmp_path):
    image = store.case(CASE)
    mask = corrected(reference, "right lung", 12)
    path = write_seg(
        tmp_path / "fix.seg.nrrd", image.geometry, right_lung=mask, tissue=reference.get("tissue").mask
    )
    [label] = store.submit_segmentation(CASE, path, "alice", structures=["Right Lung"], comment="slice 12")

    prediction = reference.get("right lung").mask
    assert (label.structure, label.version, label.kind) == ("right lung", 2, "correction")
    assert (label.annotator, label.comment, label.source, label.review_status) == (
        "alice",
        "slice 12",
        str(path),
        None,
    )
    assert label.diff == {
        "against_version": 1,
        "region": "whole volume",
        "voxels_added": int((mask & ~prediction).sum()),
        "voxels_removed": int((prediction & ~mask).sum()),
        "dice": pytest.approx(dice(mask, prediction), abs=1e-6),
    }
    assert label.diff["voxels_added"] == 9 and label.diff["voxels_removed"] > 0
    stored = read_volume(label.file)
    assert stored.array.dtype == np.uint8 and np.array_equal(stored.array, mask.astype(np.uint8))
    assert stored.geometry.matches(read_volume(image.image).geometry, atol=0)
    assert nrrd.read_header(str(label.file))["encoding"] == "gzip"
    assert "right-lung_v0002_" in label.file.name


def test_submit_without_structure_takes_every_segment_at_once(
    store: FineTuningStore, reference: Segmentation
):
    labels = store.submit_segmentation(CASE, ctchest4_segmentation_path(), "alice")
    assert [label.structure for label in labels] == reference.names()
    assert {label.version for label in labels} == {2}
    assert all(label.diff["dice"] == 1.0 and label.diff["voxels_added"] == 0 for label in labels)
    # A structure without a prediction starts at version 1 with no diff.
    liver = store.submit_mask(CASE, "liver", np.zeros(reference.geometry.shape, bool), "alice")
    assert (liver.version, liver.diff, liver.voxels) == (1, None, 0)


def test_partial_annotation_diff_covers_only_annotated_slices(
    store: FineTuningStore, reference: Segmentation
):
    mask = corrected(reference, "left lung", 20)
    mask[:, :, 10] = False  # outside the annotated slices: unknown, so not part of the diff
    label = store.submit_mask(CASE, "left lung", mask, "bob", annotated_slices={"k": [21, 20, 20]})
    prediction = reference.get("left lung").mask
    region = annotated_region(mask.shape, {"k": [20, 21]})
    assert label.annotated_slices == {"k": [20, 21]}
    assert label.diff["region"] == "annotated slices"
    assert label.diff["voxels_removed"] == int((prediction & ~mask)[region].sum())
    assert label.diff["voxels_removed"] < int((prediction & ~mask).sum())
    assert label.diff["dice"] == pytest.approx(dice(mask[region], prediction[region]), abs=1e-6)


def test_bad_labels_are_refused_and_leave_nothing(store: FineTuningStore, reference: Segmentation, tmp_path):
    before = sorted((store.root / "labels").rglob("*"))
    ribs = reference.get("ribs").mask
    shape = ribs.shape
    with pytest.raises(InputError, match=r"label values \[2\]; expected 0/1 or bool"):
        store.submit_mask(CASE, "ribs", ribs.astype(np.uint8) * 2, "alice")
    with pytest.raises(InputError, match="expected the case image's shape"):
        store.submit_mask(CASE, "ribs", ribs[:, :, :-1], "alice")
    with pytest.raises(InputError, match=r"slice\(s\) \[34\] on axis k are out of range.*0..33"):
        store.submit_mask(CASE, "ribs", ribs, "alice", annotated_slices={"k": [3, 34]})
    with pytest.raises(InputError, match="Unknown axis 'x'"):
        store.submit_mask(CASE, "ribs", ribs, "alice", annotated_slices={"x": [3]})
    with pytest.raises(InputError, match="Annotator is empty"):
        store.submit_mask(CASE, "ribs", ribs, "  ")
    with pytest.raises(InputError, match="cannot be submitted"):
        store.submit_mask(CASE, "ribs", ribs, "alice", kind="prediction")
    with pytest.raises(InputError, match="No segment named 'rib cage'.*closest match: 'ribs'"):
        store.submit_segmentation(CASE, ctchest4_segmentation_path(), "alice", structures=["rib cage"])

    moved = Geometry(shape, (3.0, 3.0, 10.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    elsewhere = write_seg(tmp_path / "moved.seg.nrrd", moved, ribs=ribs)
    with pytest.raises(InputError, match=r"does not match the image of case 'CTChest4': spacing .* origin"):
        store.submit_segmentation(CASE, elsewhere, "alice")
    with pytest.raises(InputError, match="does not match the image"):
        store.submit_mask(CASE, "ribs", volume_from_array(ribs.astype(np.uint8), moved), "alice")

    # A labelmap value that belongs to no segment (here 9) is refused.
    voxels, header = nrrd.read(str(ctchest4_segmentation_path()))
    voxels[0, 0, 0] = 9
    stray = tmp_path / "stray.seg.nrrd"
    nrrd.write(str(stray), voxels, header)
    with pytest.raises(InputError, match=r"voxel values \[9\] in layer 0 that belong to no segment"):
        store.submit_segmentation(CASE, stray, "alice")

    assert sorted((store.root / "labels").rglob("*")) == before
    assert [label.version for label in store.history(CASE, "ribs")] == [1]


def test_parse_slices():
    assert parse_slices(["k:12,30,47", "i:5", "K:1"]) == {"k": [12, 30, 47, 1], "i": [5]}
    for text in ["k12", "k:", "k:1,a", "k:1,,2"]:
        with pytest.raises(InputError, match="is not AXIS:N,N"):
            parse_slices([text])


# --- history, revert, review, training view ---------------------------------------------------------


def test_versions_are_never_overwritten(store: FineTuningStore, reference: Segmentation):
    masks = [corrected(reference, "ribs", k) for k in (3, 9, 15)]
    for mask in masks:
        store.submit_mask(CASE, "ribs", mask, "alice")
    history = store.history(CASE, "RIBS")
    assert [(label.version, label.kind) for label in history] == [
        (1, "prediction"),
        (2, "correction"),
        (3, "correction"),
        (4, "correction"),
    ]
    assert history[0].checkpoint_sha256 == "ab" * 32 and history[0].annotator is None
    assert len({label.file for label in history}) == 4
    for label, mask in zip(history[1:], masks, strict=True):
        assert np.array_equal(read_volume(label.file).array != 0, mask)

    reverted = store.revert(CASE, "ribs", 2, "carol", comment="v3 and v4 were wrong")
    assert (reverted.version, reverted.kind, reverted.source) == (5, "correction", "revert to version 2")
    assert np.array_equal(read_volume(reverted.file).array != 0, masks[0])
    assert store.training_view()[0].label_version == 5
    assert len(store.history(CASE, "ribs")) == 5 and store.verify().ok
    with pytest.raises(InputError, match="has no version 9 of 'ribs'; expected one of 1, 2, 3, 4, 5"):
        store.revert(CASE, "ribs", 9, "carol")
    with pytest.raises(InputError, match="Unknown structure 'rib' in case 'CTChest4'.*closest match: 'ribs'"):
        store.history(CASE, "rib")


def test_training_view_and_review_queue(store: FineTuningStore, reference: Segmentation):
    assert store.training_view() == []  # predictions never train
    empty_version = store.training_set_version()

    lung = store.submit_mask(CASE, "Right Lung", reference.get("right lung").mask, "alice")
    assert (lung.structure, lung.version, lung.diff["against_version"]) == ("right lung", 2, 1)
    after_correction = store.training_set_version()
    assert after_correction != empty_version
    assert [(r.structure, r.label_version) for r in store.training_view()] == [("right lung", 2)]

    pseudo = store.submit_mask(
        CASE,
        "right lung",
        corrected(reference, "right lung", 7),
        "model-v2",
        kind="pseudo-label",
        checkpoint_sha256="cd" * 32,
    )
    synthetic = store.submit_mask(CASE, "tissue", reference.get("tissue").mask, "adapter", kind="synthetic")
    assert pseudo.review_status == synthetic.review_status == "pending"
    assert [label.label_id for label in store.review_queue()] == [pseudo.label_id, synthetic.label_id]
    assert store.training_set_version() == after_correction  # pending labels do not train

    accepted = store.review(pseudo.label_id, True, "dr who", comment="fine")
    assert (accepted.review_status, accepted.reviews[-1].reviewer, accepted.reviews[-1].comment) == (
        "accepted",
        "dr who",
        "fine",
    )
    assert [(r.structure, r.label_version, r.kind) for r in store.training_view()] == [
        ("right lung", 3, "pseudo-label"),
    ]
    with_pseudo = store.training_set_version()
    assert with_pseudo != after_correction

    store.review(synthetic.label_id, False, "dr who")
    assert store.training_set_version() == with_pseudo  # rejected labels do not train
    assert [label.label_id for label in store.review_queue()] == []
    assert len(store.review_queue(include_reviewed=True)) == 2

    store.add_prediction(CASE, ctchest4_segmentation_path())  # a newer prediction displaces nothing
    assert store.training_set_version() == with_pseudo
    changed = store.review(pseudo.label_id, False, "dr no", comment="on second look")
    assert [review.decision for review in changed.reviews] == ["accepted", "rejected"]
    assert [r.label_version for r in store.training_view()] == [2]
    assert store.training_set_version() == after_correction

    with pytest.raises(InputError, match="is a correction, which is not reviewed"):
        store.review(lung.label_id, True, "dr who")
    with pytest.raises(InputError, match="No label with id 999"):
        store.review(999, True, "dr who")


def test_export_is_a_monai_datalist(store: FineTuningStore, reference: Segmentation, tmp_path: Path):
    store.submit_mask(CASE, "ribs", reference.get("ribs").mask, "alice", annotated_slices={"k": [4, 8]})
    store.submit_mask(CASE, "tissue", reference.get("tissue").mask, "alice")
    version, count = store.export(tmp_path / "datalist.json")
    written = json.loads((tmp_path / "datalist.json").read_text())
    assert (version, count) == (
        written["training_set_version"],
        2,
    ) and version == store.training_set_version()
    entries = {entry["structure"]: entry for entry in written["training"]}
    assert (
        entries["ribs"]["annotated_slices"] == {"k": [4, 8]} and entries["tissue"]["annotated_slices"] is None
    )
    assert entries["ribs"]["case_id"] == CASE and entries["ribs"]["label_version"] == 2
    loaded = load_decathlon_datalist(str(tmp_path / "datalist.json"), data_list_key="training")
    assert all(Path(entry["image"]).is_file() and Path(entry["label"]).is_file() for entry in loaded)
    assert Path(entries["ribs"]["image"]) == store.case(CASE).image


# --- verify ----------------------------------------------------------------------------------------


def test_verify_reports_damage_and_tolerates_leftovers(store: FineTuningStore, reference: Segmentation):
    label = store.submit_mask(CASE, "ribs", reference.get("ribs").mask, "alice")
    assert store.verify().ok and store.verify().checked_files == 9

    # Leftovers of a crash: a temporary file and a complete file whose row never committed.
    temporary = label.file.with_name(".ribs_v0003_0badc0de.tmp-12345678.nrrd")
    unrecorded = label.file.with_name("ribs_v0003_0badc0de.nrrd")
    temporary.write_bytes(b"partial")
    unrecorded.write_bytes(label.file.read_bytes())
    report = store.verify()
    assert report.ok and report.leftovers == sorted(
        str(p.relative_to(store.root)) for p in (temporary, unrecorded)
    )
    assert cli("verify", store.root) == 0
    repaired = store.verify(repair=True)
    assert repaired.removed == repaired.leftovers and not temporary.exists() and not unrecorded.exists()
    assert store.verify().leftovers == []

    original = label.file.read_bytes()
    label.file.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
    report = store.verify()
    assert not report.ok and "version 2: file" in report.problems[0] and "has changed" in report.problems[0]
    label.file.unlink()
    temporary.write_bytes(b"partial")
    report = store.verify(repair=True)  # no repair while the store has problems
    assert "is missing" in report.problems[0] and report.removed == [] and temporary.exists()
    assert cli("verify", store.root) == 1


# --- command line ----------------------------------------------------------------------------------


def test_command_line_round_trip(tmp_path: Path, reference: Segmentation, capsys: pytest.CaptureFixture):
    root = tmp_path / "store"
    assert cli("init", root) == 0
    assert cli("add-image", root, ctchest4_volume_path(), "--case-id", "chest", "--modality", "ct") == 0
    assert cli("add-image", root, ctchest4_volume_path()) == 0
    assert "already in the store as case 'chest'" in capsys.readouterr().out
    assert (
        cli(
            "add-prediction",
            root,
            "--case-id",
            "chest",
            ctchest4_segmentation_path(),
            "--checkpoint-sha256",
            "EF" * 32,
        )
        == 0
    )

    fixed = write_seg(
        tmp_path / "fix.seg.nrrd", reference.geometry, left_lung=corrected(reference, "left lung", 12)
    )
    capsys.readouterr()
    assert (
        cli("submit", root, "--case-id", "chest", fixed, "--annotator", "alice", "--slices", "k:12,13") == 0
    )
    out = capsys.readouterr().out
    assert "submitted case 'chest': 'left lung' version 2 (correction" in out and "slices k:12,13" in out
    mask_file = tmp_path / "tissue.nrrd"
    write_volume(
        mask_file, volume_from_array(reference.get("tissue").mask.astype(np.uint8), reference.geometry)
    )
    assert (
        cli(
            "submit",
            root,
            "--case-id",
            "chest",
            mask_file,
            "--annotator",
            "m",
            "--structure",
            "tissue",
            "--kind",
            "pseudo-label",
        )
        == 0
    )
    assert cli("submit", root, "--case-id", "chest", mask_file, "--annotator", "m") == 2
    assert "expected exactly one --structure" in capsys.readouterr().out

    assert cli("history", root, "--case-id", "chest", "--structure", "left lung", "--json") == 0
    history = json.loads(capsys.readouterr().out)
    assert [entry["version"] for entry in history] == [1, 2]
    assert history[0]["checkpoint_sha256"] == "ef" * 32
    for key in (
        "kind",
        "annotator",
        "time",
        "source",
        "review_status",
        "comment",
        "annotated_slices",
        "diff",
    ):
        assert key in history[1]
    assert history[1]["annotated_slices"] == {"k": [12, 13]} and history[1]["diff"]["voxels_added"] == 9
    assert cli("history", root, "--case-id", "chest") == 0
    assert capsys.readouterr().out.count("  prediction  ") == 7

    assert cli("review", root, "list", "--json") == 0
    [pending] = json.loads(capsys.readouterr().out)
    assert cli("review", root, "accept", pending["label_id"]) == 2
    assert "needs a label id and --reviewer" in capsys.readouterr().out
    assert cli("review", root, "accept", pending["label_id"], "--reviewer", "dr who", "--comment", "ok") == 0
    assert (
        cli(
            "revert",
            root,
            "--case-id",
            "chest",
            "--structure",
            "left lung",
            "--version",
            "1",
            "--annotator",
            "bob",
        )
        == 0
    )
    assert "version 3 (correction" in capsys.readouterr().out

    assert cli("export", root, "-o", tmp_path / "datalist.json") == 0
    datalist = json.loads((tmp_path / "datalist.json").read_text())
    assert sorted((e["structure"], e["label_version"]) for e in datalist["training"]) == [
        ("left lung", 3),
        ("tissue", 2),
    ]
    assert cli("verify", root) == 0
    assert "OK: 11 files checked, 0 leftovers" in capsys.readouterr().out

    assert cli("submit", root, "--case-id", "chest", fixed, "--annotator", "a", "--slices", "z:1") == 2
    assert "Unknown axis 'z'" in capsys.readouterr().out
    assert cli("history", tmp_path, "--case-id", "chest") == 2
    assert "is not a MedSegAdapt fine-tuning store" in capsys.readouterr().out
