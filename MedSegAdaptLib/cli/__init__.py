"""The `medsegadapt` command line: one module per command over the shared model options.

Parsers build without importing torch (`medsegadapt --help` stays fast); each command imports the
library when it runs. Bad input raises InputError: the message is printed as ``error: ...`` and the
command exits with status 2.
"""
from __future__ import annotations

import argparse
import sys

from MedSegAdaptLib.cli.adapt import add_adapt_parsers
from MedSegAdaptLib.cli.cases import add_cases_parser
from MedSegAdaptLib.cli.demo import add_demo_parser
from MedSegAdaptLib.cli.evaluate import add_evaluate_parser
from MedSegAdaptLib.cli.finetune import add_finetune_parser
from MedSegAdaptLib.cli.segment import add_segment_parser
from MedSegAdaptLib.cli.series import add_series_parser
from MedSegAdaptLib.cli.store import add_store_parser
from MedSegAdaptLib.cli.suggest import add_suggest_parser
from MedSegAdaptLib.core.errors import InputError

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The `medsegadapt` parser with every command."""
    parser = argparse.ArgumentParser(prog="medsegadapt", description="MedSegAdapt: report-guided volumetric "
                                     "segmentation that adapts to the local scanner.")
    subparsers = parser.add_subparsers(dest="command", required=True)
    add_segment_parser(subparsers)
    add_series_parser(subparsers)
    add_evaluate_parser(subparsers)
    add_demo_parser(subparsers)
    add_store_parser(subparsers)
    add_finetune_parser(subparsers)
    add_suggest_parser(subparsers)
    add_adapt_parsers(subparsers)
    add_cases_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns its exit status (2 for bad input)."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
