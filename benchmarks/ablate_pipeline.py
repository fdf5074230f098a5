"""Accuracy of pipeline choices on every real target: the default against one change at a time.

Targets: CTChest4's structures and the five clinical lesions (`make cases`); one 3D box from the
reference extent + 2 voxels, Dice per target. Each variant changes one thing: the classic lung
window, a stopping rule off or changed (for every structure, or for lesions only), the lesion
preset's margin, component rule or second prompt (the 3D box's rectangle), a bone window, no knowledge-base intensity cut, bf16 encoder
autocast. Slice embeddings are
cached in memory across the variants that share a preprocessing.

--fine-tuned SEEDS asks how the propagation variants (those that keep the windows) behave with the
models users get after correcting: per target and seed, the mask decoder fine-tuned with the
`finetune` defaults on the reference of `corrected_slices` (3 evenly spaced slices, one per three
slices of a short lesion), scored from the same 3D box by Dice over the slices that were not
corrected, beside the pretrained model on the same slices.

    python benchmarks/ablate_pipeline.py
    python benchmarks/ablate_pipeline.py --fine-tuned 0,1,2 [--targets "brain1;lung2"] [--variants "default;lesions: no contrast rule"]
"""
from __future__ import annotations

import argparse
import tempfile
from collections import defaultdict
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np

from MedSegAdaptLib.harness.real_cases import (
    RealTarget,
    corrected_slices,
    corrections_store,
    evaluate_target,
    held_out_box_dice,
    real_targets,
)
from MedSegAdaptLib.inference import (
    EmbeddingCache,
    PropagationOptions,
    Segmenter,
    preprocess,
)
from MedSegAdaptLib.models import load_backbone
from MedSegAdaptLib.training import FineTuneOptions, fine_tune

OptionsFor = Callable[[RealTarget, PropagationOptions], PropagationOptions]


def _lesions_only(change: dict) -> OptionsFor:
    return lambda target, preset: replace(preset, **change) if target.is_lesion else preset


VARIANTS: list[tuple[str, OptionsFor, dict[str, tuple[float, float]]]] = [
    ("default", lambda target, preset: preset, {}),
    ("classic lung window L-600/W1500", lambda target, preset: preset, {"lung": (-600.0, 1500.0)}),
    ("no intensity stopping rule", lambda target, preset: replace(preset, max_intensity_shift=1.0), {}),
    ("lesions: the tighter intensity rule (0.1, the default before 2026-12-03)", _lesions_only({"max_intensity_shift": 0.1}), {}),
    ("lesions: no contrast rule", _lesions_only({"min_contrast": 0.0}), {}),
    ("lesions: every component kept", _lesions_only({"largest_component": False}), {}),
    ("lesions: margin 5 pixels", _lesions_only({"margin": 5}), {}),
    ("lesions: margin 1 pixel", _lesions_only({"margin": 1}), {}),
    ("lesions: the follow box alone (the default before the box rectangle)", _lesions_only({"box_rect": "off"}), {}),
    ("lesions: box rectangle only to rescue a stopping chain", _lesions_only({"box_rect": "rescue"}), {}),
    ("organs too: box rectangle, the more confident", lambda target, preset: replace(preset, box_rect="confident"), {}),
    ("bone window L300/W1400", lambda target, preset: preset, {"bone": (300.0, 1400.0)}),
]


def held_out_scores(segmenter: Segmenter, target: RealTarget, corrected: list[int],
                    variants: list[tuple[str, OptionsFor]]) -> dict[str, float]:
    """Variant name -> Dice over the uncorrected slices, segmented from the reference box + margin."""
    return {name: held_out_box_dice(segmenter, target.volume, target.structure, target.modality, target.reference,
                                    corrected, options_for(target, segmenter.options_for(target.structure)))
            for name, options_for in variants}


