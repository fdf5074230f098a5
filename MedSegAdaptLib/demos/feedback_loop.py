"""The feedback loop on the real CTChest4: segment, correct a few slices, fine-tune, segment again.

For each structure: segment it from its reference 3D box (+2 voxels) with the pretrained model,
store that prediction, submit the reference segmentation's masks on a few uniformly spaced axial
slices as an expert's partial correction (the reference stands in for the expert), fine-tune the
mask decoder on the store, segment again with the fine-tuned checkpoint (as `segment --checkpoint`
does) and compare Dice before and after, on the slices that were not annotated and on the volume.
"""
from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from MedSegAdaptLib.core.axes import occupied_slices
from MedSegAdaptLib.core.constants import REFERENCE_BOX_MARGIN
from MedSegAdaptLib.core.progress import ProgressCallback
from MedSegAdaptLib.evaluation import dice, format_table
from MedSegAdaptLib.inference import Box3D, EmbeddingCache, Segmenter
from MedSegAdaptLib.io import Segment, Segmentation, read_segmentation, read_volume
from MedSegAdaptLib.io.sample_data import (
    ctchest4_segmentation_path,
    ctchest4_volume_path,
)
from MedSegAdaptLib.store import FineTuningStore
from MedSegAdaptLib.training.options import FineTuneOptions

__all__ = [
    "ANNOTATED_SLICES",
    "CASE_ID",
    "EXPERT",
    "LOOP_STRUCTURES",
    "SegmenterFactory",
    "default_segmenter_factory",
    "held_out_dice",
    "run_feedback_loop",
    "uniform_slices",
]

LOOP_STRUCTURES = ("thoracic vertebral column", "lumbar vertebral column")
ANNOTATED_SLICES = 3
CASE_ID = "CTChest4"
EXPERT = "reference segmentation (stand-in expert)"

SegmenterFactory = Callable[[Path | None], Segmenter]
"""segmenter_factory(checkpoint): a Segmenter on the starting weights (None) or a fine-tuned checkpoint."""


def default_segmenter_factory(device: str = "cpu", cache: EmbeddingCache | None = None,
                              base_checkpoint: Path | None = None) -> SegmenterFactory:
    """Segmenters as `segment` builds them (inference-optimised encoder), sharing one embedding cache:
    a fine-tuned checkpoint keeps the frozen encoder, so its embeddings are the pretrained ones.
    factory(None) loads base_checkpoint (None: the packaged LiteMedSAM)."""
    from MedSegAdaptLib.models import load_backbone

    cache = cache if cache is not None else EmbeddingCache()

    def factory(checkpoint: Path | None) -> Segmenter:
        weights = checkpoint if checkpoint is not None else base_checkpoint
        return Segmenter(load_backbone(checkpoint=weights, device=device, for_inference=True), cache)

    return factory


def uniform_slices(mask: np.ndarray, count: int, axis: int = 2) -> list[int]:
    """`count` slice indices spread evenly inside the structure's extent along `axis` (ends left out)."""
    present = occupied_slices(mask, axis)
    positions = np.linspace(present[0], present[-1], count + 2)[1:-1]
    return sorted({int(round(p)) for p in positions})


def held_out_dice(pred: np.ndarray, truth: np.ndarray, annotated: list[int], axis: int = 2) -> float:
    """Dice over the slices along `axis` that were not annotated; pred, truth (I, J, K) bool."""
    keep = np.ones(truth.shape[axis], dtype=bool)
    keep[annotated] = False
    return dice(np.compress(keep, pred, axis=axis), np.compress(keep, truth, axis=axis))


