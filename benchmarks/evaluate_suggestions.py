"""Which slices to annotate: suggestions (our ASSFT scoring) against simple strategies, on CTChest4.

For each structure and budget K, each strategy picks K axial slices; their reference masks are
submitted to a fresh store as a partial correction, the mask decoder is fine-tuned on them (frozen
encoder, the `finetune` defaults), and the structure is segmented again from its reference box + 2
voxels. Score: Dice on the slices NOT picked, mean +- sd over the seeds (a seed draws the random
strategies' slices and seeds the fine-tuning). Each run is done twice: supervised on the picked slices
only, and with selective semi-supervision (`finetune --semi-supervised`: confident pseudo-labels of
unpicked slices close to picked ones join training). Strategies:

- suggest: `medsegadapt suggest` with the pretrained model and the reference box (DKD + ASD + diversity);
- entropy only: ranked by foreground/boundary entropy alone (no disagreement, no DKD, no diversity);
- uniform: evenly spaced inside the structure's reference extent (what the demo uses);
- foreground-aware random: random slices that contain the structure (nnActive's strong baseline);
- random: random slices of the 3D box's range (a slice without the structure trains nothing).

    python benchmarks/evaluate_suggestions.py [--structures "thoracic vertebral column"] [--budgets 1,2,3,5]
        [--seeds 0,1,2] [--strategies "suggest;uniform"] [--modes "supervised;semi-supervised"]
        [--output-dir out/suggestions]
    python benchmarks/evaluate_suggestions.py --summarize out/suggestions/run-*/runs.jsonl

Every run is appended to runs.jsonl as it finishes; --summarize turns one or more such logs (e.g. of
runs split over several processes by strategy or structure) into the table.

Held-out Dice scores each strategy on its own slices (the ones it did not pick), so a strategy that
picks the slices where the model is worst also removes them from its score. --rescore RUN_DIR
re-segments with each run's saved checkpoint and adds two scores on the same whole volume for every
strategy: "final" (the prediction with the picked slices replaced by their reference masks, what the
annotator ends up with) and "model" (the fine-tuned model's prediction alone); --metric picks the
score --summarize shows.

    python benchmarks/evaluate_suggestions.py --rescore out/suggestions/run-*
    python benchmarks/evaluate_suggestions.py --summarize out/suggestions/run-*/rescored.jsonl --metric final
"""
from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np

from MedSegAdaptLib.active.scoring import ScoringOptions
from MedSegAdaptLib.active.suggest import suggest_slices
from MedSegAdaptLib.errors import InputError
from MedSegAdaptLib.evaluation.metrics import dice
from MedSegAdaptLib.inference import Box3D, EmbeddingCache, Segmenter
from MedSegAdaptLib.io import read_segmentation, read_volume
from MedSegAdaptLib.io.sample_data import ctchest4_segmentation_path, ctchest4_volume_path
from MedSegAdaptLib.loop_demo import held_out_dice, uniform_slices
from MedSegAdaptLib.models import load_backbone
from MedSegAdaptLib.store import FineTuningStore
from MedSegAdaptLib.train import FineTuneOptions, fine_tune

ENTROPY_ONLY = ScoringOptions(augmentations=0, weight_dkd=0.0, weight_asd=1.0, diversity=0.0, min_gap=0,
                              edge_band=0.0)


def pick(strategy: str, budget: int, seed: int, segmenter: Segmenter, volume, name: str, truth: np.ndarray,
         box: Box3D) -> list[int]:
    """The axial slices `strategy` picks for `budget`."""
    rng = np.random.default_rng(seed)
    if strategy == "suggest":
        return [s.index for s in suggest_slices(segmenter, volume, name, budget, box=box, seed=seed)]
    if strategy == "entropy only":
        return [s.index for s in suggest_slices(segmenter, volume, name, budget, box=box, seed=seed,
                                                options=ENTROPY_ONLY)]
    if strategy == "uniform":
        return uniform_slices(truth, budget)
    if strategy == "foreground-aware random":
        present = np.flatnonzero(truth.any(axis=(0, 1)))
        return sorted(int(k) for k in rng.choice(present, budget, replace=False))
    lo, hi = box.slice_range(2)
    return sorted(int(k) for k in rng.choice(np.arange(lo, hi + 1), budget, replace=False))


