"""``medsegadapt store ...``: the fine-tuning store on the command line.

Handlers take the parsed arguments and return the exit status; bad input raises InputError, which
the main command prints as ``error: <message>`` with exit status 2. As in ``MedSegAdaptLib.cli``,
the library is imported when a command runs, not when the parser is built, so that
``medsegadapt --help`` stays fast.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

from MedSegAdaptLib.cli.series import add_series_option, print_series_note
from MedSegAdaptLib.core.errors import InputError

if TYPE_CHECKING:
    from MedSegAdaptLib.store.records import LabelVersion
    from MedSegAdaptLib.store.store import FineTuningStore

__all__ = ["add_store_parser"]

_SUBMIT_KINDS = ("correction", "pseudo-label", "synthetic")


def _open(root: Path) -> FineTuningStore:
    from MedSegAdaptLib.store.store import FineTuningStore

    return FineTuningStore(root)


def _diff_text(diff: dict | None) -> str:
    if diff is None:
        return "-"
    return (
        f"+{diff['voxels_added']} -{diff['voxels_removed']} "
        f"Dice {diff['dice']:.3f} vs v{diff['against_version']}"
    )


def _label_line(label: LabelVersion) -> str:
    from MedSegAdaptLib.store.slices import format_slices

    details = [label.kind, f"label id {label.label_id}"]
    if label.review_status:
        details.insert(1, label.review_status)
    if label.kind != "prediction":
        details += [
            f"slices {format_slices(label.annotated_slices)}",
            f"diff to prediction {_diff_text(label.diff)}",
        ]
    return f"case {label.case_id!r}: {label.structure!r} version {label.version} ({', '.join(details)})"


def _table(labels: list[LabelVersion]) -> str:
    from MedSegAdaptLib.evaluation.metrics import format_table
    from MedSegAdaptLib.store.slices import format_slices

    return format_table(
        [
            {
                "id": label.label_id,
                "case": label.case_id,
                "structure": label.structure,
                "version": label.version,
                "kind": label.kind,
                "annotator": label.annotator or "-",
                "time": label.time,
                "review": label.review_status or "-",
                "slices": format_slices(label.annotated_slices),
                "diff to prediction": _diff_text(label.diff),
                "source": label.source,
                "comment": label.comment or "",
            }
            for label in labels
        ]
    )


def _init(args: argparse.Namespace) -> int:
    from MedSegAdaptLib.store.store import FineTuningStore

    with FineTuningStore.init(args.store) as store:
        print(f"fine-tuning store ready at {store.root}")
    return 0


def _add_image(args: argparse.Namespace) -> int:
    from MedSegAdaptLib.io import read_volume

    with _open(args.store) as store:
        image = read_volume(args.image, args.series, notify=print_series_note)
        case, created = store.add_image(image, case_id=args.case_id, modality=args.modality)
    if created:
        shape = "x".join(map(str, case.geometry.shape))
        print(
            f"added case {case.case_id!r} ({case.modality or 'modality unknown'}, {shape}) from {args.image}"
        )
    else:
        print(f"{args.image} is already in the store as case {case.case_id!r}; nothing added")
    return 0


def _add_prediction(args: argparse.Namespace) -> int:
    with _open(args.store) as store:
        labels = store.add_prediction(
            args.case_id, args.prediction, checkpoint_sha256=args.checkpoint_sha256, structures=args.structure
        )
    for label in labels:
        print(f"stored {_label_line(label)}")
    return 0


def _submit(args: argparse.Namespace) -> int:
    from MedSegAdaptLib.io import read_volume
    from MedSegAdaptLib.io.segmentation import SEGMENTATION_SUFFIX
    from MedSegAdaptLib.store.slices import parse_slices

    slices = parse_slices(args.slices) if args.slices else None
    options = {
        "annotated_slices": slices,
        "kind": args.kind,
        "comment": args.comment,
        "checkpoint_sha256": args.checkpoint_sha256,
    }
    with _open(args.store) as store:
        if args.label.name.lower().endswith(SEGMENTATION_SUFFIX):
            labels = store.submit_segmentation(
                args.case_id, args.label, args.annotator, structures=args.structure, **options
            )
        else:
            if not args.structure or len(args.structure) != 1:
                raise InputError(
                    f"{args.label} is a label volume, not a {SEGMENTATION_SUFFIX}; expected exactly one "
                    "--structure naming what its 0/1 mask shows"
                )
            labels = [
                store.submit_mask(
                    args.case_id, args.structure[0], read_volume(args.label), args.annotator, **options
                )
            ]
    for label in labels:
        print(f"submitted {_label_line(label)}")
    return 0


def _history(args: argparse.Namespace) -> int:
    with _open(args.store) as store:
        labels = store.history(args.case_id, args.structure)
    if args.json:
        print(json.dumps([label.to_dict() for label in labels], indent=2))
    else:
        print(_table(labels))
    return 0


def _revert(args: argparse.Namespace) -> int:
    with _open(args.store) as store:
        label = store.revert(args.case_id, args.structure, args.version, args.annotator, comment=args.comment)
    print(f"reverted: {_label_line(label)}")
    return 0


def _review(args: argparse.Namespace) -> int:
    with _open(args.store) as store:
        if args.action == "list":
            labels = store.review_queue(include_reviewed=args.all)
            if args.json:
                print(json.dumps([label.to_dict() for label in labels], indent=2))
            else:
                print(_table(labels) if labels else "nothing to review")
            return 0
        if args.id is None or args.reviewer is None:
            raise InputError(
                f"`store review {args.action}` needs a label id and --reviewer NAME; "
                "expected e.g. `store review STORE accept 12 --reviewer NAME`"
            )
        label = store.review(args.id, args.action == "accept", args.reviewer, comment=args.comment)
    print(f"{label.review_status} by {args.reviewer}: {_label_line(label)}")
    return 0


def _verify(args: argparse.Namespace) -> int:
    from MedSegAdaptLib.store.layout import is_temporary

    with _open(args.store) as store:
        report = store.verify(repair=args.repair)
    for problem in report.problems:
        print(f"PROBLEM: {problem}")
    removed = set(report.removed)
    for relative in report.leftovers:
        what = "temporary file of an interrupted write" if is_temporary(relative) else "file never recorded"
        action = "removed" if relative in removed else "harmless; removed by `store verify --repair`"
        print(f"leftover ({what}, {action}): {relative}")
    verdict = (
        "OK" if report.ok else f"FAILED ({len(report.problems)} problems; --repair removes nothing then)"
    )
    print(f"{verdict}: {report.checked_files} files checked, {len(report.leftovers)} leftovers")
    return 0 if report.ok else 1


def _export(args: argparse.Namespace) -> int:
    with _open(args.store) as store:
        version, count = store.export(args.output)
    print(f"wrote {count} training entries to {args.output} (training set version {version})")
    return 0


def add_store_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``store`` and its sub-commands; each sets ``func`` to its handler."""
    store = subparsers.add_parser(
        "store",
        help="fine-tuning set: versioned labels with provenance, review, verify, export",
        description="Fine-tuning set in a folder: every label a version with provenance, never overwritten.",
    )
    commands = store.add_subparsers(dest="store_command", required=True, metavar="COMMAND")

    def command(name: str, handler, help_text: str) -> argparse.ArgumentParser:
        parser = commands.add_parser(name, help=help_text, description=help_text)
        parser.add_argument("store", type=Path, help="store folder")
        parser.set_defaults(func=handler)
        return parser

    command("init", _init, "create a store in a new or empty folder")

    parser = command(
        "add-image", _add_image, "copy an image in as a case (the same image twice is recognised)"
    )
    parser.add_argument("image", type=Path, help="NRRD, NIfTI, MHA/MHD file or DICOM folder")
    add_series_option(parser)
    parser.add_argument("--case-id", help="case id (A-Z a-z 0-9 . _ -); default: the file name")
    parser.add_argument("--modality", choices=("ct", "mr"), help="default: the file's DICOM modality, if any")

    parser = command("add-prediction", _add_prediction, "store a model's segmentation as prediction versions")
    parser.add_argument("--case-id", required=True)
    parser.add_argument("prediction", type=Path, help="prediction .seg.nrrd")
    parser.add_argument(
        "--checkpoint-sha256", metavar="HEX", help="SHA-256 of the checkpoint that predicted it"
    )
    parser.add_argument("--structure", action="append", help="segment to store (repeatable); default: all")

    parser = command("submit", _submit, "submit an expert correction (or a pseudo-label / synthetic label)")
    parser.add_argument("--case-id", required=True)
    parser.add_argument(
        "label",
        type=Path,
        help=".seg.nrrd (segments by name) or a 0/1 label volume with --structure",
    )
    parser.add_argument("--annotator", required=True)
    parser.add_argument("--structure", action="append", help="segment to submit (repeatable); default: all")
    parser.add_argument(
        "--slices",
        action="append",
        metavar="AXIS:N,N,...",
        help="annotated slices along axis i, j or k, e.g. k:12,30,47 (repeatable); default: the whole volume",
    )
    parser.add_argument("--kind", choices=_SUBMIT_KINDS, default="correction", help="default: correction")
    parser.add_argument("--comment")
    parser.add_argument(
        "--checkpoint-sha256", metavar="HEX", help="for pseudo-labels: the model's checkpoint"
    )

    parser = command("history", _history, "list every version of a case's labels")
    parser.add_argument("--case-id", required=True)
    parser.add_argument("--structure")
    parser.add_argument("--json", action="store_true", help="print a JSON list")

    parser = command("revert", _revert, "make an old version the latest again (as a new version)")
    parser.add_argument("--case-id", required=True)
    parser.add_argument("--structure", required=True)
    parser.add_argument("--version", type=int, required=True)
    parser.add_argument("--annotator", required=True)
    parser.add_argument("--comment")

    parser = command("review", _review, "list, accept or reject pseudo-labels and synthetic labels")
    parser.add_argument("action", choices=("list", "accept", "reject"))
    parser.add_argument("id", type=int, nargs="?", help="label id (from `list`) for accept / reject")
    parser.add_argument("--reviewer", help="required for accept / reject")
    parser.add_argument("--comment")
    parser.add_argument("--all", action="store_true", help="list: include reviewed labels")
    parser.add_argument("--json", action="store_true", help="list: print a JSON list")

    parser = command("verify", _verify, "check every file and the manifest; exit 1 on any inconsistency")
    parser.add_argument("--repair", action="store_true", help="remove leftovers of interrupted writes")

    parser = command("export", _export, "write the training view as a MONAI-style datalist JSON")
    parser.add_argument("-o", "--output", type=Path, required=True, metavar="DATALIST.json")
