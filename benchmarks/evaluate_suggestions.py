"""Which slices to annotate: suggestions (our ASSFT scoring) against simple strategies, on CTChest4.

For each structure and budget K, each strategy picks K axial slices; their reference masks are
submitted to a fresh store as a partial correction, the mask decoder is fine-tuned on them (frozen
encoder, the `finetune` defaults), and the structure is segmented again from its reference box + 2
voxels. Score: Dice on the slices NOT picked, mean +- sd over the seeds (a seed draws the random
strategies' slices and seeds the fine-tuning). Each run is done twice: supervised on the picked slices
only, and with selective semi-supervision (`finetune --semi-supervised`: confident pseudo-labels of
unpicked slices close to picked ones join training). Strategies:

- suggest: `medsegadapt suggest` with the pretrained model and the reference box (picks at evenly spaced
  targets over the box's slices, DKD + ASD + presence breaking ties between two slices);
- window 0.25: the same, each pick the best score within a quarter of the targets' spacing;
- rank for correction: `suggest --rank-for correction` (greedy by score, no presence weighting), meant
  for the annotator's final result rather than for training;
- entropy only: ranked by foreground/boundary entropy alone (no disagreement, no DKD, no coverage or diversity);
- uniform: evenly spaced inside the structure's reference extent (an oracle: it reads the reference mask);
- foreground-aware random: random slices that contain the structure (nnActive's strong baseline);
- random: random slices of the 3D box's range (a slice without the structure trains nothing).

    python benchmarks/evaluate_suggestions.py [--structures "thoracic vertebral column"] [--budgets 1,2,3,5]
        [--seeds 0,1,2] [--strategies "suggest;uniform"] [--modes "supervised;semi-supervised"]
        [--output-dir out/suggestions] [--keep-checkpoints]
    python benchmarks/evaluate_suggestions.py --summarize out/suggestions/run-*/runs.jsonl [--metric model]

Every run is appended to runs.jsonl as it finishes; --summarize turns one or more such logs (e.g. of
runs split over several processes by strategy or structure) into the table.

Three scores per run. "dice" is held-out Dice, on the slices the strategy did not pick, so a strategy that
picks the slices where the model is worst also removes them from its score. "model" (the fine-tuned
model's prediction alone) and "final" (that prediction with the picked slices replaced by their reference
masks, what the annotator ends up with) are Dice on the whole volume, the same for every strategy;
--metric picks the score --summarize shows. Checkpoints (87 MB each) are deleted once scored unless
--keep-checkpoints.
"""
from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np

from MedSegAdaptLib.core.constants import REFERENCE_BOX_MARGIN
from MedSegAdaptLib.core.errors import InputError
from MedSegAdaptLib.demos.feedback_loop import held_out_dice, uniform_slices
from MedSegAdaptLib.evaluation.metrics import dice
from MedSegAdaptLib.inference import Box3D, EmbeddingCache, Segmenter
from MedSegAdaptLib.io import read_segmentation, read_volume
from MedSegAdaptLib.io.sample_data import (
    ctchest4_segmentation_path,
    ctchest4_volume_path,
)
from MedSegAdaptLib.models import load_backbone
from MedSegAdaptLib.store import FineTuningStore
from MedSegAdaptLib.suggestions.options import RANKING_PURPOSES, ScoringOptions
from MedSegAdaptLib.suggestions.slices import suggest_slices
from MedSegAdaptLib.training import FineTuneOptions, fine_tune

SCORED_STRATEGIES: dict[str, ScoringOptions] = {
    "suggest": ScoringOptions(),
    "window 0.25": ScoringOptions(coverage_window=0.25),
    "rank for correction": RANKING_PURPOSES["correction"],
    "entropy only": ScoringOptions(augmentations=0, weight_dkd=0.0, weight_asd=1.0, diversity=0.0, min_gap=0,
                                   edge_band=0.0, coverage_window=None),
}
"""The strategies that pick with `suggest_slices`, and its options for each."""


