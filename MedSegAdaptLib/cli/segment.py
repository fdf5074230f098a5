"""``medsegadapt segment IMAGE -o OUT.seg.nrrd``: structures of a 3D image from a box, points, a report
or no prompt, into one .seg.nrrd.

With a report and neither box nor points, the anatomical localiser finds the candidates the report
describes (``--list`` prints them, ``--pick N`` segments another than the first); a report naming several
structures (knowledge.report_parser.structures_named) gets one segment each. ``--structure`` and
``--box-ijk`` repeated, paired in order, segment several structures on one Segmenter, so the structures on
one intensity preset share its slice embeddings. ``--refine PREVIOUS.seg.nrrd`` edits one slice of a
previous segmentation with points or a box and re-propagates the change (Segmenter.refine).
"""
from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

from MedSegAdaptLib.cli.model_options import add_model_options, load_segmenter
from MedSegAdaptLib.cli.series import add_series_option, print_series_note
from MedSegAdaptLib.core.axes import AXIS_NAMES, axis_index, occupied_slices
from MedSegAdaptLib.core.errors import InputError

__all__ = ["add_segment_parser", "run_segment"]


def add_segment_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add the `segment` command to the main command's subparsers."""
    parser = subparsers.add_parser(
        "segment", help="segment structures of a 3D image from boxes, points, a report, or no prompt",
        description="Segment a structure slice by slice from a 3D box and/or points (Slicer IJK voxel "
                    "indices), propagating from the middle slice outwards, and write a .seg.nrrd. A report "
                    "or query (--report) names the structure and, with a checkpoint fine-tuned with MedSeg-R "
                    "priors, steers the model with its location, texture and shape. Without box and points, "
                    "the report alone is enough: the anatomical localiser finds the region it names and ranks "
                    "the candidates there (--list prints them, --pick N segments the N-th); a checkpoint "
                    "fine-tuned prompt-free on the structure segments every slice instead. A report naming "
                    "several structures gets one segment each, and --structure with --box-ijk repeated (paired "
                    "in order) segments several structures into one output. --refine PREVIOUS.seg.nrrd edits one "
                    "slice of a segmentation with points or a box and re-propagates the change.")
    parser.add_argument("image", type=Path, help="NRRD/NHDR, NIfTI, MHA/MHD file or a DICOM series folder")
    add_series_option(parser)
    parser.add_argument("-o", "--output", type=Path, help="output .seg.nrrd (required unless --list)")
    parser.add_argument("--structure", action="append",
                        help="segment name; also picks the CT intensity window (lung, bone, soft tissue, brain); "
                             "default: the structure(s) the report names; repeatable, one --box-ijk each, paired "
                             "in order, for several structures in one output")
    report = parser.add_mutually_exclusive_group()
    report.add_argument("--report", help="report text or query, e.g. 'Right upper lobe: 14 mm spiculated nodule'")
    report.add_argument("--report-file", type=Path, help="a text file holding the report")
    parser.add_argument("--box-ijk", action="append", default=[],
                        help="3D box i0,j0,k0,i1,j1,k1 (inclusive voxel indices); repeatable, one per --structure")
    parser.add_argument("--point-ijk", action="append", default=[],
                        help="point i,j,k[,label] with label 1 foreground (default) or 0 background; repeatable")
    parser.add_argument("--list", action="store_true",
                        help="with a report and no box or points: print the ranked candidates and segment none")
    parser.add_argument("--pick", type=int, default=1,
                        help="with a report and no box or points: segment the candidate of this rank (default: 1)")
    parser.add_argument("--method", default="auto", choices=("auto", "backbone", "localiser"),
                        help="with a report and no box or points: segment the candidate with the backbone from its "
                             "box, or keep the localiser's own mask; auto: the localiser's for whole structures "
                             "(lungs, spine), the backbone for lesions (default: %(default)s)")
    parser.add_argument("--json", action="store_true", help="print the result (and the candidates) as JSON")
    parser.add_argument("--anchors", type=Path,
                        help="a .seg.nrrd holding the structure's segment on the annotated slices (--anchor-slices): "
                             "those slices are kept as drawn and every other slice is re-propagated from them")
    parser.add_argument("--anchor-slices", help="the annotated slices of --anchors, AXIS:N,N,... e.g. k:13,20,26")
    parser.add_argument("--store", type=Path,
                        help="instead of --anchors: the fine-tuning store whose latest correction of --structure on "
                             "--case-id gives the annotated slices (a partial correction, along --axis)")
    parser.add_argument("--case-id", help="with --store: the case the image is")
    parser.add_argument("--repropagation", default="combined", choices=("combined", "anchored", "interpolation"),
                        help="with --anchors: chains from the anchors (anchored), shape-based interpolation between "
                             "them, or both united between the anchors (default: %(default)s)")
    parser.add_argument("--refine", type=Path, metavar="PREVIOUS.seg.nrrd",
                        help="edit one slice of this segmentation's --structure segment with --point-ijk and/or "
                             "--edit-box-ijk on that slice and re-propagate the change until it dies out (--box-ijk: "
                             "the 3D box bounding it); its other segments are copied unchanged into -o")
    parser.add_argument("--edit-box-ijk",
                        help="with --refine: the corrected box on the edited slice, i0,j0,k0,i1,j1,k1 one slice "
                             "thick along --axis (e.g. k0 = k1)")
    parser.add_argument("--only-this-slice", action="store_true",
                        help="with --refine: change the edited slice only, no re-propagation")
    parser.add_argument("--modality", default="auto", choices=("auto", "ct", "mr"),
                        help="auto decides from the Modality tag or the intensities and says so (default: %(default)s)")
    parser.add_argument("--axis", default="k", choices=AXIS_NAMES, help="slicing axis (default: %(default)s, axial)")
    components = parser.add_mutually_exclusive_group()
    components.add_argument("--largest-component", action="store_true",
                            help="keep only the largest 3D connected component (the default for lesions)")
    components.add_argument("--all-components", action="store_true",
                            help="keep every 3D connected component, also of a lesion")
    parser.add_argument("--no-intensity-cut", action="store_true",
                        help="keep voxels far outside the structure's expected CT intensity (by default they are cut, "
                             "except for bone)")
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="keep slice embeddings on disk here, so a later prompt on the same volume skips the encoder")
    parser.add_argument("--text-encoder", type=Path, default=None,
                        help="folder of the CLIP text encoder a checkpoint's MedSeg-R priors were trained with, when "
                             "it is no longer where the checkpoint recorded it (default: the recorded one)")
    add_model_options(parser)
    parser.set_defaults(func=run_segment)


