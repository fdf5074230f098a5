"""``medsegadapt suggest IMAGE_OR_STORE --structure NAME --budget K [--volumes]``: which slices (or, with
``--volumes``, which of a store's cases) to annotate next.

As elsewhere in the command line, the library is imported when the command runs, so that
``medsegadapt --help`` stays fast; bad input raises InputError (``error: ...``, exit status 2).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

from MedSegAdaptLib.cli.model_options import add_model_options, pretrained_and_adapted
from MedSegAdaptLib.cli.series import add_series_option, print_series_note
from MedSegAdaptLib.core.axes import AXIS_NAMES, axis_index
from MedSegAdaptLib.core.errors import InputError
from MedSegAdaptLib.suggestions.options import RANKING_PURPOSES

__all__ = ["add_suggest_parser", "run_suggest"]


def add_suggest_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the `suggest` command to the main command's subparsers."""
    parser = subparsers.add_parser(
        "suggest", help="rank the slices an annotator should correct next, and say why",
        description="Segment the structure, score each candidate slice by how hard its boundary is for the model "
                    "(ASD: uncertainty over the foreground and its boundary band, and disagreement under jittered "
                    "boxes) and how far it is from what the model knows (DKD: distance of its embedding from the "
                    "labeled slices and, with a fine-tuned --checkpoint, divergence from the pretrained model), "
                    "then spread the picks evenly over the structure's slices, the scores breaking ties "
                    "(ranking for correction: the best scores, kept apart). Our adaptation of ASSFT's active "
                    "learning (the paper gives no formulas). Slices already annotated are never suggested. With "
                    "--volumes, rank the cases of a store instead: whole volumes to annotate next, the one whose "
                    "boundary the model is least sure of first (mean ASD over its predicted slices; the DKD of "
                    "its mean embedding from the volumes annotated in full, which are never suggested, is "
                    "reported beside it).")
    parser.add_argument("target", type=Path, metavar="IMAGE_OR_STORE",
                        help="an image file or DICOM folder, or a fine-tuning store folder (its annotated slices "
                             "are skipped; without --box-ijk its latest prediction or correction gives the box)")
    add_series_option(parser, "IMAGE_OR_STORE")
    parser.add_argument("--structure", required=True, help="structure name (also picks the CT window)")
    parser.add_argument("--budget", type=int, required=True,
                        help="number of slices (volumes with --volumes) to suggest (1 or more)")
    parser.add_argument("--volumes", action="store_true",
                        help="rank the store's cases as whole volumes to annotate, each prompted by its latest "
                             "prediction or correction of the structure")
    parser.add_argument("--case-id", help="case of the store (default: its only case); with an image, a label for it")
    parser.add_argument("--box-ijk", help="3D box i0,j0,k0,i1,j1,k1 (inclusive voxel indices)")
    parser.add_argument("--point-ijk", action="append", default=[],
                        help="point i,j,k[,label] with label 1 foreground (default) or 0 background; repeatable")
    parser.add_argument("--annotated", action="append", default=[], metavar="AXIS:N,N,...",
                        help="slices already annotated, e.g. k:12,30 (added to a store's); repeatable")
    parser.add_argument("--axis", default="k", choices=AXIS_NAMES, help="slicing axis (default: %(default)s, axial)")
    parser.add_argument("--all-slices", action="store_true",
                        help="score every slice, not just the predicted extent +- 2 slices")
    parser.add_argument("--rank-for", default="training", choices=list(RANKING_PURPOSES),
                        help="training: slices whose labels teach fine-tuning most, spread over the structure; "
                             "correction: the slices the model gets most wrong, wherever they are, ends included "
                             "(default: %(default)s)")
    parser.add_argument("--coverage-window", type=float, metavar="SHARE",
                        help="how far a pick may move from its evenly spaced target to a better-scoring slice, as a "
                             "share of the targets' spacing, 0 to 0.5 (default: 0, the target or the better of the "
                             "two slices around it)")
    parser.add_argument("--edge-band", type=float, metavar="SHARE",
                        help="share of the predicted extent at each end over which scores rise from low to full, "
                             "slices beyond it scoring 0: labels there are small or empty and teach fine-tuning "
                             "little (default: 0.2; 0 ranks them like any other slice, to find every slice the model "
                             "gets wrong; default with --rank-for correction: 0)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the box jitter (default: %(default)s)")
    parser.add_argument("--cache-dir", type=Path, default=None, help="keep slice embeddings on disk here")
    parser.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    add_model_options(parser)
    parser.set_defaults(func=run_suggest)
    return parser




