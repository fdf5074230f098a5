"""Rounds of suggestions over the real cohort: which slices to annotate, round after round.

For each target (a case and structure of `MedSegAdaptLib.harness.real_cases`: CTChest4's seven structures
and the five clinical lesions), budget K and seed, each strategy runs R rounds. Round r picks K new axial
slices; all slices picked so far get their reference masks, submitted as one partial correction to a
fresh store, and the mask decoder is fine-tuned on them from the pretrained weights (frozen encoder, the
`finetune` defaults, the seed). The fine-tuned model then segments the whole volume from the reference
3D box + REFERENCE_BOX_MARGIN voxels, and its Dice against the reference is the round's score, recorded
with the slices annotated so far and the reference foreground voxels on them (nnActive's foreground
efficiency: what the annotator actually had to draw). Round 0 is the pretrained model. Strategies:

- assft: `suggest_slices` (the `suggest` defaults, coverage first) with the reference box, the slices
  picked so far as annotated and, from round 2 on, the previous round's fine-tuned model as the adapted
  model, so that its prediction gives the candidates and DKD's divergence term takes part;
- assft window W: the same with `coverage_window` W from round 2 on (the scores may move a pick up to W
  times the targets' spacing, so the model's own errors decide more), round 1 as assft;
- uniform: each round's K slices fill the widest gaps left among the slices picked so far inside the
  reference extent (round 1: `uniform_slices`' positions; an oracle, it reads the reference);
- foreground-aware random: K new slices drawn among those that hold the structure (nnActive's strong
  baseline);
- random: K new slices drawn from the 3D box's slice range.

A seed draws the random strategies' slices (one generator per target, strategy and seed, over all
rounds) and seeds every fine-tuning run and the suggestions' box jitter. When fewer than K unpicked
slices remain where a strategy picks, it takes what is left (small lesions span 3 slices). Picks that
hold no foreground train nothing; a round whose picks so far hold none keeps the pretrained model.

    python benchmarks/evaluate_rounds.py [--targets "CTChest4 left lung;lung1"] [--budgets 2] [--rounds 3]
        [--seeds 0,1,2] [--strategies "assft;uniform;foreground-aware random;random"] [--epochs 4]
        [--finetune-options '{"extent_box_share": 0.3}'] [--output-dir out/rounds]
    python benchmarks/evaluate_rounds.py --summarize out/rounds/run-*/runs.jsonl

Every (target, K, strategy, seed, round) result is appended to runs.jsonl as it finishes; --summarize turns
one or more such logs into the learning-curve tables (model Dice and annotated foreground voxels per round,
mean ± sd over seeds) and the ASSFT-against-uniform comparison. Checkpoints (87 MB each) are deleted once
they have been scored and, for assft, used for the next round's suggestions.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from MedSegAdaptLib.core.constants import REFERENCE_BOX_MARGIN
from MedSegAdaptLib.core.errors import InputError
from MedSegAdaptLib.evaluation.metrics import dice
from MedSegAdaptLib.inference import Box3D, EmbeddingCache, Segmenter
from MedSegAdaptLib.models import load_backbone
from MedSegAdaptLib.store import FineTuningStore
from MedSegAdaptLib.suggestions.options import ScoringOptions
from MedSegAdaptLib.suggestions.scoring import coverage_targets
from MedSegAdaptLib.suggestions.slices import suggest_slices

AXIS = 2
STRATEGIES = ("assft", "uniform", "foreground-aware random", "random")
WINDOW_PREFIX = "assft window "


def annotated_foreground(truth: np.ndarray, slices: Iterable[int], axis: int = AXIS) -> int:
    """Reference foreground voxels on `slices` along `axis` (each slice counted once): what was drawn."""
    chosen = sorted({int(s) for s in slices})
    return int(np.take(truth, chosen, axis=axis).sum()) if chosen else 0


def uniform_round(truth: np.ndarray, picked: Sequence[int], budget: int, axis: int = AXIS) -> list[int]:
    """`budget` new slices filling the widest gaps among `picked` inside the reference extent along `axis`:
    each coverage target's nearest unpicked slice of the extent (ties to the lower); fewer when the extent
    has fewer unpicked slices."""
    present = np.flatnonzero(truth.any(axis=tuple(a for a in range(truth.ndim) if a != axis)))
    lo, hi = int(present[0]), int(present[-1])
    taken = {int(s) for s in picked}
    new: list[int] = []
    for target in coverage_targets((lo, hi), sorted(taken), budget):
        free = [k for k in range(lo, hi + 1) if k not in taken]
        if not free:
            break
        choice = min(free, key=lambda k: (abs(k - target.position), k))
        new.append(choice)
        taken.add(choice)
    return sorted(new)


def random_round(pool: Iterable[int], picked: Sequence[int], budget: int, rng: np.random.Generator) -> list[int]:
    """Up to `budget` slices drawn without replacement from `pool` less `picked`."""
    free = sorted({int(k) for k in pool} - {int(s) for s in picked})
    if not free:
        return []
    return sorted(int(k) for k in rng.choice(free, min(budget, len(free)), replace=False))


def scoring_options(strategy: str, round_number: int) -> ScoringOptions:
    """The ScoringOptions of an assft strategy in round `round_number` (1-based)."""
    if strategy.startswith(WINDOW_PREFIX) and round_number > 1:
        return ScoringOptions(coverage_window=float(strategy[len(WINDOW_PREFIX):]))
    return ScoringOptions()


def check_strategy(strategy: str) -> str:
    """`strategy` when it is known; ValueError naming the known ones otherwise."""
    if strategy in STRATEGIES:
        return strategy
    if strategy.startswith(WINDOW_PREFIX):
        try:
            float(strategy[len(WINDOW_PREFIX):])
            return strategy
        except ValueError:
            pass
    raise ValueError(f"unknown strategy {strategy!r}; expected one of {', '.join(STRATEGIES)} or "
                     f"'{WINDOW_PREFIX}W' (W a number)")


class TargetRun:
    """One target's fixed parts: volume, reference, box, the pretrained segmenter and a shared cache."""

    def __init__(self, target, pretrained_backbone, cache: EmbeddingCache) -> None:
        self.target = target
        self.truth = target.reference
        self.box = Box3D.around(self.truth, REFERENCE_BOX_MARGIN)
        self.cache = cache
        self.pretrained = Segmenter(pretrained_backbone, cache)
        started = time.perf_counter()
        self.pretrained_dice = dice(self.segment(self.pretrained), self.truth)
        self.pretrained_seconds = time.perf_counter() - started

    def segment(self, segmenter: Segmenter) -> np.ndarray:
        """`segmenter`'s whole-volume prediction from the reference box."""
        return segmenter.segment(self.target.volume, self.target.structure, box=self.box,
                                 modality=self.target.modality, axis=AXIS).mask

    def pick(self, strategy: str, round_number: int, picked: list[int], budget: int, seed: int,
             rng: np.random.Generator, adapted: Segmenter | None) -> list[int]:
        """The new slices `strategy` picks in round `round_number` (1-based)."""
        if strategy == "uniform":
            return uniform_round(self.truth, picked, budget)
        if strategy == "foreground-aware random":
            return random_round(np.flatnonzero(self.truth.any(axis=(0, 1))), picked, budget, rng)
        if strategy == "random":
            lo, hi = self.box.slice_range(AXIS)
            return random_round(range(lo, hi + 1), picked, budget, rng)
        suggestions = suggest_slices(self.pretrained, self.target.volume, self.target.structure, budget,
                                     box=self.box, annotated=picked, adapted_segmenter=adapted, axis=AXIS, seed=seed,
                                     modality=self.target.modality, options=scoring_options(strategy, round_number))
        return sorted(s.index for s in suggestions)

    def fine_tune(self, folder: Path, slices: list[int], seed: int, training: dict | None = None) -> Path | None:
        """Checkpoint fine-tuned from the pretrained weights on the reference masks of `slices` (None when they
        hold no foreground, so there is nothing to learn from); training: FineTuneOptions fields that differ
        from the `finetune` defaults (epochs, ...)."""
        from MedSegAdaptLib.training import FineTuneOptions, fine_tune

        if annotated_foreground(self.truth, slices) == 0:
            return None
        folder.mkdir(parents=True)
        with FineTuningStore.init(folder / "store") as store:
            store.add_image(self.target.volume, "case", modality=self.target.modality)
            store.submit_mask("case", self.target.structure, self.truth, "reference", annotated_slices={"k": slices})
            try:
                options = FineTuneOptions(**{**(training or {}), "seed": seed})
                fine_tune(store, folder / "ft.pt", cache=self.cache, options=options)
            except InputError:
                return None
        return folder / "ft.pt"