def run_segment(args: argparse.Namespace) -> int:
    """Handler of `medsegadapt segment`."""
    from MedSegAdaptLib.core.progress import TerminalProgress
    from MedSegAdaptLib.inference import Box3D, Point3D
    from MedSegAdaptLib.io import read_volume

    if args.output is None and not args.list:
        raise InputError("give -o OUT.seg.nrrd (or --list to print a report's candidates)")
    if args.output is not None and not str(args.output).endswith(".seg.nrrd"):
        raise InputError(f"output {args.output} must end with .seg.nrrd")
    structures = args.structure or []
    boxes = [Box3D.parse(text) for text in args.box_ijk]
    points = [Point3D.parse(text) for text in args.point_ijk]
    report = _read_report(args)
    if not structures and report is None:
        raise InputError("give --structure NAME, or a --report / --report-file that names the structure")
    if args.pick < 1:
        raise InputError(f"--pick {args.pick}: ranks start at 1")
    axis = axis_index(args.axis)
    several = len(structures) > 1 or len(boxes) > 1
    if several:
        _check_several(args, structures, boxes, points, report)
    if args.refine is not None:
        edit_box, index = _check_refine(args, structures, boxes, points, report, axis)
    elif args.edit_box_ijk is not None or args.only_this_slice:
        raise InputError("--edit-box-ijk and --only-this-slice are for --refine PREVIOUS.seg.nrrd")
    args.structure = structures[0] if len(structures) == 1 else None
    box = boxes[0] if len(boxes) == 1 else None
    volume = read_volume(args.image, args.series, notify=print_series_note)
    if several:
        return _run_several(args, volume, structures, boxes, axis)
    if args.refine is not None:
        return _refine(args, volume, points, edit_box, index, box, axis)
    anchored = any(value is not None for value in (args.anchors, args.anchor_slices, args.store, args.case_id))
    report_only = report is not None and box is None and not points and not anchored
    # The packaged weights have no priors and no prompt-free structures: a report alone needs no model to
    # find its candidates, and a whole structure's own mask none to be segmented.
    segmenter = None
    if args.checkpoint is not None or not report_only:
        segmenter = load_segmenter(args, args.cache_dir, text_encoder=args.text_encoder)
    if report_only and (segmenter is None or not segmenter.backbone.prompt_free_structures):
        return _run_report(args, volume, report, axis, segmenter)
    if args.list or args.pick != 1 or args.method != "auto":
        raise InputError("--list, --pick and --method are for a report's candidates: give --report without a box or "
                         "points")
    options = _options(args, segmenter.options_for(args.structure or report))
    if anchored:
        return _repropagate(args, volume, segmenter, box, points, axis, options)
    progress = TerminalProgress()
    try:
        outcome = segmenter.segment(volume, args.structure, box, points, args.modality, progress, report,
                                    axis=axis, options=options, intensity_cut=not args.no_intensity_cut)
    finally:
        progress.close()
    name = args.structure or outcome.report.structure
    measurement = _write(args.output, volume, name, outcome.mask)
    slices = sorted(outcome.propagation.slice_iou)
    if args.json:
        print(json.dumps(_summary(args.output, name, outcome.mask, axis, outcome.seconds, measurement), indent=2))
        return 0
    print(f"modality: {outcome.modality} ({outcome.modality_reason}); intensity preset: {outcome.preset.key}")
    if outcome.report is not None:
        _print_report(outcome.report, segmenter.backbone.priors is not None)
    print(f"{name}: {int(outcome.mask.sum())} voxels on {len(occupied_slices(outcome.mask, axis))} "
          f"slices (decoded {slices[0]}..{slices[-1]}), {outcome.slices_encoded} slices encoded, {outcome.seconds:.1f} s")
    return _print_written(args.output, measurement)