def fine_tuned_dice(folder: Path, volume, name: str, truth: np.ndarray, box: Box3D, slices: list[int],
                    before: np.ndarray, cache: EmbeddingCache, seed: int, modes: list[str]) -> dict[str, float]:
    """Held-out Dice after fine-tuning on `slices`, per mode (the pretrained result when they hold no
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
            return {mode: held_out_dice(before, truth, slices) for mode in modes}
    scores = {}
    for mode in modes:
        tuned = Segmenter(load_backbone(checkpoint=checkpoints[mode], for_inference=True), cache)
        scores[mode] = held_out_dice(tuned.segment(volume, name, box=box).mask, truth, slices)
    return scores


def run_folder(run_dir: Path, structure: str, strategy: str, budget: int, seed: int) -> Path:
    """Where one fine-tuning run keeps its store and checkpoints."""
    return run_dir / f"{structure}-{strategy}-{budget}-{seed}".replace(" ", "_")


def checkpoint_of(run_dir: Path, run: dict) -> Path | None:
    """The checkpoint a runs.jsonl record was scored with (None: nothing trained, the pretrained model)."""
    folder = run_folder(run_dir, run["structure"], run["strategy"], run["K"], run["seed"])
    separate = folder / "supervised.pt"
    path = separate if run["mode"] == "supervised" and separate.exists() else folder / "ft.pt"
    return path if path.exists() else None


def rescore(run_dir: Path) -> None:
    """Write run_dir/rescored.jsonl: each record of runs.jsonl with 'final' and 'model' whole-volume Dice."""
    volume = read_volume(ctchest4_volume_path())
    reference = read_segmentation(ctchest4_segmentation_path())
    cache = EmbeddingCache()
    predictions: dict[tuple, np.ndarray] = {}
    with open(run_dir / "rescored.jsonl", "w") as out:
        for line in (run_dir / "runs.jsonl").read_text().splitlines():
            run = json.loads(line)
            truth = reference.get(run["structure"]).mask
            checkpoint = checkpoint_of(run_dir, run)
            key = (run["structure"], checkpoint)
            if key not in predictions:
                segmenter = Segmenter(load_backbone(checkpoint=checkpoint, for_inference=True), cache)
                predictions[key] = segmenter.segment(volume, run["structure"], box=Box3D.around(truth, 2)).mask
            final = predictions[key].copy()
            final[:, :, run["slices"]] = truth[:, :, run["slices"]]
            out.write(json.dumps({**run, "model": dice(predictions[key], truth), "final": dice(final, truth)}) + "\n")
            out.flush()


def markdown_table(runs: list[dict], metric: str = "dice") -> str:
    """The README table: `metric` mean ± sd over seeds per structure, strategy, mode and budget, from runs.jsonl
    (or rescored.jsonl) records."""
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
                        help="score --summarize shows: held-out dice (default), or final / model from --rescore")
    parser.add_argument("--rescore", nargs="+", type=Path, metavar="RUN_DIR",
                        help="add whole-volume scores of these runs' checkpoints (rescored.jsonl) and exit")
    parser.add_argument("--structures", default="thoracic vertebral column", help="';'-separated")
    parser.add_argument("--budgets", default="1,2,3,5")
    parser.add_argument("--seeds", default="0,1,2,3,4", help="seeds of the random picks and of fine-tuning")
    parser.add_argument("--strategies", default="suggest;entropy only;uniform;foreground-aware random;random")
    parser.add_argument("--modes", default="supervised;semi-supervised")
    parser.add_argument("--output-dir", type=Path, default=Path("out/suggestions"))
    args = parser.parse_args()
    if args.summarize:
        print(markdown_table([json.loads(line) for path in args.summarize for line in path.read_text().splitlines()
                              if line.strip()], args.metric))
        return
    if args.rescore:
        for run_dir in args.rescore:
            rescore(run_dir)
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
        box = Box3D.around(truth, 2)
        before = pretrained.segment(volume, name, box=box).mask
        for strategy in args.strategies.split(";"):
            for budget in budgets:
                for seed in seeds:
                    slices = pick(strategy, budget, seed, pretrained, volume, name, truth, box)
                    folder = run_folder(run_dir, name, strategy, budget, seed)
                    for mode, score in fine_tuned_dice(folder, volume, name, truth, box, slices, before, cache, seed,
                                                       modes).items():
                        runs.append({"structure": name, "strategy": strategy, "mode": mode, "K": budget,
                                     "seed": seed, "slices": slices, "dice": score})
                        print(json.dumps(runs[-1]), flush=True)
                        with open(run_dir / "runs.jsonl", "a") as log:  # each run, in case a long run is cut short
                            log.write(json.dumps(runs[-1]) + "\n")
    print(markdown_table(runs))

if __name__ == "__main__":
    main()
