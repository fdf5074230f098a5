"""``medsegadapt demo``: segment the bundled CTChest4, score it, then run the expert feedback loop."""
from __future__ import annotations

import argparse
from pathlib import Path

from MedSegAdaptLib.cli.model_options import add_model_options, load_segmenter

__all__ = ["add_demo_parser", "run_demo"]


def add_demo_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add the `demo` command to the main command's subparsers."""
    parser = subparsers.add_parser(
        "demo", help="segment the bundled CTChest4, score it, then run the expert feedback loop",
        description="Segment right lung, left lung and thoracic vertebral column of the real CTChest4 volume "
                    "shipped in slicerio, with 3D boxes from its reference segmentation, and score the result. "
                    "Then the feedback loop: submit corrections of a few axial slices (taken from the reference, "
                    "standing in for an expert) to a fresh fine-tuning store, fine-tune, segment again and "
                    "print Dice before and after.")
    parser.add_argument("--output-dir", type=Path, default=Path("out/demo"), help="where results go (default: %(default)s)")
    parser.add_argument("--no-feedback-loop", action="store_true", help="only segment and score (about a minute less)")
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="keep slice embeddings on disk here, so a second demo skips the encoder")
    add_model_options(parser)
    parser.set_defaults(func=run_demo)


def run_demo(args: argparse.Namespace) -> int:
    """Handler of `medsegadapt demo`."""
    from MedSegAdaptLib.demos import quick

    segmenter = load_segmenter(args, args.cache_dir)
    quick.run_demo(args, segmenter)
    if not args.no_feedback_loop:
        quick.run_demo_feedback_loop(args, segmenter, lambda checkpoint: load_segmenter(
            argparse.Namespace(**{**vars(args), "checkpoint": checkpoint, "backbone": "auto"}), cache=segmenter.cache))
    return 0
