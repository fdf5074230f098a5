"""``medsegadapt cases [--fetch]``: the real clinical cases used by the evaluation harness and slow tests."""
from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["add_cases_parser", "run_cases"]


def add_cases_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add the `cases` command to the main command's subparsers."""
    parser = subparsers.add_parser(
        "cases", help="list (and fetch) the real clinical cases: CT lung tumours, MR brain tumours, an MR breast lesion",
        description="The five clinical cases shipped in pyradiomics 3.1.0's source archive, fetched once from the "
                    "configured package index (SHA-256 checked) into a cache folder outside the checkout.")
    parser.add_argument("--fetch", action="store_true", help="download and extract the cases when they are missing")
    parser.add_argument("--dir", type=Path, default=None,
                        help="cache folder (default: $MEDSEGADAPT_CASES_DIR or ~/.cache/medsegadapt/clinical_cases)")
    parser.add_argument("--archive", type=Path, default=None,
                        help="a local copy of pyradiomics-3.1.0.tar.gz to extract from instead of downloading")
    parser.set_defaults(func=run_cases)


def run_cases(args: argparse.Namespace) -> int:
    """Handler of `medsegadapt cases`."""
    from MedSegAdaptLib.core.progress import TerminalProgress
    from MedSegAdaptLib.io.clinical_cases import clinical_cases, fetch_clinical_cases

    if args.fetch or args.archive is not None:
        progress = TerminalProgress()
        try:
            fetch_clinical_cases(args.dir, args.archive, progress)
        finally:
            progress.close()
    for case in clinical_cases(args.dir):
        print(f"{case.name}\t{case.modality}\t{case.structure}\t{case.finding}\t{case.image_path}")
    return 0
