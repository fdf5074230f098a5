"""Training slices from a fine-tuning store's training view: cached embeddings, masks and boxes.

Each trainable label (the latest correction or accepted review per case and structure) gives one
sample per annotated slice: the slice's encoder embedding, its reference mask on the slice grid and
the mask's bounding box (the box prompt). Partial annotations contribute only their annotated
slices, along the axis they were annotated on: voxels elsewhere are unknown, not background, so they
never enter the loss. A label of the whole volume contributes every axial (k) slice.

With ``negatives`` (prompt-free or mixed training), an annotated slice of a partial annotation whose
mask is empty (the annotator said "not here") is a negative sample: its target is empty and its box,
used when the slice is box-prompted, is that of the nearest non-empty annotated slice of the same
label, the kind of box propagation carries past the end of a structure. Without ``negatives``, without
a non-empty annotated slice to borrow from, and for empty slices of whole-volume labels, empty slices
are skipped. Box-prompted training leaves negatives out because they cost accuracy: on the thoracic
column with annotated slices 28, 9 (empty) and 20, held-out Dice over 5 seeds was 0.693 +- 0.009
without negatives, 0.674 +- 0.007 with them (cross-entropy only) and 0.587 +- 0.070 with DiceCE on
them (docs/suggestions.md).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from MedSegAdaptLib.core.axes import AXIS_NAMES, DEFAULT_AXIS, nearest_slice, take_slices
from MedSegAdaptLib.core.constants import MIN_MASK_AREA
from MedSegAdaptLib.core.errors import InputError
from MedSegAdaptLib.core.progress import ProgressCallback
from MedSegAdaptLib.inference.embedding_cache import EmbeddingCache
from MedSegAdaptLib.inference.preprocess import IntensityPreset, preset_for, slice_scale
from MedSegAdaptLib.inference.prompts import mask_rect
from MedSegAdaptLib.inference.slice_encoder import (
    SliceEncoder,
    build_slice_encoder,
    embedding_key,
)
from MedSegAdaptLib.io import Volume, read_volume
from MedSegAdaptLib.io.modality import detect_modality
from MedSegAdaptLib.models.backbone import SamBackbone
from MedSegAdaptLib.store.records import TrainingRow

if TYPE_CHECKING:
    from MedSegAdaptLib.training.pseudo_labels import PseudoLabel

__all__ = [
    "EncodingJob",
    "PartialAnnotation",
    "SliceDataset",
    "TrainingSlice",
    "labeled_slices",
]



@dataclass
class TrainingSlice:
    """One annotated slice: mask (H, W) bool on the slice grid, rect (x0, y0, x1, y1) its tight box
    in slice pixels (for a negative, an empty mask, the borrowed box), extent_rect the tight box of its
    label's foreground over all the label's annotated slices along the axis (what a 3D box around the
    structure gives every slice; None for a pseudo-label), neighbour_rects the tight boxes of the label's
    annotated slices next to it (k - 1, k + 1) that hold it (what propagation from there prompts it
    with), scale the slice-to-encoder-input factor, key /
    index the embedding's cache entry."""

    case_id: str
    structure: str
    axis: int
    index: int
    key: str
    mask: np.ndarray
    rect: np.ndarray
    scale: float | None = None  # set by SliceDataset.encode from the backbone's input size
    modality: str = "ct"
    extent_rect: np.ndarray | None = None
    neighbour_rects: tuple[np.ndarray, ...] = ()
    pseudo: bool = False  # a selected pseudo-label, not an annotation
    synthetic: bool = False  # of a MedSeg-Adapt synthetic label (a generated image), not of a real case

    @property
    def name(self) -> str:
        return f"{self.case_id}/{self.structure}/{AXIS_NAMES[self.axis]}{self.index}"


@dataclass
class EncodingJob:
    """Slices of one volume, preset and axis to encode into the cache under `key`."""

    volume: Volume
    checksum: str
    preset: IntensityPreset
    axis: int
    key: str
    indices: set[int] = field(default_factory=set)

    def encoder(self, backbone: SamBackbone, cache: EmbeddingCache) -> SliceEncoder:
        """A SliceEncoder of this job's volume with `backbone`, reading and filling `cache`; RuntimeError
        when `backbone`'s image encoder is not the one this job's cache key was made for."""
        encoder = build_slice_encoder(backbone, cache, self.volume, self.preset, self.axis, self.checksum)
        if encoder.key != self.key:
            raise RuntimeError(f"the image encoder {backbone.spec.encoder_key[:12]}... is not the one the training "
                               "slices were keyed for; give SliceDataset that encoder's weights SHA-256")
        return encoder


@dataclass
class PartialAnnotation:
    """The annotated slices of one partial label along one axis: masks {slice: (H, W) bool},
    empty slices included; job: the encoding job of its volume and axis."""

    case_id: str
    structure: str
    modality: str
    job: EncodingJob
    masks: dict[int, np.ndarray]



def labeled_slices(annotated_slices: dict[str, list[int]] | None, shape: tuple[int, int, int]) -> dict[int, list[int]]:
    """{axis: slice indices} whose labels are known: the annotated ones, or every axial slice for None."""
    if annotated_slices is None:
        return {DEFAULT_AXIS: list(range(shape[DEFAULT_AXIS]))}
    return {AXIS_NAMES.index(axis): sorted(indices) for axis, indices in annotated_slices.items()}


