"""Which case to open next: volume ranking over the real lesion cohort, round after round.

The cohort is the five clinical lesions of `MedSegAdaptLib.harness.real_cases` (lung1 and lung2: CT lung
nodules; brain1 and brain2: MR brain tumours; breast1: an MR breast lesion), each segmented for its own
finding (`CohortVolume.structure`). CTChest4 is not a case of it: one normal-dose volume of seven
anatomical structures is not a lesion case a reader would rank.

Round r picks one more case to annotate in full. Every case picked so far gets its whole reference mask as
a whole-volume correction in a fresh store, and the mask decoder is fine-tuned on them from the pretrained
weights (frozen encoder, the `finetune` options but the epochs, the seed). The fine-tuned model then
segments every case from its reference 3D box + REFERENCE_BOX_MARGIN voxels. Round 0 is the pretrained
model. Three numbers per round:

- cohort Dice: the mean over the five cases of what the cohort now holds, the expert's label (Dice 1) on
  the annotated cases and the model's segmentation on the others (what a reader annotating a cohort ends
  up with);
- remaining Dice: the model's mean Dice over the cases not annotated yet;
- model Dice: the model's mean Dice over all five cases, the annotated ones included.

Strategies:

- assft: `suggest_volumes` with the slice ranking's weights (DKD + ASD, diversity 1: the `suggest --volumes`
  default until this benchmark); candidates prompted by their reference box + margin,
  the annotated cases as labeled volumes (box: their reference extent) and, from round 2 on, the previous
  round's fine-tuned model as the adapted model (it segments the candidates; its divergence from the
  pretrained model enters DKD);
- largest uncertainty: the same ranking with ASD alone and no diversity (`VOLUME_RANKING`: weight_dkd 0,
  weight_asd 1, diversity 0), the case whose boundary the current model is least sure of; the
  `suggest --volumes` default since it won here;
- random: one case drawn among those not annotated (one generator per seed, over all rounds).

A seed seeds the random draws, every fine-tuning run and the suggestions' box jitter.

    python benchmarks/evaluate_volume_ranking.py [--rounds 3] [--seeds 0,1,2]
        [--strategies "assft;largest uncertainty;random"] [--epochs 4] [--finetune-options JSON]
        [--output-dir out/volume-ranking]
    python benchmarks/evaluate_volume_ranking.py --summarize out/volume-ranking/run-*/runs.jsonl

Every (strategy, seed, round) result is appended to runs.jsonl as it finishes; --summarize turns one or more
such logs into the learning-curve tables (mean ± sd over seeds) and the picks per round.
"""
from __future__ import annotations

import argparse
import json
import shutil
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from MedSegAdaptLib.core.constants import REFERENCE_BOX_MARGIN
from MedSegAdaptLib.core.errors import InputError
from MedSegAdaptLib.evaluation.metrics import dice
from MedSegAdaptLib.inference import Box3D, EmbeddingCache, Segmenter
from MedSegAdaptLib.models import load_backbone
from MedSegAdaptLib.store import FineTuningStore
from MedSegAdaptLib.suggestions import CohortVolume, ScoringOptions, suggest_volumes
from MedSegAdaptLib.suggestions.options import VOLUME_RANKING

AXIS = 2
STRATEGIES = ("assft", "largest uncertainty", "random")
RANKING_OPTIONS = {"assft": ScoringOptions(), "largest uncertainty": VOLUME_RANKING}
SCORES = ("cohort", "remaining", "model")


def round_scores(model_dice: dict[str, float], annotated: Sequence[str]) -> dict[str, float | None]:
    """{cohort, remaining, model} from {case: the model's Dice} and the annotated cases (see the docstring);
    remaining is None once every case is annotated."""
    rest = [value for case, value in model_dice.items() if case not in annotated]
    return {"cohort": float(np.mean([1.0 if case in annotated else value for case, value in model_dice.items()])),
            "remaining": float(np.mean(rest)) if rest else None,
            "model": float(np.mean(list(model_dice.values())))}


