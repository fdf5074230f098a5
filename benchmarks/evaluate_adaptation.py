"""MedSeg-Adapt on CTChest4, MedScanDiff-style: does adapting to an environment help on held-out data?

CTChest4 is the only real labeled volume in the installed packages, so it is split along K: the
upper slices (k < --split) are the real source (their reference labels submitted as corrections),
the lower slices (k >= --split) are held out. For each environment the environment applied to the
held-out part (seed 1000, labels transformed with it) is the test set; every structure is segmented
there from its transformed reference box + 2 voxels and scored with Dice. Rows:

- vanilla: the pretrained LiteMedSAM;
- corrections only: fine-tuned on the source corrections alone (what the environment adds is
  measured against this, not against vanilla);
- adapted: `adapt` (--count samples of the environment from the source, ensemble pseudo-masks,
  self-validation at 0.8, fine-tuning on corrections + accepted synthetic labels);
- generic augmentation: the same with MONAI's generic intensity augmentation (Gaussian noise,
  intensity scale and shift, contrast) instead of the environment simulator;
- no self-validation: every pseudo-mask accepted;
- simulated labels: the simulator's exact transformed labels instead of pseudo-masks (the labels are
  whole-volume here), the upper bound of what better pseudo-masks could give;
- with priors: adapted, fine-tuning the MedSeg-R priors too (--priors all; without the flag the
  queries only name structures, as the pretrained model has no priors to steer).

Pseudo-mask quality: Dice of every generated pseudo-mask against the transformed reference label,
for the accepted and the queued ones (how well self-validation sorts them).

    python benchmarks/evaluate_adaptation.py [--environments low-dose-ct,pediatric] [--count 2]
        [--variants "adapted;generic augmentation;no self-validation;with priors"] [--epochs 4]
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from MedSegAdaptLib.core.constants import REFERENCE_BOX_MARGIN
from MedSegAdaptLib.environments.pipeline import generate_samples, summarize
from MedSegAdaptLib.environments.simulators import SimulatedSample, environment
from MedSegAdaptLib.evaluation.metrics import dice
from MedSegAdaptLib.inference import Box3D, EmbeddingCache, Segmenter
from MedSegAdaptLib.io import Volume, read_segmentation, read_volume
from MedSegAdaptLib.io.geometry import Geometry
from MedSegAdaptLib.io.sample_data import (
    ctchest4_segmentation_path,
    ctchest4_volume_path,
)
from MedSegAdaptLib.models import load_backbone
from MedSegAdaptLib.store import FineTuningStore
from MedSegAdaptLib.training import FineTuneOptions, fine_tune

STRUCTURES = ("right lung", "left lung", "thoracic vertebral column")
TEST_SEED = 1000


class GenericAugmentation:
    """The ablation: MONAI's generic intensity augmentation, labels unchanged, named after the target
    environment (so its queries read alike)."""

    def __init__(self, target: str) -> None:
        self.name = target

    def apply(self, volume: Volume, labels: dict, rng: np.random.Generator) -> SimulatedSample:
        from monai.transforms import (
            RandAdjustContrast,
            RandGaussianNoise,
            RandScaleIntensity,
            RandShiftIntensity,
        )

        array = volume.array.astype(np.float32)
        low, high = float(array.min()), float(array.max())
        unit = (array - low) / (high - low)
        steps = [RandGaussianNoise(prob=1.0, std=0.005), RandScaleIntensity(factors=0.05, prob=1.0),
                 RandShiftIntensity(offsets=0.01, prob=1.0), RandAdjustContrast(prob=1.0, gamma=(0.9, 1.1))]
        for step in steps:
            step.set_random_state(int(rng.integers(2**31)))
            unit = np.asarray(step(unit[None]))[0]
        out = Volume(unit * (high - low) + low, volume.geometry, modality_hint="CT")
        return SimulatedSample(out, {k: v.copy() for k, v in labels.items()}, "ct", self.name,
                               {"generic": "noise 0.005, scale 0.05, shift 0.01 (of the range), gamma 0.9-1.1"})


def sub_volume(volume: Volume, labels: dict, lo: int, hi: int) -> tuple[Volume, dict]:
    """Slices lo..hi-1 along K with their geometry (origin moved) and labels."""
    geometry = volume.geometry
    origin = geometry.ijk_to_lps() @ np.array([0, 0, lo, 1.0])
    shape = (geometry.shape[0], geometry.shape[1], hi - lo)
    part = Geometry(shape, geometry.spacing, tuple(origin[:3]), geometry.direction)
    return (Volume(np.ascontiguousarray(volume.array[:, :, lo:hi]), part, modality_hint="CT"),
            {name: np.ascontiguousarray(mask[:, :, lo:hi]) for name, mask in labels.items()})


def test_dice(segmenter: Segmenter, test: SimulatedSample) -> dict[str, float]:
    """Dice per structure on the test sample, each from its reference box + 2 voxels."""
    scores = {}
    for name, truth in test.labels.items():
        if not truth.any():
            continue
        box = Box3D.around(truth, REFERENCE_BOX_MARGIN)
        mask = segmenter.segment(test.volume, name, box=box, modality=test.modality).mask
        scores[name] = dice(mask, truth)
    return scores


def source_store(folder: Path, source: Volume, labels: dict) -> FineTuningStore:
    store = FineTuningStore.init(folder)
    store.add_image(source, "source", modality="ct")
    for name, mask in labels.items():
        store.submit_mask("source", name, mask, "reference")
    return store


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--environments", default="low-dose-ct,high-res-ct,varying-field-mri,pediatric,pathology")
    parser.add_argument("--variants", default="adapted;generic augmentation;no self-validation")
    parser.add_argument("--count", type=int, default=2, help="synthetic samples per environment")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--split", type=int, default=19, help="first held-out slice along K")
    parser.add_argument("--output-dir", type=Path, default=Path("out/adaptation"))
    args = parser.parse_args()
    run_dir = args.output_dir / time.strftime("run-%Y%m%d-%H%M%S")
    run_dir.mkdir(parents=True)
    volume = read_volume(ctchest4_volume_path())
    reference = read_segmentation(ctchest4_segmentation_path())
    labels = {name: reference.get(name).mask for name in STRUCTURES}
    source, source_labels = sub_volume(volume, labels, 0, args.split)
    held_out, held_out_labels = sub_volume(volume, labels, args.split, volume.array.shape[2])
    cache = EmbeddingCache()
    pretrained = Segmenter(load_backbone(for_inference=True), cache)
    options = FineTuneOptions(epochs=args.epochs)

    with source_store(run_dir / "corrections-only", source, source_labels) as store:
        fine_tune(store, run_dir / "corrections-only.pt", options=options, cache=cache)
    corrected = Segmenter(load_backbone(checkpoint=run_dir / "corrections-only.pt", for_inference=True), cache)

    rows = []
    for name in args.environments.split(","):
        chosen = environment(name)
        test = chosen.apply(held_out, held_out_labels, np.random.default_rng(TEST_SEED))
        row = {"environment": name, "vanilla": test_dice(pretrained, test),
               "corrections only": test_dice(corrected, test)}
        for variant in args.variants.split(";"):
            folder = run_dir / f"{name}-{variant}".replace(" ", "_")
            generator = GenericAugmentation(name) if variant == "generic augmentation" else chosen
            started = time.perf_counter()
            with source_store(folder / "store", source, source_labels) as store:
                generated = generate_samples(store, generator, args.count, [pretrained], seed=0,
                                             self_validation=variant != "no self-validation",
                                             simulated_labels=variant == "simulated labels")
                variant_options = FineTuneOptions(epochs=args.epochs, priors=("location", "texture", "shape",
                                                                              "semantic") if variant == "with priors" else ())
                fine_tune(store, folder / "adapted.pt", options=variant_options, cache=cache)
            adapted = Segmenter(load_backbone(checkpoint=folder / "adapted.pt", for_inference=True), cache)
            row[variant] = test_dice(adapted, test)
            row[f"{variant} seconds"] = time.perf_counter() - started
            if variant == "adapted":
                row["pseudo-masks"] = summarize(generated)
                row["pseudo-mask labels"] = [g.to_dict() for g in generated]
        rows.append(row)
        print(json.dumps(row), flush=True)
        with open(run_dir / "results.jsonl", "a") as log:
            log.write(json.dumps(row) + "\n")

    variants = ["vanilla", "corrections only", *args.variants.split(";")]
    print("| environment | " + " | ".join(variants) + " | gain over corrections only |")
    print("|---|" + "---|" * (len(variants) + 1))
    for row in rows:
        means = {v: np.mean(list(row[v].values())) for v in variants}
        gain = means["adapted"] - means["corrections only"] if "adapted" in means else float("nan")
        print(f"| {row['environment']} | " + " | ".join(f"{means[v]:.3f}" for v in variants) + f" | {gain:+.3f} |")
    print("\nper structure:")
    for row in rows:
        for v in variants:
            print(row["environment"], v, {k: round(x, 3) for k, x in row[v].items()})
    print("\npseudo-mask Dice against the transformed reference (accepted / queued):")
    for row in rows:
        if "pseudo-masks" in row:
            print(row["environment"], json.dumps(row["pseudo-masks"]))


if __name__ == "__main__":
    main()
