"""MedSeg-Adapt over the real cohort: does `adapt` beat `finetune` on the same corrections?

Per target (a real case and structure) and seed: the expert corrected K slices of the unchanged case
(the reference masks on K evenly spaced slices of the structure's extent, K = 3, or fewer for a lesion
on few slices: one per three slices). Models, each fine-tuned with the `finetune` defaults and the seed:

- finetune: on the corrections alone;
- adapt: `adapt --count N` with the target's environment (low-dose CT for CT cases, a varying-field
  MRI for MR cases), the given label mode and synthetic share, then fine-tuned on corrections +
  synthetic labels. --variants picks label mode / share pairs, e.g. "exact:0.5;pseudo:proportional".

Each CT case is first cut to its structure's slab: the reference's axial extent + 2 slices (the whole
width of every slice, so that low-dose noise, which depends on the body each ray crosses, is unchanged;
CT windows are fixed, so the pretrained model's Dice is too: lung1 0.943, lung2 0.899 either way). The
low-dose simulator costs about 4-8 s per 512 x 512 slice on this CPU (180 projections per slice), so
whole 48-61-slice lung CTs would spend most of an hour per seed in the simulator alone. MR cases are
not cut: their intensities are clipped at the volume's percentiles, and brain1's slab fell from Dice
0.564 to 0.286.

Scores: Dice over the slices that were not corrected, from the reference 3D box + 2 voxels, on
(a) held-out environment data: the environment applied to the case with seed 1000 (a noise / field
realisation no sample was drawn with), and (b) the unchanged case (adaptation must not cost the
source scanner). The vanilla pretrained model is scored once per target. Each run is appended to
runs.jsonl as it finishes; --summarize prints the tables (mean +- sd over seeds, gain = adapt - finetune).

    python benchmarks/evaluate_adaptation.py [--targets "CTChest4 left lung;lung1"] [--seeds 0,1,2]
        [--count 6] [--variants "exact:0.5"] [--finetune-options '{"lesion_background_share": 0.2}']
        [--output-dir out/adaptation]
    python benchmarks/evaluate_adaptation.py --summarize out/adaptation/run-*/runs.jsonl
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from MedSegAdaptLib.core.axes import occupied_slices
from MedSegAdaptLib.core.constants import REFERENCE_BOX_MARGIN
from MedSegAdaptLib.environments.pipeline import generate_samples, summarize
from MedSegAdaptLib.environments.simulators import environment
from MedSegAdaptLib.harness.real_cases import (
    RealTarget,
    corrected_slices,
    corrections_store,
    held_out_box_dice,
    real_targets,
)
from MedSegAdaptLib.inference import EmbeddingCache, Segmenter
from MedSegAdaptLib.io import Volume
from MedSegAdaptLib.io.geometry import Geometry
from MedSegAdaptLib.models import load_backbone
from MedSegAdaptLib.store import FineTuningStore
from MedSegAdaptLib.training import FineTuneOptions, fine_tune

DEFAULT_TARGETS = ("CTChest4 right lung", "CTChest4 left lung", "CTChest4 thoracic vertebral column",
                   "lung1", "lung2", "brain1", "brain2", "breast1")
ENVIRONMENTS = {"ct": "low-dose-ct", "mr": "varying-field-mri"}
TEST_SEED = 1000


def slab(target: RealTarget) -> RealTarget:
    """A CT target cut to the reference's axial extent + REFERENCE_BOX_MARGIN slices (origin moved); an
    MR target as it is."""
    if target.modality != "ct":
        return target
    present = occupied_slices(target.reference, 2)
    lo, hi = max(present[0] - REFERENCE_BOX_MARGIN, 0), min(present[-1] + REFERENCE_BOX_MARGIN + 1,
                                                             target.reference.shape[2])
    geometry = target.volume.geometry
    origin = geometry.ijk_to_lps() @ np.array([0, 0, lo, 1.0])
    part = Geometry((*geometry.shape[:2], hi - lo), geometry.spacing, tuple(origin[:3]), geometry.direction)
    volume = Volume(np.ascontiguousarray(target.volume.array[:, :, lo:hi]), part,
                    modality_hint=target.volume.modality_hint)
    return dataclasses.replace(target, volume=volume, reference=np.ascontiguousarray(target.reference[:, :, lo:hi]))


def parse_variant(text: str) -> tuple[str, float | None]:
    """'exact:0.5' -> ('exact', 0.5); 'pseudo:proportional' -> ('pseudo', None)."""
    labels, _, share = text.partition(":")
    return labels.strip(), None if share.strip() in ("", "proportional") else float(share)


def run_target(target: RealTarget, seeds: list[int], variants: list[str], count: int, folder: Path,
               log: Path, cache: EmbeddingCache, pretrained: Segmenter, training: dict | None = None) -> None:
    """Every seed and variant of one target, appended to `log` as each finishes; training: FineTuneOptions
    fields that differ from the `finetune` defaults, for both models (recorded with every row)."""
    training = training or {}
    name = ENVIRONMENTS[target.modality]
    chosen = environment(name)
    corrected = corrected_slices(target.reference)
    test = chosen.apply(target.volume, {"reference": target.reference}, np.random.default_rng(TEST_SEED))
    held_out = test.labels["reference"]

    def both(segmenter: Segmenter) -> dict[str, float]:
        return {"environment data": held_out_box_dice(segmenter, test.volume, target.structure, test.modality,
                                                      held_out, corrected),
                "source data": held_out_box_dice(segmenter, target.volume, target.structure, target.modality,
                                                 target.reference, corrected)}

    def append(row: dict) -> None:
        row = {"target": target.name, "environment": name, "corrected": corrected, "finetune options": training,
               **row}
        print(json.dumps(row), flush=True)
        with open(log, "a") as handle:
            handle.write(json.dumps(row) + "\n")

    append({"model": "vanilla", "seed": None, **both(pretrained)})
    for seed in seeds:
        options = FineTuneOptions(**{**training, "seed": seed})
        run = folder / f"{target.name}-{seed}".replace(" ", "_")
        started = time.perf_counter()
        with corrections_store(run / "finetune", target, corrected) as store:
            fine_tune(store, run / "finetune.pt", options=options, cache=cache)
        tuned = Segmenter(load_backbone(checkpoint=run / "finetune.pt", for_inference=True), cache)
        append({"model": "finetune", "seed": seed, "seconds": time.perf_counter() - started, **both(tuned)})
        stores: dict[str, Path] = {}
        for variant in variants:
            labels, share = parse_variant(variant)
            started = time.perf_counter()
            with corrections_store(run / f"adapt-{labels}", target, corrected) if labels not in stores \
                    else FineTuningStore(stores[labels]) as store:
                stores[labels] = store.root
                generated = generate_samples(store, chosen, count, [pretrained] if labels != "exact" else [],
                                             seed=seed, labels=labels)
                generated_seconds = time.perf_counter() - started
                checkpoint = run / f"adapt-{labels}-{share}.pt"
                adapt_options = FineTuneOptions(**{**training, "seed": seed, "synthetic_share": share})
                result = fine_tune(store, checkpoint, options=adapt_options, cache=cache)
            adapted = Segmenter(load_backbone(checkpoint=checkpoint, for_inference=True), cache)
            append({"model": f"adapt {variant}", "seed": seed, "count": count,
                    "generate seconds": generated_seconds, "seconds": time.perf_counter() - started,
                    "train slices": result.train_slices, "synthetic slices": result.synthetic_slices,
                    "labels": summarize(generated), **both(adapted)})
        shutil.rmtree(run)  # checkpoints are 87 MB each, stores hold every sample


def summarize_runs(paths: list[Path]) -> None:
    """Print the markdown tables of one or more runs.jsonl files."""
    rows = [json.loads(line) for path in paths for line in path.read_text().splitlines() if line.strip()]
    scores: dict[tuple[str, str, str], dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    models: list[str] = []
    targets: list[tuple[str, str]] = []
    for row in rows:
        if row["model"] not in models:
            models.append(row["model"])
        if (row["target"], row["environment"]) not in targets:
            targets.append((row["target"], row["environment"]))
        for data in ("environment data", "source data"):
            scores[(row["target"], data, row["model"])]["dice"].append(row[data])
            scores[(row["target"], data, row["model"])]["seed"].append(row["seed"])
    adapts = [m for m in models if m.startswith("adapt")]
    for data in ("environment data", "source data"):
        print(f"\n{data}: Dice over the uncorrected slices, mean +- sd over seeds\n")
        header = ["target", "environment", *models, *[f"gain of {m}" for m in adapts]]
        print("| " + " | ".join(header) + " |\n|" + "---|" * len(header))
        gains: dict[str, list[float]] = defaultdict(list)
        for target, name in targets:
            cells = []
            for model in models:
                values = scores[(target, data, model)]["dice"]
                cells.append("-" if not values else
                             f"{np.mean(values):.3f}" + (f" +- {np.std(values):.3f}" if len(values) > 1 else ""))
            for model in adapts:
                by_seed = dict(zip(scores[(target, data, "finetune")]["seed"], scores[(target, data, "finetune")]["dice"]))
                pairs = [value - by_seed[seed] for seed, value in
                         zip(scores[(target, data, model)]["seed"], scores[(target, data, model)]["dice"]) if seed in by_seed]
                if pairs:
                    gains[model].append(float(np.mean(pairs)))
                cells.append(f"{np.mean(pairs):+.3f} +- {np.std(pairs):.3f}" if pairs else "-")
            print(f"| {target} | {name} | " + " | ".join(cells) + " |")
        for model in adapts:
            print(f"\nmean gain of {model} over the targets ({data}): {np.mean(gains[model]):+.3f}; "
                  f"targets below finetune: {sum(g < 0 for g in gains[model])} of {len(gains[model])}")
    timing = defaultdict(list)
    for row in rows:
        if row["model"].startswith("adapt"):
            timing[row["model"]].append((row["generate seconds"], row["seconds"]))
    for model, values in timing.items():
        generate, total = np.median(np.asarray(values), axis=0)
        print(f"\n{model}: median {generate:.0f} s generating, {total:.0f} s generating + fine-tuning per run")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--targets", default=";".join(DEFAULT_TARGETS), help="';'-separated real targets")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--count", type=int, default=6, help="synthetic samples per adapt run")
    parser.add_argument("--variants", default="exact:0.5",
                        help="';'-separated LABELS:SHARE adapt variants (labels exact, exact+pseudo or pseudo; share "
                             "a number or proportional)")
    parser.add_argument("--finetune-options", type=json.loads, default={},
                        help="FineTuneOptions fields as JSON for both finetune and adapt, e.g. "
                             "'{\"lesion_background_share\": 0.2}'")
    parser.add_argument("--output-dir", type=Path, default=Path("out/adaptation"))
    parser.add_argument("--summarize", type=Path, nargs="+", default=None, help="runs.jsonl files to tabulate")
    args = parser.parse_args()
    if args.summarize:
        summarize_runs(args.summarize)
        return
    run_dir = args.output_dir / f"{time.strftime('run-%Y%m%d-%H%M%S')}-{os.getpid()}"  # parallel runs never share one
    run_dir.mkdir(parents=True)
    wanted = [name.strip() for name in args.targets.split(";") if name.strip()]
    targets = {target.name: target for target in real_targets()}
    cache = EmbeddingCache()
    pretrained = Segmenter(load_backbone(for_inference=True), cache)
    for name in wanted:
        run_target(slab(targets[name]), [int(s) for s in args.seeds.split(",")], args.variants.split(";"), args.count,
                   run_dir, run_dir / "runs.jsonl", cache, pretrained, args.finetune_options)
    summarize_runs([run_dir / "runs.jsonl"])


if __name__ == "__main__":
    main()