class SliceDataset:
    """The annotated slices of a training view, with their embeddings in an EmbeddingCache.

    weights_sha256: the SHA-256 of the pretrained weights whose (frozen) image encoder makes the
    embeddings; with the preset, the volume and the axis it keys the cache, so a cache folder is
    shared with `segment` runs on the same weights.
    """

    def __init__(self, rows: Sequence[TrainingRow], weights_sha256: str, cache: EmbeddingCache | None = None,
                 read: Callable[[Path], Volume] = read_volume, negatives: bool = False) -> None:
        if not rows:
            raise InputError("the training view is empty: submit corrections (or accept pseudo-labels) first")
        self.cache = cache if cache is not None else EmbeddingCache()
        self.slices: list[TrainingSlice] = []
        self.partial: list[PartialAnnotation] = []
        self.image_size = 0  # the backbone's input size, set by encode()
        self._jobs: dict[str, EncodingJob] = {}
        images: dict[Path, tuple[Volume, str]] = {}
        for row in rows:
            if row.image not in images:
                volume = read(row.image)
                images[row.image] = (volume, volume.voxel_checksum())
            volume, checksum = images[row.image]
            label = read(row.label).array != 0
            if label.shape != volume.array.shape:
                raise InputError(f"label {row.label} has shape {label.shape}, its image {row.image} {volume.array.shape}")
            modality = row.modality or detect_modality(volume.array, volume.modality_hint)[0]
            preset = preset_for(row.structure, modality)
            for axis, indices in labeled_slices(row.annotated_slices, label.shape).items():
                key = embedding_key(checksum, weights_sha256, preset, axis)
                job = self._jobs.setdefault(key, EncodingJob(volume, checksum, preset, axis, key))
                masks = take_slices(label, axis, indices)
                if row.annotated_slices is not None:
                    self.partial.append(PartialAnnotation(row.case_id, row.structure, modality, job,
                                                          {int(i): np.ascontiguousarray(m) for i, m in zip(indices, masks)}))
                positive = {int(i): m for i, m in zip(indices, masks) if m.sum() >= MIN_MASK_AREA}
                extent = mask_rect(np.logical_or.reduce(list(positive.values()))) if positive else None
                for index, mask in zip(indices, masks):
                    if mask.sum() >= MIN_MASK_AREA:
                        rect = mask_rect(mask)
                    elif negatives and row.annotated_slices is not None and positive:
                        rect = mask_rect(positive[nearest_slice(int(index), list(positive))])
                        mask = np.zeros_like(mask)
                    else:
                        continue
                    job.indices.add(int(index))
                    self.slices.append(TrainingSlice(row.case_id, row.structure, axis, int(index), key,
                                                     np.ascontiguousarray(mask), rect, modality=modality,
                                                     extent_rect=extent, synthetic=row.kind == "synthetic",
                                                     neighbour_rects=tuple(mask_rect(positive[n]) for n in
                                                                           (int(index) - 1, int(index) + 1)
                                                                           if n in positive)))
        if not self.slices:
            raise InputError("the training view's annotated slices hold no foreground "
                             f"(at least {MIN_MASK_AREA} voxels per slice needed for a box prompt)")
        self.structures = sorted({row.structure for row in rows})

    def __len__(self) -> int:
        return len(self.slices)

    def include_unannotated(self) -> None:
        """Have encode() also encode every slice of partially annotated volumes (for pseudo-labels)."""
        for annotation in self.partial:
            annotation.job.indices.update(range(annotation.job.volume.array.shape[annotation.job.axis]))

    def add_pseudo_labels(self, labels: Sequence[PseudoLabel]) -> list[int]:
        """Append selected pseudo-labels (of partial annotations' volumes) as training slices; returns
        their indices in `slices`. Call after encode()."""
        jobs = {(a.case_id, a.structure, a.job.axis): (a.job, a.modality) for a in self.partial}
        added = []
        for label in labels:
            job, modality = jobs[(label.case_id, label.structure, label.axis)]
            item = TrainingSlice(label.case_id, label.structure, label.axis, label.index, job.key,
                                 np.ascontiguousarray(label.mask), mask_rect(label.mask), modality=modality, pseudo=True)
            item.scale = slice_scale(*item.mask.shape, self.image_size)
            added.append(len(self.slices))
            self.slices.append(item)
        return added

    def encode(self, backbone: SamBackbone, progress: ProgressCallback | None = None) -> int:
        """Encode every annotated slice not cached yet with `backbone`'s image encoder; returns how many."""
        encoded = 0
        for job in self._jobs.values():
            encoder = job.encoder(backbone, self.cache)
            encoder.ensure(sorted(job.indices), progress)
            encoded += encoder.encoded_count
        self.image_size = backbone.spec.image_size
        for item in self.slices:
            item.scale = slice_scale(*item.mask.shape, self.image_size)
        return encoded

    def embedding(self, item: TrainingSlice) -> torch.Tensor:
        """(256, 64, 64) float16 embedding of a slice (encode() first)."""
        embedding = self.cache.get(item.key, item.index)
        if embedding is None:
            raise RuntimeError(f"slice {item.name} is not encoded; call encode() first")
        return embedding
