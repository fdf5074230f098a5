"""``medsegadapt evaluate PREDICTION REFERENCE``: Dice and HD95 per segment."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from MedSegAdaptLib.core.errors import InputError

__all__ = ["add_evaluate_parser", "run_evaluate"]


def add_evaluate_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add the `evaluate` command to the main command's subparsers."""
    parser = subparsers.add_parser(
        "evaluate", help="Dice and HD95 (mm) per segment against a reference",
        description="Compare two .seg.nrrd files segment by segment (matched by name, case-insensitive).")
    parser.add_argument("prediction", type=Path)
    parser.add_argument("reference", type=Path)
    parser.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    parser.set_defaults(func=run_evaluate)


def run_evaluate(args: argparse.Namespace) -> int:
    """Handler of `medsegadapt evaluate`."""
    from MedSegAdaptLib.evaluation import compare_segmentations, format_table
    from MedSegAdaptLib.io import read_segmentation

    rows = compare_segmentations(read_segmentation(args.prediction), read_segmentation(args.reference))
    if not rows:
        raise InputError(f"no segment of {args.prediction} has a namesake in {args.reference}")
    print(json.dumps(rows, indent=2) if args.json else format_table(rows))
    return 0