class Cohort:
    """The cohort's fixed parts: targets by name, their reference boxes, the pretrained segmenter and cache."""

    def __init__(self, targets, pretrained_backbone) -> None:
        self.targets = {target.name: target for target in targets}
        self.boxes = {name: Box3D.around(t.reference, REFERENCE_BOX_MARGIN) for name, t in self.targets.items()}
        self.cache = EmbeddingCache()
        self.pretrained = Segmenter(pretrained_backbone, self.cache)
        started = time.perf_counter()
        self.pretrained_dice = self.score(self.pretrained)
        self.pretrained_seconds = time.perf_counter() - started

    def score(self, segmenter: Segmenter) -> dict[str, float]:
        """{case: `segmenter`'s whole-volume Dice from the reference box + margin}."""
        return {name: dice(segmenter.segment(t.volume, t.structure, box=self.boxes[name], modality=t.modality,
                                             axis=AXIS).mask, t.reference)
                for name, t in self.targets.items()}

    def pick(self, strategy: str, annotated: list[str], seed: int, rng: np.random.Generator,
             adapted: Segmenter | None) -> str:
        """The case `strategy` opens next."""
        left = [name for name in self.targets if name not in annotated]
        if strategy == "random":
            return left[int(rng.integers(len(left)))]
        candidates = [CohortVolume(t.volume, self.boxes[name], name, t.modality, t.structure)
                      for name, t in self.targets.items() if name in left]
        labeled = [CohortVolume(self.targets[name].volume, Box3D.around(self.targets[name].reference), name,
                                self.targets[name].modality, self.targets[name].structure) for name in annotated]
        ranking = suggest_volumes(self.pretrained, candidates, "lesion", 1, labeled, adapted_segmenter=adapted,
                                  axis=AXIS, seed=seed, options=RANKING_OPTIONS[strategy])
        if not ranking.suggestions:
            raise InputError(f"no case could be ranked: {'; '.join(ranking.skipped)}")
        return ranking.suggestions[0].case_id

    def fine_tune(self, folder: Path, annotated: list[str], seed: int, training: dict) -> Path:
        """Checkpoint fine-tuned from the pretrained weights on the whole reference masks of `annotated`;
        training: FineTuneOptions fields that differ from the `finetune` defaults."""
        from MedSegAdaptLib.training import FineTuneOptions, fine_tune

        folder.mkdir(parents=True)
        with FineTuningStore.init(folder / "store") as store:
            for name in annotated:
                target = self.targets[name]
                store.add_image(target.volume, name, modality=target.modality)
                store.submit_mask(name, target.structure, target.reference, "reference")
            fine_tune(store, folder / "ft.pt", cache=self.cache, options=FineTuneOptions(**{**training, "seed": seed}))
        return folder / "ft.pt"


def run_strategy(cohort: Cohort, strategy: str, rounds: int, seed: int, run_dir: Path, log,
                 training: dict) -> None:
    """All rounds of one strategy and seed; each record goes to `log` as it finishes. A round's checkpoint is
    deleted once loaded (the loaded model, kept in memory, ranks the next round)."""
    base = {"strategy": strategy, "seed": seed, "finetune": training}
    log({**base, "round": 0, "annotated": [], "picked": None, "dice": cohort.pretrained_dice,
         **round_scores(cohort.pretrained_dice, []), "pick_s": 0.0, "train_s": 0.0,
         "score_s": round(cohort.pretrained_seconds, 2)})
    rng = np.random.default_rng([seed, sum(map(ord, strategy))])
    annotated: list[str] = []
    adapted: Segmenter | None = None
    for round_number in range(1, rounds + 1):
        started = time.perf_counter()
        picked = cohort.pick(strategy, annotated, seed, rng, adapted)
        annotated.append(picked)
        pick_s = time.perf_counter() - started
        folder = run_dir / f"{strategy}-{seed}-r{round_number}".replace(" ", "_")
        started = time.perf_counter()
        checkpoint = cohort.fine_tune(folder, annotated, seed, training)
        train_s = time.perf_counter() - started
        started = time.perf_counter()
        adapted = Segmenter(load_backbone(checkpoint=checkpoint, for_inference=True), cohort.cache)
        shutil.rmtree(folder, ignore_errors=True)
        model_dice = cohort.score(adapted)
        score_s = time.perf_counter() - started
        log({**base, "round": round_number, "annotated": list(annotated), "picked": picked, "dice": model_dice,
             **round_scores(model_dice, annotated), "pick_s": round(pick_s, 2), "train_s": round(train_s, 2),
             "score_s": round(score_s, 2)})