def _check_several(args: argparse.Namespace, structures: list[str], boxes, points, report) -> None:
    """Several --structure / --box-ijk: one box per structure, and none of the one-structure options."""
    if len(structures) != len(boxes):
        raise InputError(f"{len(structures)} --structure and {len(boxes)} --box-ijk given: several structures need "
                         "one --box-ijk each, paired in order (or one --structure with one box and/or points)")
    if points:
        raise InputError("--point-ijk is for one structure: with several --structure give one --box-ijk each")
    if args.output is None:
        raise InputError("give -o OUT.seg.nrrd for the structures' segments")
    for option, given in (("--report/--report-file", report is not None), ("--refine", args.refine is not None),
                          ("--anchors/--anchor-slices/--store", args.anchors is not None or args.anchor_slices is not None
                           or args.store is not None),
                          ("--list", args.list), ("--pick", args.pick != 1), ("--method", args.method != "auto")):
        if given:
            raise InputError(f"{option} is for one structure; several --structure with --box-ijk take none")
    seen: dict[str, str] = {}
    for name in structures:
        if name.strip().casefold() in seen:
            raise InputError(f"--structure {name!r} is given twice (as {seen[name.strip().casefold()]!r}); each "
                             "structure becomes one segment of the output")
        seen[name.strip().casefold()] = name


