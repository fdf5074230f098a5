"""Report-driven segmentation on every real target (docs/segmentation.md, "From a report alone").

    python benchmarks/evaluate_reports.py [--targets NAME ...] [--no-segment] [--method M] [--markdown]

Per phrasing: candidates found, rank of the first that overlaps the reference, Dice of the top
candidate's segmentation (LiteMedSAM from the candidate's box), seconds. Needs `make cases`.
"""
from __future__ import annotations

import argparse

from MedSegAdaptLib.harness.real_cases import real_targets
from MedSegAdaptLib.harness.report_cases import evaluate_report, report_phrasings
from MedSegAdaptLib.inference.report_segmentation import METHODS
from MedSegAdaptLib.inference.segmenter import Segmenter
from MedSegAdaptLib.models.loading import load_backbone


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", nargs="*", help="target names (default: every one with phrasings)")
    parser.add_argument("--no-segment", action="store_true", help="rank candidates only (no network)")
    parser.add_argument("--method", default="auto", choices=METHODS,
                        help="how the top candidate is segmented (default: %(default)s)")
    parser.add_argument("--markdown", action="store_true", help="print a markdown table")
    args = parser.parse_args()
    segmenter = Segmenter(load_backbone(for_inference=True))
    rows = []
    for target in real_targets():
        if args.targets and target.name not in args.targets:
            continue
        for report in report_phrasings(target):
            result = evaluate_report(segmenter, target, report, segment=not args.no_segment, method=args.method)
            rows.append(result)
            if not args.markdown:
                print(result, flush=True)
    if args.markdown:
        print("| target | report | candidates | rank of the right one | Dice (top) | s | top candidate |")
        print("|---|---|---|---|---|---|---|")
        for r in rows:
            score = "refused" if r.dice is None and r.candidates == 0 else "" if r.dice is None else f"{r.dice:.3f}"
            print(f"| {r.target} | {r.report[:60]}{'...' if len(r.report) > 60 else ''} | {r.candidates} | "
                  f"{r.rank or 'not found'} | {score} | {r.seconds:.1f} | {r.reason[:90]} |")


if __name__ == "__main__":
    main()
