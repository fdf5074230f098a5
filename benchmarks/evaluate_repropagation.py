"""Re-propagation from 3 annotated slices on every real target with enough slices (docs/segmentation.md).

    python benchmarks/evaluate_repropagation.py [--targets NAME ...] [--fine-tuned]

Anchors are the reference's masks on 3 slices: CTChest4's thoracic column 15, 19, 23 and left lung
13, 20, 26 (the issue's), otherwise 3 slices evenly spaced inside the reference's extent (its
first and last slice left out). Dice is on every slice that is not an anchor; seconds per mode (the
first mode, combined, also encodes the slices; the others reuse the embeddings).
Targets with fewer than 5 reference slices are skipped (no slice would be left to score).
--fine-tuned adds the training alternative: the decoder fine-tuned on the same 3 anchor slices (a store
with the anchors as the annotated slices, FINE_TUNE_EPOCHS epochs, the training seconds in brackets),
segmenting from the reference box, and that fine-tuned model then re-propagating from the anchors
(combined).
--box gives every re-propagation the reference's 3D box (its extent + REFERENCE_BOX_MARGIN voxels), as a
user who drew one would: it bounds the prompts and the slices, and under the lesion preset its rectangle is
a second prompt on every slice (PropagationOptions.box_rect).
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from MedSegAdaptLib.core.axes import (
    AXIS_NAMES,
    DEFAULT_AXIS,
    occupied_slices,
    take_slices,
)
from MedSegAdaptLib.evaluation.metrics import dice
from MedSegAdaptLib.harness.real_cases import real_targets, reference_prompt
from MedSegAdaptLib.inference.anchored import REPROPAGATION_MODES
from MedSegAdaptLib.inference.segmenter import Segmenter
from MedSegAdaptLib.models.loading import load_backbone
from MedSegAdaptLib.store import FineTuningStore
from MedSegAdaptLib.training import FineTuneOptions, fine_tune

FINE_TUNE_EPOCHS = 4
ISSUE_ANCHORS = {"CTChest4 thoracic vertebral column": (15, 19, 23), "CTChest4 left lung": (13, 20, 26)}


def anchor_slices(name: str, reference: np.ndarray) -> tuple[int, ...] | None:
    """The issue's anchors, else 3 evenly spaced inside the reference's slices; None for fewer than 5 slices."""
    if name in ISSUE_ANCHORS:
        return ISSUE_ANCHORS[name]
    slices = occupied_slices(reference, DEFAULT_AXIS)
    if len(slices) < 5:
        return None
    return tuple(int(slices[i]) for i in np.linspace(1, len(slices) - 2, 3).round().astype(int))


def fine_tuned_segmenter(segmenter: Segmenter, target, slices: tuple[int, ...], folder: Path) -> tuple[Segmenter, float]:
    """A Segmenter whose decoder was fine-tuned on the reference's `slices` only, and the training seconds."""
    started = time.perf_counter()
    with FineTuningStore.init(folder / "store") as store:
        case, _ = store.add_image(target.volume, "case", modality=target.modality)
        store.submit_mask(case.case_id, target.structure, target.reference, "benchmark",
                          annotated_slices={AXIS_NAMES[DEFAULT_AXIS]: list(slices)})
        fine_tune(store, folder / "tuned.pt", options=FineTuneOptions(epochs=FINE_TUNE_EPOCHS, min_slices_for_validation=1000),
                  cache=segmenter.cache)
    tuned = Segmenter(load_backbone(checkpoint=folder / "tuned.pt", for_inference=True), segmenter.cache)
    return tuned, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", nargs="*", help="target names (default: all)")
    parser.add_argument("--fine-tuned", action="store_true", help="add the decoder fine-tuned on the anchors")
    parser.add_argument("--box", action="store_true", help="re-propagate inside the reference's 3D box")
    args = parser.parse_args()
    segmenter = Segmenter(load_backbone(for_inference=True))
    columns = [f"{m} Dice (s)" for m in REPROPAGATION_MODES]
    if args.fine_tuned:
        columns += ["fine-tuned decoder Dice (training s)", "fine-tuned then combined Dice (s)"]
    print("| target | anchors | " + " | ".join(columns) + " |")
    print("|---|---|" + "---|" * len(columns))
    for target in real_targets():
        if args.targets and target.name not in args.targets:
            continue
        slices = anchor_slices(target.name, target.reference)
        if slices is None:
            continue
        anchors = dict(zip(slices, take_slices(target.reference, DEFAULT_AXIS, list(slices))))
        keep = np.setdiff1d(np.arange(target.reference.shape[DEFAULT_AXIS]), slices)
        box, _ = reference_prompt(target.reference, "box")
        bounds = box if args.box else None
        scores, seconds = [], []
        for mode in REPROPAGATION_MODES:
            started = time.perf_counter()
            outcome = segmenter.repropagate(target.volume, target.structure, anchors, bounds, modality=target.modality,
                                           mode=mode)
            seconds.append(time.perf_counter() - started)
            scores.append(dice(outcome.mask[:, :, keep], target.reference[:, :, keep]))
        if args.fine_tuned:
            with tempfile.TemporaryDirectory() as folder:
                tuned, training = fine_tuned_segmenter(segmenter, target, slices, Path(folder))
                mask = tuned.segment(target.volume, target.structure, box, modality=target.modality).mask
                scores.append(dice(mask[:, :, keep], target.reference[:, :, keep]))
                seconds.append(training)
                started = time.perf_counter()
                mask = tuned.repropagate(target.volume, target.structure, anchors, bounds, modality=target.modality).mask
                seconds.append(time.perf_counter() - started)
                scores.append(dice(mask[:, :, keep], target.reference[:, :, keep]))
        print(f"| {target.name} | {', '.join(map(str, slices))} | "
              + " | ".join(f"{d:.3f} ({s:.1f})" for d, s in zip(scores, seconds)) + " |", flush=True)


if __name__ == "__main__":
    main()