def _run_several(args: argparse.Namespace, volume, structures: list[str], boxes, axis: int) -> int:
    """Several structures, one box each, on one Segmenter (shared embeddings per intensity preset), one output."""
    from MedSegAdaptLib.core.progress import TerminalProgress

    for name, box in zip(structures, boxes):
        box.validate(volume.array.shape)
    segmenter = load_segmenter(args, args.cache_dir, text_encoder=args.text_encoder)
    outcomes = []
    progress = TerminalProgress()
    try:
        for name, box in zip(structures, boxes):
            outcomes.append(segmenter.segment(volume, name, box, (), args.modality, progress, axis=axis,
                                              options=_options(args, segmenter.options_for(name)),
                                              intensity_cut=not args.no_intensity_cut))
    finally:
        progress.close()
    measurements = _write_segments(args.output, volume, [(name, o.mask) for name, o in zip(structures, outcomes)])
    summaries = [_summary(args.output, name, o.mask, axis, o.seconds, m)
                 | {"preset": o.preset.key, "slices_encoded": o.slices_encoded}
                 for name, o, m in zip(structures, outcomes, measurements)]
    if args.json:
        print(json.dumps(summaries, indent=2))
        return 0
    print(f"modality: {outcomes[0].modality} ({outcomes[0].modality_reason})")
    first_on: dict[str, str] = {}
    for summary, outcome in zip(summaries, outcomes):
        decoded = sorted(outcome.propagation.slice_iou)
        shared = first_on.setdefault(outcome.preset.key, summary["structure"])
        reuse = f", embeddings shared with {shared!r}" if shared != summary["structure"] else ""
        print(f"{summary['structure']}: {summary['voxels']} voxels on {summary['slices']} slices (decoded "
              f"{decoded[0]}..{decoded[-1]}), intensity preset {outcome.preset.key}, {outcome.slices_encoded} slices "
              f"encoded{reuse}, {outcome.seconds:.1f} s")
    return _print_written_several(args.output, structures, measurements)


def _print_written_several(output: Path, names: list[str], measurements) -> int:
    """Each lesion's line and the output path with its segment count; the command's exit status 0."""
    for name, measurement in zip(names, measurements):
        if measurement is not None:
            print(f"lesion {name}: {measurement}")
    print(f"wrote {output} ({len(names)} segments: {', '.join(names)})")
    return 0


def _check_refine(args: argparse.Namespace, structures: list[str], boxes, points, report, axis: int):
    """--refine's arguments, before the image is read: (the edit box or None, the edited slice index)."""
    from MedSegAdaptLib.inference import Box3D

    if len(structures) != 1:
        raise InputError("--refine needs one --structure NAME: the segment of the previous segmentation to refine")
    if args.output is None:
        raise InputError("--refine needs -o OUT.seg.nrrd")
    if not points and args.edit_box_ijk is None:
        raise InputError("--refine needs the edit: --point-ijk i,j,k[,label] ... and/or --edit-box-ijk on one slice")
    for option, given in (("--report/--report-file", report is not None),
                          ("--anchors/--anchor-slices/--store", args.anchors is not None or args.anchor_slices is not None
                           or args.store is not None),
                          ("--list", args.list), ("--pick", args.pick != 1), ("--method", args.method != "auto"),
                          ("a second --box-ijk", len(boxes) > 1)):
        if given:
            raise InputError(f"--refine takes no {option}")
    name = AXIS_NAMES[axis]
    edit_box = Box3D.parse(args.edit_box_ijk) if args.edit_box_ijk is not None else None
    on = {point.ijk[axis] for point in points}
    if edit_box is not None:
        if edit_box.lo[axis] != edit_box.hi[axis]:
            raise InputError(f"--edit-box-ijk {args.edit_box_ijk} must be one slice thick along --axis {name} "
                             f"({name}0 = {name}1), not {name} {edit_box.lo[axis]}..{edit_box.hi[axis]}")
        on.add(edit_box.lo[axis])
    if len(on) > 1:
        raise InputError(f"the --point-ijk points and --edit-box-ijk of one edit must lie on one slice along --axis "
                         f"{name}; they are on {name} = {', '.join(map(str, sorted(on)))}")
    return edit_box, on.pop()