def run_strategy(run: TargetRun, strategy: str, budget: int, rounds: int, seed: int, run_dir: Path,
                 log, training: dict | None = None) -> None:
    """All rounds of one strategy and seed on one target; each record goes to `log` as it finishes. Each
    round's checkpoint is deleted as soon as it is loaded and scored (the loaded model, kept in memory,
    makes the next round's assft suggestions)."""
    name = run.target.name
    base = {"target": name, "modality": run.target.modality, "K": budget, "strategy": strategy, "seed": seed,
            "epochs": (training or {}).get("epochs"), "finetune": training or {}}
    log({**base, "round": 0, "slices": [], "new": [], "annotated_slices": 0, "foreground_voxels": 0,
         "model": run.pretrained_dice, "pick_s": 0.0, "train_s": 0.0, "score_s": round(run.pretrained_seconds, 2)})
    rng = np.random.default_rng([seed, sum(map(ord, name)), sum(map(ord, strategy))])
    picked: list[int] = []
    adapted: Segmenter | None = None
    model = run.pretrained_dice
    for round_number in range(1, rounds + 1):
        started = time.perf_counter()
        new = run.pick(strategy, round_number, picked, budget, seed, rng, adapted)
        picked = sorted(set(picked) | set(new))
        pick_s = time.perf_counter() - started
        train_s = score_s = 0.0
        if new:  # otherwise nothing is left to pick: the model and its score stay as they were
            folder = run_dir / f"{name}-{strategy}-{budget}-{seed}-r{round_number}".replace(" ", "_")
            started = time.perf_counter()
            checkpoint = run.fine_tune(folder, picked, seed, training)
            train_s = time.perf_counter() - started
            started = time.perf_counter()
            if checkpoint is None:
                adapted, model = None, run.pretrained_dice
            else:
                adapted = Segmenter(load_backbone(checkpoint=checkpoint, for_inference=True), run.cache)
                model = dice(run.segment(adapted), run.truth)
            score_s = time.perf_counter() - started
            shutil.rmtree(folder, ignore_errors=True)
        log({**base, "round": round_number, "slices": picked, "new": new, "annotated_slices": len(picked),
             "foreground_voxels": annotated_foreground(run.truth, picked), "model": model,
             "pick_s": round(pick_s, 2), "train_s": round(train_s, 2), "score_s": round(score_s, 2)})


