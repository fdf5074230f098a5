"""Accuracy of pipeline choices on every real target: the default against one change at a time.

Targets: CTChest4's structures and the five clinical lesions (`make cases`); one 3D box from the
reference extent + 2 voxels, Dice per target. Each variant changes one thing: the classic lung
window, a stopping rule off or changed (for every structure, or for lesions only), the lesion
preset's margin or component rule, a bone window, no knowledge-base intensity cut, bf16 encoder
autocast. Slice embeddings are
cached in memory across the variants that share a preprocessing.

    python benchmarks/ablate_pipeline.py
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from MedSegAdaptLib.harness.real_cases import RealTarget, evaluate_target, real_targets
from MedSegAdaptLib.inference import (
    EmbeddingCache,
    PropagationOptions,
    Segmenter,
    preprocess,
)
from MedSegAdaptLib.models import load_backbone

OptionsFor = Callable[[RealTarget, PropagationOptions], PropagationOptions]


def _lesions_only(change: dict) -> OptionsFor:
    return lambda target, preset: replace(preset, **change) if target.is_lesion else preset


VARIANTS: list[tuple[str, OptionsFor, dict[str, tuple[float, float]]]] = [
    ("default", lambda target, preset: preset, {}),
    ("classic lung window L-600/W1500", lambda target, preset: preset, {"lung": (-600.0, 1500.0)}),
    ("no intensity stopping rule", lambda target, preset: replace(preset, max_intensity_shift=1.0), {}),
    ("lesions: the organs' intensity rule (0.2)", _lesions_only({"max_intensity_shift": 0.2}), {}),
    ("lesions: no contrast rule", _lesions_only({"min_contrast": 0.0}), {}),
    ("lesions: every component kept", _lesions_only({"largest_component": False}), {}),
    ("lesions: margin 5 pixels", _lesions_only({"margin": 5}), {}),
    ("lesions: margin 1 pixel", _lesions_only({"margin": 1}), {}),
    ("bone window L300/W1400", lambda target, preset: preset, {"bone": (300.0, 1400.0)}),
]


def main() -> None:
    targets = real_targets()
    backbone = load_backbone(for_inference=True)
    cache = EmbeddingCache()
    rows = []
    for name, options_for, windows in VARIANTS:
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