def _refine(args: argparse.Namespace, volume, points, edit_box, index: int, box, axis: int) -> int:
    """`--refine PREVIOUS --structure NAME` with points and/or an edit box on one slice: that segment refined,
    the others copied unchanged, all written to -o."""
    from MedSegAdaptLib.core.progress import TerminalProgress
    from MedSegAdaptLib.io import read_segmentation

    shape = volume.array.shape
    for point in points:
        point.validate(shape)
    if edit_box is not None:
        edit_box.validate(shape)
    if box is not None:
        box.validate(shape)
        low, high = box.slice_range(axis)
        if not low <= index <= high:
            raise InputError(f"the edited slice {AXIS_NAMES[axis]} = {index} is outside --box-ijk's slices {low}..{high}")
    previous = read_segmentation(args.refine)
    if not previous.geometry.matches(volume.geometry):
        raise InputError(f"{args.refine} does not lie on the image's voxel grid: "
                         f"{previous.geometry.describe_mismatch(volume.geometry)}")
    segment = previous.get(args.structure)
    segmenter = load_segmenter(args, args.cache_dir, text_encoder=args.text_encoder)
    progress = TerminalProgress()
    try:
        result = segmenter.refine(volume, segment.name, segment.mask, index, points,
                                  edit_box.rect(axis) if edit_box is not None else None, box, args.modality, progress,
                                  axis=axis, options=_options(args, segmenter.options_for(segment.name)),
                                  propagate=not args.only_this_slice, intensity_cut=not args.no_intensity_cut)
    finally:
        progress.close()
    measurement = _write_refined(args.output, volume, previous, segment, result.mask)
    kept = [other.name for other in previous.segments if other is not segment]
    summary = _summary(args.output, segment.name, result.mask, axis, result.seconds, measurement) | {
        "refined": str(args.refine), "axis": AXIS_NAMES[axis], "edited_slice": result.index,
        "changed_slices": result.changed, "decoded_slices": result.decoded,
        "stopped_because": result.stopped_because, "kept_unchanged": kept}
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    name = AXIS_NAMES[axis]
    print(f"{segment.name}: edited slice {name} = {result.index} of {args.refine}; changed slices "
          f"{_ranges(result.changed) or 'none'}; decoded {len(result.decoded)} slices; "
          f"{summary['voxels']} voxels on {summary['slices']} slices, {result.seconds:.1f} s")
    for way, reason in result.stopped_because.items():
        print(f"  {way}: {reason}")
    if kept:
        print(f"kept unchanged: {', '.join(kept)}")
    return _print_written(args.output, measurement)


def _ranges(indices: list[int]) -> str:
    """Ascending slice indices as runs: [3, 4, 5, 9] -> '3..5, 9'."""
    runs: list[list[int]] = []
    for index in indices:
        if runs and index == runs[-1][1] + 1:
            runs[-1][1] = index
        else:
            runs.append([index, index])
    return ", ".join(f"{low}..{high}" if high > low else str(low) for low, high in runs)


def _repropagate(args: argparse.Namespace, volume, segmenter, box, points, axis: int, options) -> int:
    """`--anchors FILE --anchor-slices AXIS:N,...` or `--store STORE --case-id ID`: the annotated slices kept,
    the others re-propagated."""
    from MedSegAdaptLib.core.axes import take_slices
    from MedSegAdaptLib.core.progress import TerminalProgress

    if args.structure is None or points or args.output is None:
        raise InputError("re-propagation needs --structure NAME and -o OUT.seg.nrrd, and takes no --point-ijk")
    if args.store is not None:
        mask, indices, source = _anchors_from_store(args, volume, axis)
    else:
        mask, indices, source = _anchors_from_file(args, volume, axis)
    anchors = dict(zip(indices, take_slices(mask, axis, indices)))
    progress = TerminalProgress()
    try:
        outcome = segmenter.repropagate(volume, args.structure, anchors, box, args.modality, progress, axis=axis,
                                        options=options, mode=args.repropagation)
    finally:
        progress.close()
    measurement = _write(args.output, volume, args.structure, outcome.mask)
    summary = _summary(args.output, args.structure, outcome.mask, axis, outcome.seconds, measurement)
    if args.json:
        print(json.dumps(summary | {"anchor_slices": indices, "anchors_from": source, "mode": args.repropagation},
                         indent=2))
        return 0
    print(f"{args.structure}: {summary['voxels']} voxels on {summary['slices']} slices, re-propagated ({args.repropagation}) "
          f"from the annotated slices {', '.join(map(str, indices))} of {source} (kept as drawn), {outcome.seconds:.1f} s")
    print(f"wrote {args.output}")
    return 0


