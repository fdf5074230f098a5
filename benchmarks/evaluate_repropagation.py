"""Re-propagation from 3 annotated slices on every real target with enough slices (docs/segmentation.md).

    python benchmarks/evaluate_repropagation.py [--targets NAME ...]

Anchors are the reference's masks on 3 slices: CTChest4's thoracic column 15, 19, 23 and left lung
13, 20, 26 (the issue's), otherwise 3 slices evenly spaced inside the reference's extent (its
first and last slice left out). Dice is on every slice that is not an anchor; seconds per mode (the
first mode, combined, also encodes the slices; the others reuse the embeddings).
Targets with fewer than 5 reference slices are skipped (no slice would be left to score).
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from MedSegAdaptLib.core.axes import DEFAULT_AXIS, occupied_slices, take_slices
from MedSegAdaptLib.evaluation.metrics import dice
from MedSegAdaptLib.harness.real_cases import real_targets
from MedSegAdaptLib.inference.anchored import REPROPAGATION_MODES
from MedSegAdaptLib.inference.segmenter import Segmenter
from MedSegAdaptLib.models.loading import load_backbone

ISSUE_ANCHORS = {"CTChest4 thoracic vertebral column": (15, 19, 23), "CTChest4 left lung": (13, 20, 26)}


def anchor_slices(name: str, reference: np.ndarray) -> tuple[int, ...] | None:
    """The issue's anchors, else 3 evenly spaced inside the reference's slices; None for fewer than 5 slices."""
    if name in ISSUE_ANCHORS:
        return ISSUE_ANCHORS[name]
    slices = occupied_slices(reference, DEFAULT_AXIS)
    if len(slices) < 5:
        return None
    return tuple(int(slices[i]) for i in np.linspace(1, len(slices) - 2, 3).round().astype(int))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", nargs="*", help="target names (default: all)")
    args = parser.parse_args()
    segmenter = Segmenter(load_backbone(for_inference=True))
    print("| target | anchors | " + " | ".join(f"{m} Dice (s)" for m in REPROPAGATION_MODES) + " |")
    print("|---|---|" + "---|" * len(REPROPAGATION_MODES))
    for target in real_targets():
        if args.targets and target.name not in args.targets:
            continue
        slices = anchor_slices(target.name, target.reference)
        if slices is None:
            continue
        anchors = dict(zip(slices, take_slices(target.reference, DEFAULT_AXIS, list(slices))))
        keep = np.setdiff1d(np.arange(target.reference.shape[DEFAULT_AXIS]), slices)
        scores, seconds = [], []
        for mode in REPROPAGATION_MODES:
            started = time.perf_counter()
            outcome = segmenter.repropagate(target.volume, target.structure, anchors, modality=target.modality, mode=mode)
            seconds.append(time.perf_counter() - started)
            scores.append(dice(outcome.mask[:, :, keep], target.reference[:, :, keep]))
        print(f"| {target.name} | {', '.join(map(str, slices))} | "
              + " | ".join(f"{d:.3f} ({s:.1f})" for d, s in zip(scores, seconds)) + " |", flush=True)


if __name__ == "__main__":
    main()
