"""The rounds benchmark's bookkeeping (benchmarks/evaluate_rounds.py) on a tiny synthetic example: foreground
voxels counted once per annotated slice, uniform rounds filling the widest gaps, and --summarize's mean ± sd
over seeds and the assft-minus-uniform comparison."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "evaluate_rounds.py"
_spec = importlib.util.spec_from_file_location("evaluate_rounds", _PATH)
rounds = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(rounds)


def _record(strategy: str, seed: int, round_number: int, model: float, voxels: int) -> dict:
    return {"target": "toy", "K": 2, "strategy": strategy, "seed": seed, "round": round_number, "model": model,
            "annotated_slices": 2 * round_number, "foreground_voxels": voxels}


def test_foreground_uniform_rounds_and_summary():
    truth = np.zeros((4, 4, 12), dtype=bool)
    truth[:2, :2, 2:10] = True  # 4 voxels on each of slices 2..9
    assert rounds.annotated_foreground(truth, [0, 2, 2, 9]) == 8  # slice 0 is empty, slice 2 counts once
    assert rounds.annotated_foreground(truth, []) == 0
    first = rounds.uniform_round(truth, [], 2)
    assert first == [4, 7]  # the extent 2..9 cut in three
    second = rounds.uniform_round(truth, first, 2)
    assert not set(second) & set(first) and all(2 <= k <= 9 for k in second) and len(second) == 2
    assert len(rounds.uniform_round(truth, list(range(2, 10)), 2)) == 0  # the extent is used up

    runs = [_record("assft", 0, 2, 0.80, 30), _record("assft", 1, 2, 0.90, 30),
            _record("uniform", 0, 2, 0.70, 20), _record("uniform", 1, 2, 0.70, 40)]
    text = rounds.markdown_tables(runs)
    assert "| toy | 2 | assft | 0.850 ± 0.050 | 2 |" in text
    assert "| toy | 2 | uniform | 30 ± 10 | 2 |" in text  # foreground voxels, mean ± sd over the seeds
    assert "| toy | 2 | +0.150 (sd 0.050) * |" in text  # assft - uniform beats the larger sd
    variant = {**_record("uniform", 0, 2, 0.75, 20), "finetune": {"epochs": 4, "extent_box_share": 0.3}}
    assert rounds.strategy_label(variant) == "uniform extent_box_share=0.3"
    assert "| toy | 2 | uniform extent_box_share=0.3 | 0.750 ± 0.000 | 1 |" in rounds.markdown_tables([*runs, variant])