def run_feedback_loop(output_dir: str | Path, segmenter_factory: SegmenterFactory | None = None,
                      structures: Sequence[str] = LOOP_STRUCTURES, annotated_count: int = ANNOTATED_SLICES,
                      options: FineTuneOptions = FineTuneOptions(), device: str = "cpu",
                      checkpoint: Path | None = None, cache: EmbeddingCache | None = None,
                      progress: ProgressCallback | None = None,
                      log: Callable[[str], None] | None = print) -> list[dict]:
    """Run the loop in a fresh store under `output_dir`.

    segmenter_factory(None) must segment with the starting weights `checkpoint` (None: the packaged
    LiteMedSAM), from which fine-tuning starts; cache: embeddings shared with fine-tuning.
    Returns one row per structure, also written to `output_dir`/dice_before_after.json:
    {name, annotated_slices, dice_before, dice_after (whole volume), held_out_dice_before,
    held_out_dice_after (slices not annotated), ref_voxels}.
    """
    from MedSegAdaptLib.training.trainer import fine_tune

    log = log or (lambda text: None)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    cache = cache if cache is not None else EmbeddingCache()
    factory = segmenter_factory or default_segmenter_factory(device, cache, checkpoint)
    volume = read_volume(ctchest4_volume_path())
    reference = read_segmentation(ctchest4_segmentation_path())

    started = time.perf_counter()
    before_segmenter = factory(None)
    before: dict[str, np.ndarray] = {}
    for name in structures:
        box = Box3D.around(reference.get(name).mask, REFERENCE_BOX_MARGIN)
        before[name] = before_segmenter.segment(volume, name, box=box, progress=progress).mask
    log(f"segmented {len(structures)} structures with the pretrained model in {time.perf_counter() - started:.1f} s")

    store = FineTuningStore.init(output_dir / "store")
    try:
        store.add_image(volume, CASE_ID, modality="ct")
        store.add_prediction(CASE_ID, Segmentation(volume.geometry, [Segment(n, before[n]) for n in structures]),
                             checkpoint_sha256=before_segmenter.backbone.spec.weights_sha256)
        annotated: dict[str, list[int]] = {}
        for name in structures:
            truth = reference.get(name).mask
            annotated[name] = uniform_slices(truth, annotated_count)
            store.submit_mask(CASE_ID, name, truth, EXPERT, annotated_slices={"k": annotated[name]},
                              comment="reference masks on these slices stand in for an expert's correction")
        log("submitted corrections: " + "; ".join(f"{n} k:{','.join(map(str, s))}" for n, s in annotated.items()))
        finetuned = output_dir / "finetuned.pt"
        started = time.perf_counter()
        result = fine_tune(store, finetuned, checkpoint=checkpoint, device=device, options=options, cache=cache,
                           progress=progress)
    finally:
        store.close()
    seconds = time.perf_counter() - started
    epoch_seconds = [record["seconds"] for record in result.history]
    log(f"fine-tuned on {result.train_slices} slices: {result.epochs_run} epochs in {seconds:.1f} s "
        f"({np.mean(epoch_seconds):.1f} s per epoch), loss {result.history[0]['train_loss']:.3f} -> "
        f"{result.history[-1]['train_loss']:.3f}; wrote {finetuned}")

    after_segmenter = factory(finetuned)
    rows = []
    for name in structures:
        truth = reference.get(name).mask
        box = Box3D.around(truth, REFERENCE_BOX_MARGIN)
        after = after_segmenter.segment(volume, name, box=box, progress=progress).mask
        rows.append({
            "name": name,
            "annotated_slices": ",".join(map(str, annotated[name])),
            "held_out_dice_before": held_out_dice(before[name], truth, annotated[name]),
            "held_out_dice_after": held_out_dice(after, truth, annotated[name]),
            "dice_before": dice(before[name], truth),
            "dice_after": dice(after, truth),
            "ref_voxels": int(truth.sum()),
        })
    log(format_table(rows))
    (output_dir / "dice_before_after.json").write_text(json.dumps(rows, indent=2))
    return rows


if __name__ == "__main__":  # python -m MedSegAdaptLib.demos.feedback_loop [OUTPUT_DIR]
    import sys

    run_feedback_loop(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("out/feedback_loop"))