def markdown_tables(runs: list[dict]) -> str:
    """The docs tables from runs.jsonl records: each score per strategy and round (mean ± sd over seeds), the
    cases picked per round (how many seeds picked each), and each case's model Dice per strategy and round."""
    rounds = sorted({run["round"] for run in runs})
    strategies = list(dict.fromkeys(run["strategy"] for run in runs))
    header = " | ".join(f"round {r}" for r in rounds)
    out = []
    for key, title in (("cohort", "Cohort Dice (annotated cases count as their label)"),
                       ("remaining", "Model Dice on the cases not annotated yet"),
                       ("model", "Model Dice on all five cases")):
        lines = [f"{title}, mean ± sd over seeds:", "", f"| strategy | {header} | seeds |",
                 "|---|" + "---|" * (len(rounds) + 1)]
        for strategy in strategies:
            cells, seeds = [], set()
            for r in rounds:
                values = [run[key] for run in runs if run["strategy"] == strategy and run["round"] == r
                          and run[key] is not None]
                seeds.add(len(values))
                cells.append(f"{np.mean(values):.3f} ± {np.std(values):.3f}" if values else "")
            lines.append(f"| {strategy} | " + " | ".join(cells) + f" | {'/'.join(map(str, sorted(seeds)))} |")
        out.append("\n".join(lines))
    picked = [r for r in rounds if r >= 1]
    lines = ["Case opened in each round (seeds that picked it):", "",
             "| strategy | " + " | ".join(f"round {r}" for r in picked) + " |", "|---|" + "---|" * len(picked)]
    for strategy in strategies:
        cells = []
        for r in picked:
            counts = Counter(run["picked"] for run in runs if run["strategy"] == strategy and run["round"] == r)
            cells.append(", ".join(f"{case} ({n})" for case, n in counts.most_common()))
        lines.append(f"| {strategy} | " + " | ".join(cells) + " |")
    out.append("\n".join(lines))
    cases = list(dict.fromkeys(case for run in runs for case in run["dice"]))
    lines = ["Each case's model Dice (mean over seeds; * where the case was annotated by then in every seed):", "",
             "| strategy | round | " + " | ".join(cases) + " |", "|---|---|" + "---|" * len(cases)]
    for strategy in strategies:
        for r in rounds:
            chosen = [run for run in runs if run["strategy"] == strategy and run["round"] == r]
            if not chosen:
                continue
            cells = []
            for case in cases:
                star = " *" if all(case in run["annotated"] for run in chosen) else ""
                cells.append(f"{np.mean([run['dice'][case] for run in chosen]):.3f}{star}")
            lines.append(f"| {strategy} | {r} | " + " | ".join(cells) + " |")
    out.append("\n".join(lines))
    return "\n\n".join(out)


def timing_table(runs: list[dict]) -> str:
    """Mean seconds per round (pick, fine-tune, score) by strategy, rounds 1+."""
    lines = ["| strategy | pick s | fine-tune s | score s | round s |", "|---|---|---|---|---|"]
    for strategy in dict.fromkeys(run["strategy"] for run in runs):
        values = [(run["pick_s"], run["train_s"], run["score_s"]) for run in runs
                  if run["strategy"] == strategy and run["round"] >= 1]
        if values:
            pick, train, score = np.mean(values, axis=0)
            lines.append(f"| {strategy} | {pick:.1f} | {train:.1f} | {score:.1f} | {pick + train + score:.1f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--summarize", nargs="+", type=Path, metavar="RUNS_JSONL",
                        help="print the tables of these runs.jsonl logs instead of running anything")
    parser.add_argument("--timings", action="store_true", help="with --summarize: add the per-round timing table")
    parser.add_argument("--rounds", type=int, default=3, help="cases annotated, one per round (at most 4 of 5)")
    parser.add_argument("--seeds", default="0,1,2", help="seeds of the random picks, the jitter and fine-tuning")
    parser.add_argument("--strategies", default=";".join(STRATEGIES), help="';'-separated")
    parser.add_argument("--epochs", type=int, default=None,
                        help="fine-tuning epochs per round (default: the finetune default, 10)")
    parser.add_argument("--finetune-options", type=json.loads, default={},
                        help="further FineTuneOptions fields as JSON, e.g. '{\"extent_box_share\": 0.3}'")
    parser.add_argument("--output-dir", type=Path, default=Path("out/volume-ranking"))
    args = parser.parse_args()
    if args.summarize:
        runs = [json.loads(line) for path in args.summarize for line in path.read_text().splitlines() if line.strip()]
        print(markdown_tables(runs))
        if args.timings:
            print("\nSeconds per round (mean over seeds and rounds 1+):\n")
            print(timing_table(runs))
        return
    from MedSegAdaptLib.harness.real_cases import real_targets

    strategies = args.strategies.split(";")
    unknown = [s for s in strategies if s not in STRATEGIES]
    if unknown:
        raise SystemExit(f"unknown strategy(ies) {unknown}; expected some of {', '.join(STRATEGIES)}")
    targets = real_targets(ctchest4=False)
    if not 1 <= args.rounds <= len(targets) - 1:
        raise SystemExit(f"--rounds {args.rounds}: expected 1 to {len(targets) - 1} (a ranking needs 2 cases left)")
    seeds = [int(s) for s in args.seeds.split(",")]
    run_dir = args.output_dir / time.strftime("run-%Y%m%d-%H%M%S")
    run_dir.mkdir(parents=True)
    training = {**args.finetune_options, **({} if args.epochs is None else {"epochs": args.epochs})}
    cohort = Cohort(targets, load_backbone(for_inference=True))

    def log(record: dict) -> None:
        print(json.dumps(record), flush=True)
        with open(run_dir / "runs.jsonl", "a") as handle:  # each record at once, in case a long run is cut short
            handle.write(json.dumps(record) + "\n")

    for seed in seeds:  # seeds outermost: a run cut short still has every strategy for its first seeds
        for strategy in strategies:
            run_strategy(cohort, strategy, args.rounds, seed, run_dir, log, training)
    print(markdown_tables([json.loads(line) for line in (run_dir / "runs.jsonl").read_text().splitlines()]))


if __name__ == "__main__":
    main()
