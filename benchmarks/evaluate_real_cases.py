"""The evaluation harness: Dice, HD95 and seconds on every real target, one table per prompt kind.

Targets: CTChest4's seven structures and the five clinical lesions (`make cases` fetches them). Prompt
kinds (see MedSegAdaptLib.harness.real_cases.py): one 3D box from the reference extent + 2 voxels,
per-slice reference boxes (the upper bound of box prompting), one point, one 2D box on the middle slice.
Real LiteMedSAM weights, zero-shot, axial slices. Seconds include encoding: each target starts with an
empty embedding cache, so the first prompt kind pays the encoder and the later ones reuse it.

    python benchmarks/evaluate_real_cases.py [--kinds box,"slice boxes"] [--targets lung1,brain2]
"""
from __future__ import annotations

import argparse
import platform

import torch

from MedSegAdaptLib.evaluation.metrics import format_table
from MedSegAdaptLib.harness.real_cases import (
    PROMPT_KINDS,
    evaluate_target,
    real_targets,
)
from MedSegAdaptLib.inference import EmbeddingCache, Segmenter
from MedSegAdaptLib.models import load_backbone


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kinds", default=",".join(PROMPT_KINDS), help="comma-separated prompt kinds")
    parser.add_argument("--targets", default="", help="comma-separated target names (default: all)")
    parser.add_argument("--markdown", action="store_true", help="print markdown tables")
    args = parser.parse_args()
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    wanted = {t.strip() for t in args.targets.split(",") if t.strip()}
    print(f"machine: {platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}")
    backbone = load_backbone(device="cpu", for_inference=True)
    rows = []
    for target in real_targets():
        if wanted and target.name not in wanted:
            continue
        segmenter = Segmenter(backbone, EmbeddingCache())
        for kind in kinds:
            row = evaluate_target(segmenter, target, kind)
            print(row, flush=True)
            rows.append(row)
    for kind in kinds:
        table = [{k: v for k, v in row.items() if k != "prompt"} for row in rows if row["prompt"] == kind]
        lesions = [row["dice"] for row in table if not row["target"].startswith("CTChest4")]
        print(f"\n### {kind}" + (f" (mean lesion Dice {sum(lesions) / len(lesions):.3f})" if lesions else ""))
        print(_markdown(table) if args.markdown else format_table(table))


def _markdown(rows: list[dict]) -> str:
    columns = list(rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join("" if row[c] is None else str(row[c]) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