def fine_tuned_ablation(targets: list[RealTarget], seeds: list[int], variants: list[tuple[str, OptionsFor]]) -> None:
    """Print, per variant and target, the pretrained and the fine-tuned (mean +- sd over seeds) held-out Dice."""
    backbone = load_backbone(for_inference=True)
    cache = EmbeddingCache()
    pretrained, tuned = {}, defaultdict(lambda: defaultdict(list))
    for target in targets:
        corrected = corrected_slices(target.reference)
        pretrained[target.name] = held_out_scores(Segmenter(backbone, cache), target, corrected, variants)
        print(target.name, "corrected", corrected, "pretrained", pretrained[target.name], flush=True)
        for seed in seeds:
            with tempfile.TemporaryDirectory() as folder:
                with corrections_store(Path(folder) / "store", target, corrected) as store:
                    fine_tune(store, Path(folder) / "ft.pt", options=FineTuneOptions(seed=seed), cache=cache)
                model = Segmenter(load_backbone(checkpoint=Path(folder) / "ft.pt", for_inference=True), cache)
                scores = held_out_scores(model, target, corrected, variants)
            print(target.name, "seed", seed, scores, flush=True)
            for name, value in scores.items():
                tuned[name][target.name].append(value)
    names = [target.name.replace("CTChest4 ", "") for target in targets]
    print("\nDice over the uncorrected slices, pretrained -> fine-tuned (mean +- sd over seeds "
          f"{','.join(map(str, seeds))})\n")
    print("| variant | " + " | ".join(names) + " | mean fine-tuned |")
    print("|---|" + "---|" * (len(names) + 1))
    for name, _ in variants:
        cells = [f"{pretrained[t.name][name]:.3f} -> {np.mean(tuned[name][t.name]):.3f} +- {np.std(tuned[name][t.name]):.3f}"
                 for t in targets]
        mean = np.mean([np.mean(tuned[name][t.name]) for t in targets])
        print(f"| {name} | " + " | ".join(cells) + f" | {mean:.3f} |")


def named(text: str, known: list[str], what: str) -> list[str]:
    """The ';'-separated names of `text`; SystemExit naming any that is not in `known`."""
    wanted = [name.strip() for name in text.split(";") if name.strip()]
    unknown = [name for name in wanted if name not in known]
    if unknown:
        raise SystemExit(f"unknown {what} {', '.join(map(repr, unknown))}; expected some of: {'; '.join(known)}")
    return wanted


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fine-tuned", default=None, help="comma-separated seeds: ablate with fine-tuned models")
    parser.add_argument("--targets", default=None, help="';'-separated real targets (default: all)")
    parser.add_argument("--variants", default=None, help="';'-separated variant names (default: all)")
    args = parser.parse_args()
    targets = real_targets()
    if args.targets:
        targets = [target for target in targets if target.name in named(args.targets, [t.name for t in targets],
                                                                         "target")]
    chosen = VARIANTS if args.variants is None else [
        v for v in VARIANTS if v[0] in named(args.variants, [v[0] for v in VARIANTS], "variant")]
    if args.fine_tuned is not None:
        windowed = [name for name, _, windows in chosen if windows]
        if windowed:
            print("--fine-tuned skips the variants that change a window:", "; ".join(windowed), flush=True)
        fine_tuned_ablation(targets, [int(seed) for seed in args.fine_tuned.split(",")],
                            [(name, options_for) for name, options_for, windows in chosen if not windows])
        return
    backbone = load_backbone(for_inference=True)
    cache = EmbeddingCache()
    rows = []
    for name, options_for, windows in chosen:
        saved = dict(preprocess.CT_WINDOWS)
        preprocess.CT_WINDOWS.update(windows)
        segmenter = Segmenter(backbone, cache)
        rows.append((name, [evaluate_target(segmenter, target, "box",
                                            options=options_for(target, segmenter.options_for(target.structure)))["dice"]
                            for target in targets]))
        preprocess.CT_WINDOWS.clear()
        preprocess.CT_WINDOWS.update(saved)
        print(name, rows[-1][1], flush=True)
    plain = Segmenter(backbone, cache)
    rows.append(("no knowledge-base intensity cut",
                 [evaluate_target(plain, target, "box", intensity_cut=False)["dice"] for target in targets]))
    torch_encoder = load_backbone(for_inference=True, encoder_runtime="torch")
    bf16 = Segmenter(torch_encoder, EmbeddingCache(), precision="bf16")
    rows.append(("bf16 encoder autocast", [evaluate_target(bf16, target, "box")["dice"] for target in targets]))

    names = [target.name.replace("CTChest4 ", "") for target in targets]
    print("\n| variant | " + " | ".join(names) + " | lesion mean |")
    print("|---|" + "---|" * (len(names) + 1))
    for name, values in rows:
        lesions = [v for v, target in zip(values, targets) if target.is_lesion]
        print(f"| {name} | " + " | ".join(f"{v:.3f}" for v in values) + f" | {sum(lesions) / len(lesions):.3f} |")


if __name__ == "__main__":
    main()
