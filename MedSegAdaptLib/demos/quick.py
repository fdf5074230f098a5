"""The quick demo: segment the real CTChest4 volume from reference boxes and score the result."""
from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

from MedSegAdaptLib.core.constants import REFERENCE_BOX_MARGIN
from MedSegAdaptLib.core.progress import TerminalProgress
from MedSegAdaptLib.evaluation import compare_segmentations, format_table
from MedSegAdaptLib.evaluation.overlay import render_slices
from MedSegAdaptLib.inference import Box3D, Segmenter
from MedSegAdaptLib.io import (
    Segment,
    Segmentation,
    read_segmentation,
    read_volume,
    write_segmentation,
)
from MedSegAdaptLib.io.sample_data import (
    ctchest4_segmentation_path,
    ctchest4_volume_path,
)

__all__ = ["DEMO_STRUCTURES", "PICTURE_SLICES", "run_demo", "run_demo_feedback_loop"]

DEMO_STRUCTURES = ("right lung", "left lung", "thoracic vertebral column")
PICTURE_SLICES = (12, 20, 28)  # axial slices shown in the demo's picture


def run_demo(args: argparse.Namespace, segmenter: Segmenter) -> list[dict]:
    """Segment DEMO_STRUCTURES with boxes from the reference (+2 voxels), write, score and print."""
    volume = read_volume(ctchest4_volume_path())
    reference = read_segmentation(ctchest4_segmentation_path())
    args.output_dir.mkdir(parents=True, exist_ok=True)
    print(f"CTChest4 {volume.array.shape} voxels, spacing {tuple(round(s, 2) for s in volume.geometry.spacing)} mm; "
          f"backbone {segmenter.backbone.spec.name} on {segmenter.backbone.device}")
    prediction = Segmentation(volume.geometry, [])
    started = time.perf_counter()
    progress = TerminalProgress()
    for name in DEMO_STRUCTURES:
        box = Box3D.around(reference.get(name).mask, REFERENCE_BOX_MARGIN)
        outcome = segmenter.segment(volume, name, box=box, progress=progress)
        progress.close()
        prediction.add(Segment(name, outcome.mask))
        print(f"  {name:28s} box {box}  {outcome.seconds:5.1f} s  ({outcome.slices_encoded} slices encoded)")
    total = time.perf_counter() - started
    output = args.output_dir / "ctchest4_prediction.seg.nrrd"
    write_segmentation(output, prediction)
    rows = compare_segmentations(prediction, reference, names=list(DEMO_STRUCTURES))
    print(format_table(rows))
    picture = args.output_dir / "ctchest4_slices.png"
    render_slices(volume, prediction, list(PICTURE_SLICES), reference=reference).save(picture)
    print(f"total {total:.1f} s for {len(DEMO_STRUCTURES)} structures; wrote {output} and {picture} "
          "(filled: prediction, white outline: reference)")
    return rows


def run_demo_feedback_loop(args: argparse.Namespace, segmenter: Segmenter,
                           load_finetuned: Callable[[Path], Segmenter]) -> list[dict]:
    """The expert feedback loop (demos.feedback_loop) in a fresh folder under args.output_dir: `segmenter`
    segments before, load_finetuned(checkpoint) after; both share the segmenter's embedding cache."""
    from MedSegAdaptLib.demos.feedback_loop import LOOP_STRUCTURES, run_feedback_loop

    folder = args.output_dir / "feedback_loop" / time.strftime("run-%Y%m%d-%H%M%S")
    print(f"\nexpert feedback loop on {', '.join(LOOP_STRUCTURES)} in {folder}")
    progress = TerminalProgress()

    def log(text: str) -> None:
        progress.close()
        print(text, flush=True)

    try:
        return run_feedback_loop(folder, lambda checkpoint: segmenter if checkpoint is None else load_finetuned(checkpoint),
                                 device=str(segmenter.backbone.device), checkpoint=args.checkpoint,
                                 cache=segmenter.cache, progress=progress, log=log)
    finally:
        progress.close()
