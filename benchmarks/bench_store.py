"""Fine-tuning store speed: submit, export and verify with 1,000 label versions on the real CTChest4.

One case, the real segmentation stored as prediction, then corrections submitted in turn to each of
its seven structures (each a real mask with one slice inverted, so every version differs and every
submission computes its diff to the prediction).

    python benchmarks/bench_store.py [--versions 1000] [--store DIR]
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import MedSegAdaptLib.evaluation.metrics  # noqa: F401  (loaded by the first diff; kept out of the timings)
from MedSegAdaptLib.io import (
    ctchest4_segmentation_path,
    ctchest4_volume_path,
    read_segmentation,
)
from MedSegAdaptLib.store import FineTuningStore


def _timed(function, *args, **kwargs) -> tuple[object, float]:
    start = time.perf_counter()
    result = function(*args, **kwargs)
    return result, time.perf_counter() - start


def run(root: Path, versions: int) -> None:
    reference = read_segmentation(ctchest4_segmentation_path())
    with FineTuningStore.init(root) as store:
        case, _ = store.add_image(ctchest4_volume_path(), modality="ct")
        store.add_prediction(case.case_id, ctchest4_segmentation_path())
        submit_times = []
        for n in range(versions):
            segment = reference.segments[n % len(reference.segments)]
            mask = segment.mask.copy()
            k = (n // len(reference.segments)) % mask.shape[2]
            mask[:, :, k] = ~mask[:, :, k]
            _, seconds = _timed(store.submit_mask, case.case_id, segment.name, mask, "bench")
            submit_times.append(seconds)
        with tempfile.TemporaryDirectory() as folder:
            (version, rows), export_s = _timed(store.export, Path(folder) / "datalist.json")
        history, history_s = _timed(store.history, case.case_id, reference.segments[0].name)
        report, verify_s = _timed(store.verify)
    assert report.ok and rows == len(reference.segments)
    ordered = sorted(submit_times)
    print(f"label versions submitted: {versions} (plus {len(reference.segments)} predictions), store {root}")
    print(
        f"submit: median {statistics.median(ordered) * 1e3:.1f} ms, "
        f"95th percentile {ordered[int(0.95 * (len(ordered) - 1))] * 1e3:.1f} ms, "
        f"median of the first 100 {statistics.median(submit_times[:100]) * 1e3:.1f} ms, "
        f"of the last 100 {statistics.median(submit_times[-100:]) * 1e3:.1f} ms"
    )
    print(f"export ({rows} training rows, training set version {version}): {export_s * 1e3:.1f} ms")
    print(f"history of one structure ({len(history)} versions): {history_s * 1e3:.1f} ms")
    print(f"verify ({report.checked_files} files, SHA-256 of each): {verify_s * 1e3:.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--versions", type=int, default=1000)
    parser.add_argument(
        "--store", type=Path, help="new store folder (default: a temporary one, removed after)"
    )
    args = parser.parse_args()
    if args.store is not None:
        run(args.store, args.versions)
        return
    with tempfile.TemporaryDirectory() as folder:
        run(Path(folder) / "store", args.versions)


if __name__ == "__main__":
    main()