def _anchors_from_file(args: argparse.Namespace, volume, axis: int):
    """(I, J, K) mask, annotated slice indices and a description, from --anchors FILE --anchor-slices AXIS:N,..."""
    from MedSegAdaptLib.io import read_segmentation
    from MedSegAdaptLib.store.slices import check_slices, parse_slices

    if args.anchors is None or args.anchor_slices is None or args.case_id is not None:
        raise InputError("re-propagation needs --anchors FILE.seg.nrrd with --anchor-slices AXIS:N,..., or --store "
                         "STORE with --case-id ID")
    slices = check_slices(parse_slices([args.anchor_slices]), volume.array.shape)
    if list(slices) != [AXIS_NAMES[axis]]:
        raise InputError(f"--anchor-slices {args.anchor_slices!r} must be along the slicing axis --axis {AXIS_NAMES[axis]}")
    drawn = read_segmentation(args.anchors)
    if not drawn.geometry.matches(volume.geometry):
        raise InputError(f"{args.anchors} does not lie on the image's voxel grid: "
                         f"{drawn.geometry.describe_mismatch(volume.geometry)}")
    return drawn.get(args.structure).mask, slices[AXIS_NAMES[axis]], str(args.anchors)


def _anchors_from_store(args: argparse.Namespace, volume, axis: int):
    """(I, J, K) mask, annotated slice indices and a description, from the latest correction of --structure on
    --case-id in --store (a partial correction along --axis; the image must be that case's)."""
    from MedSegAdaptLib.io import read_volume
    from MedSegAdaptLib.store import FineTuningStore

    if args.anchors is not None or args.anchor_slices is not None or args.case_id is None:
        raise InputError("--store takes --case-id ID (the image's case), and no --anchors / --anchor-slices")
    with FineTuningStore(args.store) as store:
        case = store.case(args.case_id)
        corrections = [label for label in store.history(case.case_id, args.structure) if label.kind == "correction"]
        if not corrections:
            raise InputError(f"case {case.case_id!r} in {args.store} has no correction of {args.structure!r} yet: "
                             "submit one (medsegadapt store submit) or give --anchors")
        latest = corrections[-1]
        if not case.geometry.matches(volume.geometry):
            raise InputError(f"{args.image} is not case {case.case_id!r} of {args.store}: "
                             f"{case.geometry.describe_mismatch(volume.geometry)}")
        slices = (latest.annotated_slices or {}).get(AXIS_NAMES[axis])
        if not slices:
            raise InputError(f"the latest correction of {args.structure!r} on {case.case_id!r} (version {latest.version}) "
                             + ("covers the whole volume: there is nothing to re-propagate" if latest.annotated_slices
                                is None else f"has no annotated slices along --axis {AXIS_NAMES[axis]}"))
        mask = read_volume(latest.file).array != 0
    return mask, sorted(slices), f"correction version {latest.version} of {case.case_id!r} in {args.store}"


def _print_written(output: Path, measurement) -> int:
    """The lesion line (when there is a measurement) and the output path; the command's exit status 0."""
    if measurement is not None:
        print(f"lesion: {measurement}")
    print(f"wrote {output}")
    return 0


def _write(output: Path, volume, name: str, mask):
    """Write one segment (with its lesion measurement as tags) to `output`; the measurement or None."""
    return _write_segments(output, volume, [(name, mask)])[0]


def _measured(volume, name: str, mask):
    """(a Segment of `mask` with its lesion measurement as tags, the measurement or None)."""
    from MedSegAdaptLib.evaluation.lesion_measures import measure_if_lesion
    from MedSegAdaptLib.io import Segment

    measurement = measure_if_lesion(name, mask, volume.geometry)
    return Segment(name, mask, tags=measurement.as_tags() if measurement is not None else {}), measurement


def _write_segments(output: Path, volume, named: list) -> list:
    """Write one segment per (name, mask), each lesion with its measurement as tags, to `output`; the
    measurements (None for the structures that are not lesions)."""
    from MedSegAdaptLib.io import Segmentation, write_segmentation

    measured = [_measured(volume, name, mask) for name, mask in named]
    write_segmentation(output, Segmentation(volume.geometry, [segment for segment, _ in measured]))
    return [measurement for _, measurement in measured]


