"""Edits on one slice that re-propagate, on every real target (docs/segmentation.md "Refining with clicks").

    python benchmarks/evaluate_refinement.py [--targets NAME ...] [--clicks 3]

Each target is first segmented from its reference box (as benchmarks/evaluate_real_cases.py does), which
then bounds every edit's prompts and slices (as the ROI does in Slicer). A
simulated annotator (harness.simulated_edits) then clicks, one click a round, at the centre of the largest
wrong region of the slice with most wrong voxels; separately, it redraws the reference's box on the worst
slice holding the structure. Each edit is applied twice: to the edited slice only, and re-propagated
until the change dies out (inference.refinement). Dice is over the whole volume; decoded: slices the
decoder ran on for the edit (mean over the clicks); seconds: mean per re-propagated edit.
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from MedSegAdaptLib.core.axes import DEFAULT_AXIS
from MedSegAdaptLib.core.constants import REFERENCE_BOX_MARGIN
from MedSegAdaptLib.evaluation.metrics import dice
from MedSegAdaptLib.harness.real_cases import real_targets, reference_prompt
from MedSegAdaptLib.harness.simulated_edits import corrected_box, corrective_click
from MedSegAdaptLib.inference.segmenter import Segmenter
from MedSegAdaptLib.models.loading import load_backbone


def clicks(segmenter: Segmenter, target, start: np.ndarray, box, count: int, propagate: bool) -> tuple[list[float], list]:
    """Dice after each of `count` simulated clicks (within the 3D `box`), and the refinement results."""
    mask, scores, results = start, [], []
    for _ in range(count):
        if np.array_equal(mask, target.reference):
            break
        point = corrective_click(mask, target.reference, DEFAULT_AXIS)
        result = segmenter.refine(target.volume, target.structure, mask, point.ijk[DEFAULT_AXIS], [point], box=box,
                                  modality=target.modality, propagate=propagate)
        mask = result.mask
        scores.append(dice(mask, target.reference))
        results.append(result)
    return scores, results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", nargs="*", help="target names (default: all)")
    parser.add_argument("--clicks", type=int, default=3, help="simulated clicks per target (default: %(default)s)")
    args = parser.parse_args()
    segmenter = Segmenter(load_backbone(for_inference=True))
    header = ["target", "box prompt"] + [f"click {n} slice / re-propagated" for n in range(1, args.clicks + 1)]
    header += ["box redrawn slice / re-propagated", "decoded per click", "s per edit"]
    print("| " + " | ".join(header) + " |")
    print("|---" * len(header) + "|")
    for target in real_targets():
        if args.targets and target.name not in args.targets:
            continue
        box, _ = reference_prompt(target.reference, "box")
        start = segmenter.segment(target.volume, target.structure, box, modality=target.modality).mask
        alone, _ = clicks(segmenter, target, start, box, args.clicks, propagate=False)
        started = time.perf_counter()
        spread, results = clicks(segmenter, target, start, box, args.clicks, propagate=True)
        index, rect = corrected_box(start, target.reference, DEFAULT_AXIS, REFERENCE_BOX_MARGIN)
        boxed = [dice(segmenter.refine(target.volume, target.structure, start, index, rect=rect, box=box,
                                       modality=target.modality, propagate=propagate).mask, target.reference)
                 for propagate in (False, True)]
        seconds = (time.perf_counter() - started) / (len(results) + 1)
        cells = [target.name, f"{dice(start, target.reference):.3f}"]
        cells += [f"{a:.3f} / {b:.3f}" for a, b in zip(alone, spread)] + ["-"] * (args.clicks - len(spread))
        cells += [f"{boxed[0]:.3f} / {boxed[1]:.3f}",
                  f"{np.mean([len(r.decoded) for r in results]):.1f}" if results else "-", f"{seconds:.1f}"]
        print("| " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