def _mean_sd(values: Sequence[float], digits: int = 3) -> str:
    return f"{np.mean(values):.{digits}f} ± {np.std(values):.{digits}f}"


def strategy_label(run: dict) -> str:
    """The run's strategy, followed by the fine-tuning fields it changed besides the epochs ('uniform
    extent_box_share=0.3'): a variant is tabled apart from its strategy."""
    changed = {k: v for k, v in run.get("finetune", {}).items() if k != "epochs"}
    return " ".join([run["strategy"], *(f"{k}={v}" for k, v in sorted(changed.items()))])


def _cells(runs: list[dict], key: str) -> dict[tuple, dict[int, list[float]]]:
    """{(target, K, strategy): {round: [value per seed]}}, targets and strategies in first-seen order."""
    cells: dict[tuple, dict[int, list[float]]] = {}
    for run in runs:
        cells.setdefault((run["target"], run["K"], strategy_label(run)), {}).setdefault(run["round"], []).append(run[key])
    return cells


def markdown_tables(runs: list[dict]) -> str:
    """The docs tables from runs.jsonl records: model Dice per round, annotated foreground voxels per round
    (both mean ± sd over seeds), the mean over targets per round, and assft minus uniform per target in
    rounds 2+ against the larger of the two seeds' sds."""
    rounds = sorted({run["round"] for run in runs})
    header = " | ".join(f"round {r}" for r in rounds)
    out = []
    for key, title, digits in (("model", "Whole-volume model Dice", 3),
                               ("annotated_slices", "Annotated slices so far", 1),
                               ("foreground_voxels", "Annotated foreground voxels so far", 0)):
        cells = _cells(runs, key)
        lines = [f"{title} (mean ± sd over seeds):", "",
                 f"| target | K | strategy | {header} | seeds |", "|---|---|---|" + "---|" * (len(rounds) + 1)]
        for (target, budget, strategy), by_round in cells.items():
            row = [_mean_sd(by_round[r], digits) if r in by_round else "" for r in rounds]
            seeds = "/".join(map(str, sorted({len(v) for v in by_round.values()})))
            lines.append(f"| {target} | {budget} | {strategy} | " + " | ".join(row) + f" | {seeds} |")
        out.append("\n".join(lines))
    cells = _cells(runs, "model")
    strategies = list(dict.fromkeys(strategy_label(run) for run in runs))
    budgets = sorted({run["K"] for run in runs})
    targets = list(dict.fromkeys(run["target"] for run in runs))
    lines = [("Mean model Dice over the targets that every strategy ran through every round (each target's seed "
             "mean, then the mean over targets):"), "",
             f"| K | strategy | {header} | targets |", "|---|---|" + "---|" * (len(rounds) + 1)]
    for budget in budgets:
        complete = [t for t in targets if all(set(rounds) <= set(cells.get((t, budget, s), {})) for s in strategies)]
        for strategy in strategies:
            row = [f"{np.mean([np.mean(cells[(t, budget, strategy)][r]) for t in complete]):.3f}" if complete else ""
                   for r in rounds]
            lines.append(f"| {budget} | {strategy} | " + " | ".join(row) + f" | {len(complete)} |")
    out.append("\n".join(lines))
    later = [r for r in rounds if r >= 2]
    for strategy in [s for s in strategies if s.startswith("assft")]:
        if "uniform" not in strategies or not later:
            break
        lines = [(f"{strategy} minus uniform, model Dice (difference of seed means; sd: the larger of the two "
                 "seeds' sds; * where the difference exceeds it):"), "",
                 "| target | K | " + " | ".join(f"round {r}" for r in later) + " |", "|---|---|" + "---|" * len(later)]
        for budget in budgets:
            for target in targets:
                ours, theirs = cells.get((target, budget, strategy)), cells.get((target, budget, "uniform"))
                if not ours or not theirs:
                    continue
                row = []
                for r in later:
                    if r not in ours or r not in theirs:
                        row.append("")
                        continue
                    difference = np.mean(ours[r]) - np.mean(theirs[r])
                    spread = max(np.std(ours[r]), np.std(theirs[r]))
                    row.append(f"{difference:+.3f} (sd {spread:.3f}){' *' if abs(difference) > spread else ''}")
                lines.append(f"| {target} | {budget} | " + " | ".join(row) + " |")
        out.append("\n".join(lines))
    return "\n\n".join(out)