def _write_refined(output: Path, volume, previous, segment, mask):
    """`previous` with `segment`'s mask replaced (its colour, terminology and tags kept, a lesion's
    measurement tags updated) and every other segment as it was, written to `output`; the measurement."""
    from MedSegAdaptLib.io import Segmentation, write_segmentation

    measured, measurement = _measured(volume, segment.name, mask)
    refined = replace(segment, mask=mask, tags=segment.tags | measured.tags)
    write_segmentation(output, Segmentation(volume.geometry, [refined if other is segment else other
                                                               for other in previous.segments]))
    return measurement


def _summary(output: Path, name: str, mask, axis: int, seconds: float, measurement) -> dict:
    return {"structure": name, "output": str(output), "voxels": int(mask.sum()),
            "slices": len(occupied_slices(mask, axis)), "seconds": round(seconds, 2),
            "lesion": measurement.as_tags() if measurement is not None else None}


def _write_report_result(args: argparse.Namespace, volume, found, axis: int) -> int:
    """Write and report the segmentation of a report's picked candidate."""
    name = args.structure or found.report.structure
    measurement = _write(args.output, volume, name, found.mask)
    if args.json:
        print(json.dumps(found.to_dict() | _summary(args.output, name, found.mask, axis, found.seconds, measurement),
                         indent=2))
        return 0
    print(_candidate_line(name, found, axis))
    return _print_written(args.output, measurement)


def _candidate_line(name: str, found, axis: int) -> str:
    """'NAME: N voxels on M slices (how), seconds' of a segmented candidate."""
    how = (f"backbone from the box, decoder steered by {found.steered_by}" if found.method == "backbone"
           else "the localiser's own mask")
    return (f"{name}: {int(found.mask.sum())} voxels on {len(occupied_slices(found.mask, axis))} slices ({how}), "
            f"{found.seconds:.1f} s")


def _options(args: argparse.Namespace, options):
    """The structure's propagation preset with --largest-component / --all-components applied."""
    if args.largest_component or args.all_components:
        return replace(options, largest_component=args.largest_component)
    return options


def _run_report(args: argparse.Namespace, volume, report: str, axis: int, segmenter) -> int:
    """A report and no box or points: find the candidates, print them, segment the --pick'ed one (the model
    is loaded only when the backbone runs); --list stops after the candidates."""
    import time

    from MedSegAdaptLib.core.progress import TerminalProgress
    from MedSegAdaptLib.inference.report_guidance import PriorGuidance
    from MedSegAdaptLib.inference.report_segmentation import (
        find_candidates,
        segment_candidate,
    )
    from MedSegAdaptLib.inference.segmenter import Segmenter
    from MedSegAdaptLib.knowledge.report_parser import structures_named

    started = time.perf_counter()
    guidance = segmenter.guidance if segmenter is not None else PriorGuidance()
    has_priors = segmenter is not None and segmenter.backbone.priors is not None
    if args.structure is None:
        named = structures_named(report, guidance.knowledge_base)
        if len(named) > 1:
            return _run_report_several(args, volume, named, axis, segmenter, guidance, has_priors)
    found = find_candidates(guidance, volume, report, args.structure, args.modality, has_priors)
    if not args.list:
        options = _options(args, Segmenter.options_for(found.report.structure))
        progress = TerminalProgress()
        try:
            found = segment_candidate(
                found, args.pick - 1, volume, report,
                lambda: segmenter or load_segmenter(args, args.cache_dir, text_encoder=args.text_encoder),
                progress, args.method, axis=axis, options=options, intensity_cut=not args.no_intensity_cut)
        finally:
            progress.close()
        found.seconds = time.perf_counter() - started
    if not args.json:
        _print_candidates(found)
    if not args.list:
        return _write_report_result(args, volume, found, axis)
    if args.json:
        print(json.dumps(found.to_dict(), indent=2))
    return 0