def run_suggest(args: argparse.Namespace) -> int:
    """Handler of `medsegadapt suggest`."""
    from MedSegAdaptLib.core.progress import TerminalProgress
    from MedSegAdaptLib.evaluation import format_table
    from MedSegAdaptLib.inference import Box3D, Point3D
    from MedSegAdaptLib.io import read_volume
    from MedSegAdaptLib.store import FineTuningStore, parse_slices
    from MedSegAdaptLib.store.layout import MANIFEST_NAME
    from MedSegAdaptLib.suggestions.slices import (
        check_budget,
        suggest_from_store,
        suggest_slices,
    )

    axis = axis_index(args.axis)
    if args.volumes:
        return _run_volumes(args, axis)
    budget = check_budget(args.budget)
    box = Box3D.parse(args.box_ijk) if args.box_ijk else None
    points = [Point3D.parse(text) for text in args.point_ijk]
    annotated = set(parse_slices(args.annotated).get(args.axis, [])) if args.annotated else set()
    options = replace(RANKING_PURPOSES[args.rank_for], all_slices=args.all_slices)
    if args.edge_band is not None:
        options = replace(options, edge_band=args.edge_band)
    if args.coverage_window is not None:
        options = replace(options, coverage_window=args.coverage_window)
    started = time.perf_counter()
    progress = TerminalProgress()
    try:
        if (args.target / MANIFEST_NAME).is_file():
            if args.series is not None:
                raise InputError(f"--series picks a series of a DICOM folder; {args.target} is a fine-tuning store")
            with FineTuningStore(args.target) as store:
                case_id = args.case_id or _only_case(store)
                store.case(case_id)
                segmenter, adapted = pretrained_and_adapted(args, args.cache_dir)
                suggestions = suggest_from_store(store, case_id, args.structure, budget, segmenter, box, points,
                                                 annotated, adapted, axis, args.seed, options, progress)
        else:
            volume = read_volume(args.target, args.series, notify=print_series_note)
            segmenter, adapted = pretrained_and_adapted(args, args.cache_dir)
            suggestions = suggest_slices(segmenter, volume, args.structure, budget, box, points, annotated, adapted,
                                         axis, args.seed, options=options, case_id=args.case_id, progress=progress)
    finally:
        progress.close()
    if args.json:
        print(json.dumps([suggestion.to_dict() for suggestion in suggestions], indent=2))
        return 0
    if not suggestions:
        print(f"no slices left to suggest for {args.structure!r}: every candidate slice along {args.axis} is annotated")
        return 0
    print(format_table([{"rank": rank, "slice": f"{s.axis}:{s.index}", "score": s.score, "DKD": s.dkd, "ASD": s.asd,
                         "reason": s.reason} for rank, s in enumerate(suggestions, 1)]))
    model = "fine-tuned vs pretrained model" if adapted is not None else "one model, no divergence term"
    print(f"{len(suggestions)} of {budget} slices suggested for {args.structure!r} in "
          f"{time.perf_counter() - started:.1f} s ({model})")
    return 0


def _run_volumes(args: argparse.Namespace, axis: int) -> int:
    """`medsegadapt suggest STORE --volumes`: rank the store's cases as whole volumes to annotate."""
    from MedSegAdaptLib.core.progress import TerminalProgress
    from MedSegAdaptLib.evaluation import format_table
    from MedSegAdaptLib.store import FineTuningStore
    from MedSegAdaptLib.store.layout import MANIFEST_NAME
    from MedSegAdaptLib.suggestions.slices import check_budget
    from MedSegAdaptLib.suggestions.volumes import suggest_volumes_from_store

    budget = check_budget(args.budget, "volumes")
    given = [flag for flag, value in (("--case-id", args.case_id), ("--box-ijk", args.box_ijk),
                                      ("--point-ijk", args.point_ijk), ("--annotated", args.annotated),
                                      ("--series", args.series),
                                      ("--all-slices", args.all_slices),
                                      ("--edge-band", args.edge_band is not None),
                                      ("--coverage-window", args.coverage_window is not None),
                                      ("--rank-for correction", args.rank_for != "training")) if value]
    if given:
        raise InputError(f"{', '.join(given)} cannot go with --volumes, which ranks every case of the store, each "
                         "prompted by its own labels; expected no per-case options")
    if not (args.target / MANIFEST_NAME).is_file():
        raise InputError(f"{args.target} is not a fine-tuning store (no {MANIFEST_NAME}); --volumes ranks the cases "
                         "of a store made by `medsegadapt store init`")
    started = time.perf_counter()
    progress = TerminalProgress()
    try:
        with FineTuningStore(args.target) as store:
            segmenter, adapted = pretrained_and_adapted(args, args.cache_dir)
            ranking = suggest_volumes_from_store(store, args.structure, budget, segmenter, adapted, axis, args.seed,
                                                 progress=progress)
    finally:
        progress.close()
    for note in ranking.skipped:
        print(f"skipped {note}", file=sys.stderr)
    suggestions = ranking.suggestions
    if args.json:
        print(json.dumps([suggestion.to_dict() for suggestion in suggestions], indent=2))
        return 0
    if not suggestions:
        print(f"no volume to suggest for {args.structure!r}: the model predicts it in none of the candidate cases")
        return 0
    print(format_table([{"rank": rank, "case": s.case_id, "score": s.score, "DKD": s.dkd, "ASD": s.asd,
                         "reason": s.reason} for rank, s in enumerate(suggestions, 1)]))
    model = "fine-tuned vs pretrained model" if adapted is not None else "one model, no divergence term"
    print(f"{len(suggestions)} of {budget} volumes suggested for {args.structure!r} in "
          f"{time.perf_counter() - started:.1f} s ({model})")
    return 0


def _only_case(store) -> str:
    """The store's only case id; InputError when it has none or several."""
    cases = [case.case_id for case in store.cases()]
    if len(cases) != 1:
        raise InputError(f"{store.root} holds {len(cases)} cases ({', '.join(cases) or 'none'}); "
                         "expected --case-id naming one")
    return cases[0]
