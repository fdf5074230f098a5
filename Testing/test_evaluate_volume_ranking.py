"""The volume-ranking benchmark's bookkeeping (benchmarks/evaluate_volume_ranking.py): annotated cases count
as their label in the cohort Dice and leave the remaining Dice, and --summarize's mean ± sd over seeds, the
picks per round and the per-case table."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "evaluate_volume_ranking.py"
_spec = importlib.util.spec_from_file_location("evaluate_volume_ranking", _PATH)
ranking = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ranking)


def test_scores_and_summary():
    model_dice = {"a": 0.5, "b": 0.7, "c": 0.9}
    scores = ranking.round_scores(model_dice, ["b"])
    assert scores["cohort"] == pytest.approx((0.5 + 1.0 + 0.9) / 3)
    assert scores["remaining"] == pytest.approx(0.7) and scores["model"] == pytest.approx(0.7)
    assert ranking.round_scores(model_dice, ["a", "b", "c"])["remaining"] is None

    def record(strategy: str, seed: int, annotated: list[str], dice: dict[str, float]) -> dict:
        return {"strategy": strategy, "seed": seed, "round": len(annotated), "annotated": annotated,
                "picked": annotated[-1] if annotated else None, "dice": dice, **ranking.round_scores(dice, annotated)}

    runs = [record("random", 0, ["a"], {"a": 0.9, "b": 0.6}), record("random", 1, ["b"], {"a": 0.4, "b": 0.8}),
            record("assft", 0, ["b"], {"a": 0.5, "b": 0.9})]
    text = ranking.markdown_tables(runs)
    assert "| random | 0.750 ± 0.050 | 2 |" in text  # cohort Dice: (1 + 0.6) / 2 and (0.4 + 1) / 2
    assert "| random | 0.500 ± 0.100 | 2 |" in text  # remaining: 0.6 and 0.4
    assert "| random | a (1), b (1) |" in text and "| assft | b (1) |" in text
    assert "| random | 1 | 0.650 | 0.700 |" in text  # neither case annotated in every seed: no star
    assert "| assft | 1 | 0.500 | 0.900 * |" in text