def _run_report_several(args: argparse.Namespace, volume, named, axis: int, segmenter, guidance, has_priors) -> int:
    """A report naming several structures and no box or points: each one's first candidate (from its own
    sentences) segmented into one output, one segment each; a structure the localiser cannot find is
    reported and skipped (an error only when none can be found)."""
    from MedSegAdaptLib.core.progress import TerminalProgress
    from MedSegAdaptLib.inference.report_segmentation import (
        find_candidates,
        segment_candidate,
    )
    from MedSegAdaptLib.inference.segmenter import Segmenter

    if args.pick != 1:
        raise InputError(f"--pick is for a report naming one structure; this one names {len(named)}: "
                         f"{', '.join(item.structure for item in named)}")
    located, missed = [], []
    for item in named:
        try:
            located.append((item, find_candidates(guidance, volume, item.text, item.structure, args.modality,
                                                  has_priors)))
        except InputError as error:
            missed.append((item, str(error)))
    if not located:
        raise InputError("none of the structures the report names could be found: "
                         + "; ".join(f"{item.structure}: {reason}" for item, reason in missed))
    loaded = [segmenter]

    def shared_segmenter():
        if loaded[0] is None:
            loaded[0] = load_segmenter(args, args.cache_dir, text_encoder=args.text_encoder)
        return loaded[0]

    results = []
    if not args.list:
        progress = TerminalProgress()
        try:
            for item, found in located:
                options = _options(args, Segmenter.options_for(item.structure))
                results.append(segment_candidate(found, 0, volume, item.text, shared_segmenter, progress, args.method,
                                                 axis=axis, options=options, intensity_cut=not args.no_intensity_cut))
        finally:
            progress.close()
    else:
        results = [found for _, found in located]
    names = [found.report.structure for found in results]
    measurements = (_write_segments(args.output, volume, [(n, found.mask) for n, found in zip(names, results)])
                    if not args.list else [None] * len(results))
    if args.json:
        entries = [{"report_text": item.text} | found.to_dict()
                   | (_summary(args.output, name, found.mask, axis, found.seconds, measurement) if not args.list else {})
                   for (item, _), found, name, measurement in zip(located, results, names, measurements)]
        entries += [{"report_text": item.text, "structure": item.structure, "not_found": reason}
                    for item, reason in missed]
        print(json.dumps(entries, indent=2))
        return 0
    print(f"the report names {len(named)} structures: {', '.join(item.structure for item in named)}")
    for (item, _), found, measurement in zip(located, results, measurements):
        print(f"{found.report.structure} (from {item.text!r}):")
        _print_candidates(found)
        if not args.list:
            print(_candidate_line(found.report.structure, found, axis))
    for item, reason in missed:
        print(f"{item.structure} (from {item.text!r}): not segmented: {reason}")
    if args.list:
        return 0
    return _print_written_several(args.output, names, measurements)


def _print_candidates(found) -> None:
    """The ranked candidates, one line each, the segmented one marked."""
    print(f"candidates for {found.report.structure!r} (ranked by {found.to_dict()['ranked_by']}):")
    for entry in found.finding.to_dict():
        mark = "*" if found.picked is not None and entry["rank"] == found.picked + 1 else " "
        print(f" {mark}{entry['rank']:>2}. score {entry['score']:.3f}  {entry['reason']}  (centre IJK "
              f"{','.join(map(str, entry['centre_ijk']))})")
    if found.box is not None:
        print(f"segmented candidate {found.picked + 1} (box IJK {','.join(map(str, (*found.box.lo, *found.box.hi)))})")


def _read_report(args: argparse.Namespace) -> str | None:
    if args.report_file is None:
        return args.report
    try:
        return args.report_file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise InputError(f"report file {args.report_file} could not be read as UTF-8 text ({error})") from error


def _print_report(report, steers: bool) -> None:
    """What the report was understood to say, where each part came from, and whether it is used."""
    print(f"report: structure {report.structure!r} (knowledge base {report.knowledge_base_version})")
    for attribute in ("location", "texture", "shape"):
        print(f"  {attribute} [{report.sources[attribute]}]: {getattr(report, attribute)}")
    if not steers:
        print("  (this checkpoint has no trained MedSeg-R priors: the report only names the structure; "
              "fine-tune with `medsegadapt finetune --priors all` for priors that steer the model)")