def pick(strategy: str, budget: int, seed: int, segmenter: Segmenter, volume, name: str, truth: np.ndarray,
         box: Box3D) -> list[int]:
    """The axial slices `strategy` picks for `budget`."""
    rng = np.random.default_rng(seed)
    if strategy in SCORED_STRATEGIES:
        return [s.index for s in suggest_slices(segmenter, volume, name, budget, box=box, seed=seed,
                                                options=SCORED_STRATEGIES[strategy])]
    if strategy == "uniform":
        return uniform_slices(truth, budget)
    if strategy == "foreground-aware random":
        present = np.flatnonzero(truth.any(axis=(0, 1)))
        return sorted(int(k) for k in rng.choice(present, budget, replace=False))
    if strategy != "random":
        raise ValueError(f"unknown strategy {strategy!r}; expected one of {', '.join(SCORED_STRATEGIES)}, uniform, "
                         "foreground-aware random, random")
    lo, hi = box.slice_range(2)
    return sorted(int(k) for k in rng.choice(np.arange(lo, hi + 1), budget, replace=False))


def scores(prediction: np.ndarray, truth: np.ndarray, slices: list[int]) -> dict[str, float]:
    """The three scores of one run (module docstring): held-out 'dice', whole-volume 'model' and 'final'."""
    final = prediction.copy()
    final[:, :, slices] = truth[:, :, slices]
    return {"dice": held_out_dice(prediction, truth, slices), "model": dice(prediction, truth),
            "final": dice(final, truth)}


def fine_tuned_scores(folder: Path, volume, name: str, truth: np.ndarray, box: Box3D, slices: list[int],
                      before: np.ndarray, cache: EmbeddingCache, seed: int, modes: list[str],
                      keep_checkpoints: bool) -> dict[str, dict[str, float]]:
    """{mode: scores} after fine-tuning on `slices` (the pretrained prediction `before` when they hold no
    foreground). With both modes, one semi-supervised run gives both: its first stage is the supervised
    run (same seed, same batches), whose checkpoint is copied as that stage ends; these budgets are
    below `min_slices_for_validation`, so the last epoch is the one a supervised run keeps."""
    if len(slices) >= FineTuneOptions().min_slices_for_validation:
        raise ValueError(f"{len(slices)} slices get a validation split, so stage one's last epoch is not what a "
                         "supervised run keeps; run the modes separately for budgets this large")
    folder.mkdir(parents=True)
    both = {"supervised", "semi-supervised"} <= set(modes)
    checkpoints = {"semi-supervised": folder / "ft.pt",
                   "supervised": folder / "supervised.pt" if both else folder / "ft.pt"}

    def keep_supervised(record: dict) -> None:
        if both and record["stage"] == "supervised":
            shutil.copyfile(folder / "ft.pt", checkpoints["supervised"])

    with FineTuningStore.init(folder / "store") as store:
        store.add_image(volume, "CTChest4", modality="ct")
        store.submit_mask("CTChest4", name, truth, "reference", annotated_slices={"k": slices})
        try:
            fine_tune(store, folder / "ft.pt", cache=cache, on_epoch=keep_supervised,
                      options=FineTuneOptions(seed=seed, semi_supervised="semi-supervised" in modes))
        except InputError:  # only empty slices picked: nothing to learn from
            return {mode: scores(before, truth, slices) for mode in modes}
    results = {}
    for mode in modes:
        tuned = Segmenter(load_backbone(checkpoint=checkpoints[mode], for_inference=True), cache)
        results[mode] = scores(tuned.segment(volume, name, box=box).mask, truth, slices)
    if not keep_checkpoints:
        for checkpoint in set(checkpoints.values()):
            checkpoint.unlink()
    return results


def run_folder(run_dir: Path, structure: str, strategy: str, budget: int, seed: int) -> Path:
    """Where one fine-tuning run keeps its store and checkpoints."""
    return run_dir / f"{structure}-{strategy}-{budget}-{seed}".replace(" ", "_")


