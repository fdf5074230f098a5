"""The evaluation harness over every real target: CTChest4's seven structures and the five clinical lesions.

Each target is segmented zero-shot from prompts made from its reference, one prompt kind at a time:

- ``box``: one 3D box, the reference's extent plus REFERENCE_BOX_MARGIN voxels;
- ``slice boxes``: every reference slice decoded alone with its own 2D reference box plus the margin
  (no propagation: the upper bound of box prompting);
- ``point``: one foreground point, the reference pixel deepest inside the structure on its middle slice;
- ``2d box``: one click-and-drag box on the middle slice only (its reference rectangle plus the margin),
  propagated through the volume.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from MedSegAdaptLib.core.axes import (
    DEFAULT_AXIS,
    in_plane_axes,
    nearest_slice,
    occupied_slices,
    put_slice,
    take_slices,
)
from MedSegAdaptLib.core.constants import REFERENCE_BOX_MARGIN
from MedSegAdaptLib.core.errors import InputError
from MedSegAdaptLib.demos.feedback_loop import held_out_dice, uniform_slices
from MedSegAdaptLib.evaluation.metrics import dice, hd95_mm
from MedSegAdaptLib.inference.preprocess import preset_for
from MedSegAdaptLib.inference.prompts import Box3D, Point3D, mask_rect
from MedSegAdaptLib.inference.propagation import (
    PropagationOptions,
    VolumePropagator,
    prompt_rect,
)
from MedSegAdaptLib.inference.segmenter import Segmenter
from MedSegAdaptLib.io.volume import Volume
from MedSegAdaptLib.knowledge.knowledge_base import KnowledgeBase
from MedSegAdaptLib.store.store import FineTuningStore

__all__ = ["CTCHEST4_STRUCTURES", "PROMPT_KINDS", "RealTarget", "corrected_slices", "corrections_store", "evaluate_target",
           "held_out_box_dice", "real_targets", "reference_prompt"]

PROMPT_KINDS = ("box", "slice boxes", "point", "2d box")

CTCHEST4_STRUCTURES = ("right lung", "left lung", "ribs", "cervical vertebral column", "thoracic vertebral column",
                       "lumbar vertebral column", "tissue")


@dataclass(frozen=True)
class RealTarget:
    """One structure of one real volume: reference (I, J, K) bool in the volume's geometry."""

    name: str
    structure: str
    modality: str
    volume: Volume
    reference: np.ndarray

    @property
    def is_lesion(self) -> bool:
        """Whether the knowledge base files the structure as a lesion (as the Segmenter's presets do)."""
        return KnowledgeBase.load().category_of(self.structure) == "lesion"


