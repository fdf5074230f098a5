"""``medsegadapt series FOLDER``: the DICOM series a folder holds, and the ``--series UID`` option with
which the commands that read an image pick one of them.

As elsewhere in the command line, the library is imported when the command runs.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

__all__ = ["add_series_option", "add_series_parser", "print_series_note", "run_series"]


def add_series_option(parser: argparse.ArgumentParser, image: str = "IMAGE") -> None:
    """--series UID, for a command whose ``image`` argument may be a DICOM folder."""
    parser.add_argument("--series", metavar="UID", default=None,
                        help=f"Series Instance UID of the DICOM series to read when {image} is a folder holding "
                             "several (default: the largest; `medsegadapt series FOLDER` lists them)")


def print_series_note(line: str) -> None:
    """Say which DICOM series was read (on stderr, so that --json output stays clean)."""
    print(line, file=sys.stderr)


def add_series_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add the `series` command to the main command's subparsers."""
    parser = subparsers.add_parser(
        "series", help="list the DICOM series of a folder, to pick one with --series UID",
        description="List the DICOM series in a folder (not its subfolders), from the files' headers: Series "
                    "Instance UID, series number, modality, description, number of files, size and spacing, "
                    "and why a series cannot be segmented (colour, a single 2D slice). The series marked * is "
                    "the one read when no --series is given: the largest that is a greyscale 3D volume.")
    parser.add_argument("folder", type=Path, help="a folder of DICOM files")
    parser.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    parser.set_defaults(func=run_series)


def run_series(args: argparse.Namespace) -> int:
    """Handler of `medsegadapt series`."""
    from MedSegAdaptLib.io.dicom import default_dicom_series, list_dicom_series

    series = list_dicom_series(args.folder)
    default = default_dicom_series(series)
    if args.json:
        print(json.dumps([{
            "uid": one.uid, "number": one.number, "modality": one.modality, "description": one.description,
            "files": len(one.files), "first_file": one.files[0], "size": list(one.size),
            "spacing": list(one.spacing) if one.spacing else None, "samples_per_pixel": one.samples_per_pixel,
            "problem": one.problem, "default": one is default,
        } for one in series], indent=2))
        return 0
    header = ["", "series UID", "number", "modality", "description", "files", "size", "spacing (mm)",
              "cannot be segmented"]
    rows = [["*" if one is default else "", one.uid, "-" if one.number is None else str(one.number),
             one.modality or "-", one.description or "-", str(len(one.files)), "x".join(map(str, one.size)),
             "x".join(f"{value:.3g}" for value in one.spacing) if one.spacing else "-", one.problem or ""]
            for one in series]
    print(_columns([header, *rows]))
    print(f"{len(series)} series in {args.folder}; * is read by default, `--series UID` reads another")
    return 0


def _columns(lines: list[list[str]]) -> str:
    """Text cells in aligned columns, a rule under the first line. (evaluation.format_table would import
    torch, seconds for a listing.)"""
    widths = [max(len(line[column]) for line in lines) for column in range(len(lines[0]))]
    text = ["  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip() for line in lines]
    return "\n".join([text[0], "  ".join("-" * width for width in widths), *text[1:]])
