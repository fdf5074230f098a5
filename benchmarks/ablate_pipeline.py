"""Accuracy of pipeline choices on the real CTChest4: the default against one change at a time.

Box prompts from the reference extent + 2 voxels, Dice per structure. Variants: no intensity
stopping rule, largest connected component, other bone windows, slices shown in radiological
orientation, bf16 encoder autocast.

    python benchmarks/ablate_pipeline.py
"""
from __future__ import annotations

import numpy as np

from MedSegAdaptLib.core.constants import REFERENCE_BOX_MARGIN
from MedSegAdaptLib.evaluation import dice
from MedSegAdaptLib.inference import Box3D, PropagationOptions, Segmenter, preprocess
from MedSegAdaptLib.io import read_segmentation, read_volume, volume_from_array
from MedSegAdaptLib.io.sample_data import (
    ctchest4_segmentation_path,
    ctchest4_volume_path,
)
from MedSegAdaptLib.models import load_backbone

STRUCTURES = ("right lung", "left lung", "thoracic vertebral column", "cervical vertebral column",
              "lumbar vertebral column", "tissue")


def scores(segmenter: Segmenter, volume, masks: dict[str, np.ndarray],
           options: PropagationOptions = PropagationOptions()) -> list[float]:
    return [dice(segmenter.segment(volume, name, box=Box3D.around(mask, REFERENCE_BOX_MARGIN), options=options).mask,
                 mask) for name, mask in masks.items()]


def main() -> None:
    volume = read_volume(ctchest4_volume_path())
    reference = read_segmentation(ctchest4_segmentation_path())
    masks = {name: reference.get(name).mask for name in STRUCTURES}
    fast = load_backbone(for_inference=True)
    rows = [("default", scores(Segmenter(fast), volume, masks))]
    rows.append(("no intensity stopping rule",
                 scores(Segmenter(fast), volume, masks, PropagationOptions(max_intensity_shift=1.0))))
    rows.append(("largest connected component",
                 scores(Segmenter(fast), volume, masks, PropagationOptions(largest_component=True))))
    default_bone = preprocess.CT_WINDOWS["bone"]
    for window in ((40.0, 400.0), (300.0, 1000.0), (150.0, 900.0)):
        preprocess.CT_WINDOWS["bone"] = window
        rows.append((f"bone window L{window[0]:g}/W{window[1]:g}", scores(Segmenter(fast), volume, masks)))
    preprocess.CT_WINDOWS["bone"] = default_bone
    flipped = volume_from_array(np.flip(volume.array, (0, 1)).copy(), volume.geometry)
    rows.append(("radiological orientation (I and J flipped)",
                 scores(Segmenter(fast), flipped, {n: np.flip(m, (0, 1)).copy() for n, m in masks.items()})))
    torch_encoder = load_backbone(for_inference=True, encoder_runtime="torch")
    rows.append(("bf16 encoder autocast", scores(Segmenter(torch_encoder, precision="bf16"), volume, masks)))

    print("| variant | " + " | ".join(STRUCTURES) + " |")
    print("|---|" + "---|" * len(STRUCTURES))
    for name, values in rows:
        print(f"| {name} | " + " | ".join(f"{v:.3f}" for v in values) + " |")


if __name__ == "__main__":
    main()