def corrected_slices(reference: np.ndarray, axis: int = DEFAULT_AXIS) -> list[int]:
    """The slices an expert corrects in the cohort benchmarks: 3 evenly spaced inside the reference's
    extent, or one per three slices of a short structure (lesions on 3-5 slices get 1)."""
    count = max(1, min(3, len(occupied_slices(reference, axis)) // 3))
    return uniform_slices(reference, count, axis)


def corrections_store(folder: str | Path, target: RealTarget, corrected: list[int]) -> FineTuningStore:
    """A fresh store at `folder` holding the target's volume as case 'case' and its reference on the
    `corrected` axial slices, as one partial correction."""
    store = FineTuningStore.init(folder)
    store.add_image(target.volume, "case", modality=target.modality)
    store.submit_mask("case", target.structure, target.reference, "reference", annotated_slices={"k": corrected})
    return store


def held_out_box_dice(segmenter: Segmenter, volume: Volume, structure: str, modality: str, reference: np.ndarray,
                      corrected: list[int], options: PropagationOptions | None = None) -> float:
    """Dice over the axial slices not in `corrected`, `structure` segmented in `volume` from the (I, J, K)
    `reference`'s box + REFERENCE_BOX_MARGIN; options: propagation options (None: the structure's preset)."""
    box = Box3D.around(reference, REFERENCE_BOX_MARGIN)
    mask = segmenter.segment(volume, structure, box=box, modality=modality, options=options).mask
    return held_out_dice(mask, reference, corrected)


def real_targets(lesions: bool = True, ctchest4: bool = True) -> list[RealTarget]:
    """CTChest4's seven structures (from slicerio) and the five clinical lesions (fetched, see io.clinical_cases)."""
    from MedSegAdaptLib.io.clinical_cases import clinical_cases
    from MedSegAdaptLib.io.sample_data import (
        ctchest4_segmentation_path,
        ctchest4_volume_path,
    )
    from MedSegAdaptLib.io.segmentation import read_segmentation
    from MedSegAdaptLib.io.volume import read_volume

    targets = []
    if ctchest4:
        volume, reference = read_volume(ctchest4_volume_path()), read_segmentation(ctchest4_segmentation_path())
        targets += [RealTarget(f"CTChest4 {name}", name, "ct", volume, reference.get(name).mask)
                    for name in CTCHEST4_STRUCTURES]
    if lesions:
        for case in clinical_cases():
            volume, reference = case.load()
            targets.append(RealTarget(case.name, case.structure, case.modality, volume, reference))
    return targets


def _middle_slice(reference: np.ndarray, axis: int) -> int:
    """The middle of the reference's slice range along `axis`, moved to the nearest slice holding it."""
    occupied = occupied_slices(reference, axis)
    return int(nearest_slice((occupied[0] + occupied[-1]) / 2, occupied))


def reference_prompt(reference: np.ndarray, kind: str, axis: int = DEFAULT_AXIS) -> tuple[Box3D | None, list[Point3D]]:
    """The (box, points) of prompt kind 'box', 'point' or '2d box' made from a non-empty reference mask."""
    if not reference.any():
        raise InputError("the reference mask is empty; a prompt needs a structure to point at")
    if kind == "box":
        return Box3D.around(reference, REFERENCE_BOX_MARGIN), []
    middle = _middle_slice(reference, axis)
    plane = take_slices(reference, axis, [middle])[0]
    if kind == "point":
        depth = sitk.GetArrayFromImage(sitk.SignedMaurerDistanceMap(
            sitk.GetImageFromArray(plane.astype(np.uint8)), insideIsPositive=True, squaredDistance=False))
        row, col = np.unravel_index(np.argmax(depth), plane.shape)
        ijk = [0, 0, 0]
        x_axis, y_axis = in_plane_axes(axis)
        ijk[axis], ijk[x_axis], ijk[y_axis] = middle, int(col), int(row)
        return None, [Point3D(tuple(ijk))]
    if kind == "2d box":
        only_middle = np.zeros_like(reference)
        put_slice(only_middle, axis, middle, plane)
        return Box3D.around(only_middle, REFERENCE_BOX_MARGIN).on_slice(axis, middle), []
    raise InputError(f"unknown prompt kind {kind!r}; expected one of {', '.join(PROMPT_KINDS)}")


def _slice_boxes_mask(segmenter: Segmenter, target: RealTarget, axis: int) -> np.ndarray:
    """Every reference slice decoded alone with its own reference box plus the margin: (I, J, K) bool."""
    encoder = segmenter.encoder_for(target.volume, preset_for(target.structure, target.modality), axis)
    propagator = VolumePropagator(encoder)
    mask = np.zeros(target.reference.shape, dtype=bool)
    x_axis, y_axis = in_plane_axes(axis)
    bounds = np.array([0, 0, target.reference.shape[x_axis] - 1, target.reference.shape[y_axis] - 1], np.float32)
    for index in occupied_slices(target.reference, axis):
        rect = prompt_rect(mask_rect(take_slices(target.reference, axis, [int(index)])[0]), REFERENCE_BOX_MARGIN, bounds)
        encoder.ensure([int(index)])
        predicted, _ = propagator.predict_slice(int(index), rect)
        put_slice(mask, axis, int(index), predicted)
    return mask


def evaluate_target(segmenter: Segmenter, target: RealTarget, kind: str, axis: int = DEFAULT_AXIS,
                    options: PropagationOptions | None = None, intensity_cut: bool = True) -> dict:
    """One row: target, prompt kind, Dice, HD95 (mm, None when the prediction is empty), seconds, voxels.
    options: propagation options (None: the Segmenter's preset for the structure's category);
    intensity_cut: as Segmenter.segment's (per-slice boxes are decoded as they are)."""
    started = time.perf_counter()
    if kind == "slice boxes":
        mask = _slice_boxes_mask(segmenter, target, axis)
    else:
        box, points = reference_prompt(target.reference, kind, axis)
        mask = segmenter.segment(target.volume, target.structure, box=box, points=points, modality=target.modality,
                                 axis=axis, options=options, intensity_cut=intensity_cut).mask
    seconds = time.perf_counter() - started
    distance = hd95_mm(mask, target.reference, target.volume.geometry.spacing) if mask.any() else None
    return {"target": target.name, "prompt": kind, "dice": round(dice(mask, target.reference), 3),
            "hd95 mm": None if distance is None else round(distance, 1), "seconds": round(seconds, 2),
            "voxels": int(mask.sum()), "reference voxels": int(target.reference.sum())}