def markdown_table(runs: list[dict], metric: str = "dice") -> str:
    """The docs/suggestions.md table: `metric` mean ± sd over seeds per structure, strategy, mode and budget, from runs.jsonl
    (or the rescored.jsonl of runs made before whole-volume scores were written with each run) records."""
    budgets = sorted({run["K"] for run in runs})
    cells: dict[tuple[str, str, str], dict[int, list[float]]] = {}
    for run in runs:
        cells.setdefault((run["structure"], run["strategy"], run["mode"]), {}).setdefault(run["K"], []).append(run[metric])
    lines = ["| structure | strategy | fine-tuning | " + " | ".join(f"K={b}" for b in budgets) + " | seeds |",
             "|---|---|---|" + "---|" * (len(budgets) + 1)]
    for (structure, strategy, mode), by_budget in cells.items():
        row = [f"{np.mean(by_budget[b]):.3f} ± {np.std(by_budget[b]):.3f}" if b in by_budget else "" for b in budgets]
        seeds = sorted({len(values) for values in by_budget.values()})
        lines.append(f"| {structure} | {strategy} | {mode} | " + " | ".join(row) + f" | {'/'.join(map(str, seeds))} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--summarize", nargs="+", type=Path, metavar="RUNS_JSONL",
                        help="print the table of these runs.jsonl logs instead of running anything")
    parser.add_argument("--metric", default="dice", choices=["dice", "final", "model"],
                        help="score --summarize shows: held-out dice (default), or whole-volume final / model")
    parser.add_argument("--keep-checkpoints", action="store_true", help="keep each run's fine-tuned checkpoints")
    parser.add_argument("--structures", default="thoracic vertebral column", help="';'-separated")
    parser.add_argument("--budgets", default="1,2,3,5")
    parser.add_argument("--seeds", default="0,1,2,3,4", help="seeds of the random picks and of fine-tuning")
    parser.add_argument("--strategies", default="suggest;window 0.25;rank for correction;entropy only;uniform;"
                                                "foreground-aware random;random")
    parser.add_argument("--modes", default="supervised;semi-supervised")
    parser.add_argument("--output-dir", type=Path, default=Path("out/suggestions"))
    args = parser.parse_args()
    if args.summarize:
        print(markdown_table([json.loads(line) for path in args.summarize for line in path.read_text().splitlines()
                              if line.strip()], args.metric))
        return
    run_dir = args.output_dir / time.strftime("run-%Y%m%d-%H%M%S")
    run_dir.mkdir(parents=True)
    volume = read_volume(ctchest4_volume_path())
    reference = read_segmentation(ctchest4_segmentation_path())
    cache = EmbeddingCache()
    pretrained = Segmenter(load_backbone(for_inference=True), cache)
    budgets = [int(b) for b in args.budgets.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    modes = args.modes.split(";")
    runs = []
    for name in args.structures.split(";"):
        truth = reference.get(name).mask
        box = Box3D.around(truth, REFERENCE_BOX_MARGIN)
        before = pretrained.segment(volume, name, box=box).mask
        for strategy in args.strategies.split(";"):
            for budget in budgets:
                for seed in seeds:
                    slices = pick(strategy, budget, seed, pretrained, volume, name, truth, box)
                    folder = run_folder(run_dir, name, strategy, budget, seed)
                    for mode, result in fine_tuned_scores(folder, volume, name, truth, box, slices, before, cache,
                                                          seed, modes, args.keep_checkpoints).items():
                        runs.append({"structure": name, "strategy": strategy, "mode": mode, "K": budget,
                                     "seed": seed, "slices": slices, **result})
                        print(json.dumps(runs[-1]), flush=True)
                        with open(run_dir / "runs.jsonl", "a") as log:  # each run, in case a long run is cut short
                            log.write(json.dumps(runs[-1]) + "\n")
    print(markdown_table(runs))

if __name__ == "__main__":
    main()
