"""MedSeg-R priors on the real CTChest4, leave-slices-out: zero-shot vs fine-tuned decoder vs priors.

For each structure, the reference masks of `--annotated` uniformly spaced axial slices go into one
fine-tuning store (all structures together, as an expert would correct them); every variant is
fine-tuned on that store with box and prompt-free samples mixed (`--prompt mixed`) and scored by
Dice on the slices that were NOT annotated, under three prompts:

- box: the reference 3D box + 2 voxels, volumetric propagation (as `segment --box-ijk`);
- point: one foreground point inside the structure on its middle slice (LiteMedSAM turns it into a
  start box around the similar-intensity region);
- none: prompt-free, every slice decoded without a prompt, largest 3D component kept.

Variants: the pretrained backbone (zero-shot; its prompt-free decoding is forced for comparison),
mask decoder only, all priors with the decoder, all priors with the decoder frozen, and all priors
minus one. All annotated slices train (no validation split). Trained variants run once per
`--seeds` seed (box jitter, sample order, prompt choice, dropout) and report the mean and, with
several seeds, the standard deviation; the priors' texts are the knowledge base's descriptions.

    python benchmarks/evaluate_priors.py [--epochs 15] [--steps 16] [--annotated 3] [--seeds 0,1,2]
        [--variants "decoder only;priors + decoder"] [--output-dir out/priors]
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

from MedSegAdaptLib.core.constants import REFERENCE_BOX_MARGIN
from MedSegAdaptLib.demos.feedback_loop import held_out_dice, uniform_slices
from MedSegAdaptLib.inference import Box3D, EmbeddingCache, Point3D, Segmenter
from MedSegAdaptLib.io import read_segmentation, read_volume
from MedSegAdaptLib.io.sample_data import (
    ctchest4_segmentation_path,
    ctchest4_volume_path,
)
from MedSegAdaptLib.models import load_backbone
from MedSegAdaptLib.store import FineTuningStore
from MedSegAdaptLib.training import FineTuneOptions, fine_tune

STRUCTURES = ("left lung", "right lung", "thoracic vertebral column", "tissue")
ALL = ("location", "texture", "shape", "semantic")
VARIANTS = {
    "zero-shot (pretrained)": None,
    "decoder only": {},
    "priors + decoder": {"priors": ALL},
    "priors only (decoder frozen)": {"priors": ALL, "train_decoder": False},
    **{f"priors + decoder without {p}": {"priors": tuple(q for q in ALL if q != p)} for p in ALL},
}
PROMPTS = ("box", "point", "none")


def centre_point(mask: np.ndarray) -> Point3D:
    """A foreground point deep inside the structure on its middle axial slice."""
    slices = np.flatnonzero(mask.any(axis=(0, 1)))
    k = int(slices[len(slices) // 2])
    depth = ndimage.distance_transform_edt(mask[:, :, k])
    i, j = np.unravel_index(int(depth.argmax()), depth.shape)
    return Point3D((int(i), int(j), k), 1)


def evaluate(segmenter: Segmenter, volume, truths: dict, annotated: dict) -> dict[str, float]:
    """'structure / prompt' -> held-out Dice."""
    scores = {}
    for name, truth in truths.items():
        for prompt in PROMPTS:
            if prompt == "box":
                outcome = segmenter.segment(volume, name, box=Box3D.around(truth, REFERENCE_BOX_MARGIN))
            elif prompt == "point":
                outcome = segmenter.segment(volume, name, points=[centre_point(truth)])
            else:
                outcome = segmenter.segment(volume, name)
            scores[f"{name} / {prompt}"] = held_out_dice(outcome.mask, truth, annotated[name])
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--steps", type=int, default=16, help="optimizer steps per epoch (2 slices each)")
    parser.add_argument("--annotated", type=int, default=3, help="annotated axial slices per structure")
    parser.add_argument("--output-dir", type=Path, default=Path("out/priors"))
    parser.add_argument("--variants", default=";".join(VARIANTS), help="';'-separated subset of the variants")
    parser.add_argument("--seeds", default="0", help="comma-separated training seeds (default: %(default)s)")
    args = parser.parse_args()
    args.output_dir.mkdir(parents=True, exist_ok=True)
    volume = read_volume(ctchest4_volume_path())
    reference = read_segmentation(ctchest4_segmentation_path())
    truths = {name: reference.get(name).mask for name in STRUCTURES}
    annotated = {name: uniform_slices(mask, args.annotated) for name, mask in truths.items()}
    store_path = args.output_dir / f"store-{time.strftime('%Y%m%d-%H%M%S')}"
    with FineTuningStore.init(store_path) as store:
        store.add_image(volume, "CTChest4", modality="ct")
        for name, mask in truths.items():
            store.submit_mask("CTChest4", name, mask, "reference (stand-in expert)", annotated_slices={"k": annotated[name]})
    print("annotated axial slices: " + "; ".join(f"{n} {s}" for n, s in annotated.items()), flush=True)

    cache = EmbeddingCache()
    seeds = [int(seed) for seed in args.seeds.split(",")]
    rows = []
    for variant in args.variants.split(";"):
        settings = VARIANTS[variant.strip()]
        runs, epoch_seconds = [], []
        if settings is None:
            backbone = load_backbone(for_inference=True)
            backbone.prompt_free_structures = STRUCTURES  # force prompt-free decoding of the pretrained decoder
            runs.append(evaluate(Segmenter(backbone, cache), volume, truths, annotated))
        for seed in seeds if settings is not None else ():
            checkpoint = store_path.parent / f"{store_path.name}-{len(rows)}-seed{seed}.pt"
            options = FineTuneOptions(epochs=args.epochs, min_steps_per_epoch=args.steps, prompt="mixed",
                                      min_slices_for_validation=1000, seed=seed, **settings)
            with FineTuningStore(store_path) as store:
                result = fine_tune(store, checkpoint, options=options, cache=cache)
            epoch_seconds += [r["seconds"] for r in result.history]
            runs.append(evaluate(Segmenter(load_backbone(checkpoint=checkpoint, for_inference=True), cache),
                                 volume, truths, annotated))
        row = {"variant": variant.strip(), "seeds": len(runs),
               "seconds_per_epoch": float(np.median(epoch_seconds)) if epoch_seconds else None}
        for column in runs[0]:
            values = [run[column] for run in runs]
            row[column] = float(np.mean(values))
            row[f"{column} sd"] = float(np.std(values)) if len(values) > 1 else None
        rows.append(row)
        print(json.dumps(row), flush=True)
        with open(args.output_dir / "results.jsonl", "a") as log:
            log.write(json.dumps(row) + "\n")
    columns = [c for c in rows[0] if c not in ("variant", "seeds", "seconds_per_epoch") and not c.endswith(" sd")]
    print("| variant | seeds | s/epoch | " + " | ".join(columns) + " |")
    print("|---|---|---|" + "---|" * len(columns))
    for row in rows:
        epoch = "-" if row["seconds_per_epoch"] is None else f"{row['seconds_per_epoch']:.1f}"
        cells = [f"{row[c]:.3f}" + ("" if row[f"{c} sd"] is None else f" ± {row[f'{c} sd']:.2f}") for c in columns]
        print(f"| {row['variant']} | {row['seeds']} | {epoch} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
