"""``medsegadapt segment IMAGE -o OUT.seg.nrrd``: one structure of a 3D image from a box, points, a report
or no prompt."""
from __future__ import annotations

import argparse
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
        "segment", help="segment one structure of a 3D image from a box, points, a report, or no prompt",
        description="Segment a structure slice by slice from a 3D box and/or points (Slicer IJK voxel "
                    "indices), propagating from the middle slice outwards, and write a .seg.nrrd. A report "
                    "or query (--report) names the structure and, with a checkpoint fine-tuned with MedSeg-R "
                    "priors, steers the model with its location, texture and shape. Without box and points, "
                    "a checkpoint fine-tuned prompt-free on the structure segments every slice.")
    parser.add_argument("image", type=Path, help="NRRD/NHDR, NIfTI, MHA/MHD file or a DICOM series folder")
    add_series_option(parser)
    parser.add_argument("-o", "--output", type=Path, required=True, help="output .seg.nrrd")
    parser.add_argument("--structure",
                        help="segment name; also picks the CT intensity window (lung, bone, soft tissue, brain); "
                             "default: the structure the report names")
    report = parser.add_mutually_exclusive_group()
    report.add_argument("--report", help="report text or query, e.g. 'Right upper lobe: 14 mm spiculated nodule'")
    report.add_argument("--report-file", type=Path, help="a text file holding the report")
    parser.add_argument("--box-ijk", help="3D box i0,j0,k0,i1,j1,k1 (inclusive voxel indices)")
    parser.add_argument("--point-ijk", action="append", default=[],
                        help="point i,j,k[,label] with label 1 foreground (default) or 0 background; repeatable")
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
    from MedSegAdaptLib.evaluation.lesion_measures import measure_if_lesion
    from MedSegAdaptLib.inference import Box3D, Point3D
    from MedSegAdaptLib.io import Segment, Segmentation, read_volume, write_segmentation

    if not str(args.output).endswith(".seg.nrrd"):
        raise InputError(f"output {args.output} must end with .seg.nrrd")
    box = Box3D.parse(args.box_ijk) if args.box_ijk else None
    points = [Point3D.parse(text) for text in args.point_ijk]
    report = _read_report(args)
    if args.structure is None and report is None:
        raise InputError("give --structure NAME, or a --report / --report-file that names the structure")
    volume = read_volume(args.image, args.series, notify=print_series_note)
    axis = axis_index(args.axis)
    segmenter = load_segmenter(args, args.cache_dir, text_encoder=args.text_encoder)
    options = segmenter.options_for(args.structure or report)
    if args.largest_component or args.all_components:
        options = replace(options, largest_component=args.largest_component)
    progress = TerminalProgress()
    try:
        outcome = segmenter.segment(volume, args.structure, box, points, args.modality, progress, report,
                                    axis=axis, options=options, intensity_cut=not args.no_intensity_cut)
    finally:
        progress.close()
    print(f"modality: {outcome.modality} ({outcome.modality_reason}); intensity preset: {outcome.preset.key}")
    name = args.structure or outcome.report.structure
    if outcome.report is not None:
        _print_report(outcome.report, segmenter.backbone.priors is not None)
    measurement = measure_if_lesion(name, outcome.mask, volume.geometry)
    tags = measurement.as_tags() if measurement is not None else {}
    write_segmentation(args.output, Segmentation(volume.geometry, [Segment(name, outcome.mask, tags=tags)]))
    slices = sorted(outcome.propagation.slice_iou)
    print(f"{name}: {int(outcome.mask.sum())} voxels on {len(occupied_slices(outcome.mask, axis))} "
          f"slices (decoded {slices[0]}..{slices[-1]}), {outcome.slices_encoded} slices encoded, {outcome.seconds:.1f} s")
    if measurement is not None:
        print(f"lesion: {measurement}")
    print(f"wrote {args.output}")
    return 0


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