def timing_table(runs: list[dict]) -> str:
    """Mean seconds per round (pick, fine-tune, score) by target and strategy, rounds 1+."""
    cells: dict[tuple, list[tuple[float, float, float]]] = {}
    for run in runs:
        if run["round"] >= 1:
            cells.setdefault((run["target"], run["K"], strategy_label(run)), []).append(
                (run["pick_s"], run["train_s"], run["score_s"]))
    lines = ["| target | K | strategy | pick s | fine-tune s | score s | round s |", "|---|---|---|---|---|---|---|"]
    for (target, budget, strategy), values in cells.items():
        pick, train, score = np.mean(values, axis=0)
        lines.append(f"| {target} | {budget} | {strategy} | {pick:.1f} | {train:.1f} | {score:.1f} | "
                     f"{pick + train + score:.1f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--summarize", nargs="+", type=Path, metavar="RUNS_JSONL",
                        help="print the tables of these runs.jsonl logs instead of running anything")
    parser.add_argument("--timings", action="store_true", help="with --summarize: add the per-round timing table")
    parser.add_argument("--targets", default=None,
                        help="';'-separated target names ('CTChest4 left lung', 'lung1', ...); default: all 12")
    parser.add_argument("--budgets", default="1,2,3", help="slices per round, ','-separated")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seeds", default="0,1,2,3,4", help="seeds of the random picks, the jitter and fine-tuning")
    parser.add_argument("--strategies", default=";".join(STRATEGIES), help="';'-separated")
    parser.add_argument("--epochs", type=int, default=None,
                        help="fine-tuning epochs per round (default: the finetune default, 10)")
    parser.add_argument("--finetune-options", type=json.loads, default={},
                        help="FineTuneOptions fields as JSON, e.g. '{\"extent_box_share\": 0.3}'; a run with them "
                             "is tabled as '<strategy> <field>=<value>' (a variant of its strategy)")
    parser.add_argument("--output-dir", type=Path, default=Path("out/rounds"))
    args = parser.parse_args()
    if args.summarize:
        runs = [json.loads(line) for path in args.summarize for line in path.read_text().splitlines() if line.strip()]
        print(markdown_tables(runs))
        if args.timings:
            print("\nSeconds per round (mean over seeds and rounds 1+):\n")
            print(timing_table(runs))
        return
    from MedSegAdaptLib.harness.real_cases import real_targets

    strategies = [check_strategy(s) for s in args.strategies.split(";")]
    budgets = [int(b) for b in args.budgets.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    targets = real_targets()
    if args.targets is not None:
        wanted = args.targets.split(";")
        known = {t.name: t for t in targets}
        unknown = [w for w in wanted if w not in known]
        if unknown:
            raise SystemExit(f"unknown target(s) {unknown}; expected some of {', '.join(known)}")
        targets = [known[w] for w in wanted]
    training = {**args.finetune_options, **({} if args.epochs is None else {"epochs": args.epochs})}
    run_dir = args.output_dir / f"{time.strftime('run-%Y%m%d-%H%M%S')}-{os.getpid()}"  # parallel runs never share one
    run_dir.mkdir(parents=True)
    backbone = load_backbone(for_inference=True)

    def log(record: dict) -> None:
        print(json.dumps(record), flush=True)
        with open(run_dir / "runs.jsonl", "a") as handle:  # each record at once, in case a long run is cut short
            handle.write(json.dumps(record) + "\n")

    runs: dict[str, TargetRun] = {}
    for seed in seeds:  # seeds outermost: a run cut short still has every target and strategy for its first seeds
        for target in targets:
            if target.name not in runs:
                runs[target.name] = TargetRun(target, backbone, EmbeddingCache())
            for budget in budgets:
                for strategy in strategies:
                    run_strategy(runs[target.name], strategy, budget, args.rounds, seed, run_dir, log, training)
    print(markdown_tables([json.loads(line) for line in (run_dir / "runs.jsonl").read_text().splitlines()]))


if __name__ == "__main__":
    main()
