"""Where the annotation loop stands, as the panels show it: the Suggestions panel's round line and the Adapt
panel's result table (per environment and structure: synthetic labels, then the fine-tuning after them).

Plain Python over what the library returns (``AnnotationRound``s, ``summarize`` counts, a
``FineTuneResult``), so that the texts and rows are tested without Slicer.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ADAPT_COLUMNS", "AdaptResults", "describe_rounds", "slices_text"]

#: The Adapt panel's result table's columns, in the order of :meth:`AdaptResults.rows`' cells.
ADAPT_COLUMNS = ("Environment", "Structure", "Generated", "Accepted", "Queued", "Best validation Dice", "Epochs")


def slices_text(annotated_slices: Mapping[str, Sequence[int]] | None) -> str:
    """``{"k": [12, 30]}`` as 'k:12,30' (axes separated by a space), None as 'whole volume'."""
    from MedSegAdaptLib.store.slices import format_slices

    return format_slices(annotated_slices, whole="whole volume")


def describe_rounds(structure: str, rounds: Sequence[Any]) -> str:
    """The round the annotator is in for ``structure`` and how the model did on the last one.

    ``rounds`` are the library's ``AnnotationRound``s, first first. After n rounds the annotator is in round
    n + 1; the model's agreement with round n's corrections is the Dice of the prediction stored before them,
    over their annotated slices, and the gain is that minus round n - 1's.
    """
    if not rounds:
        return f"Round 1 for {structure}: no corrections yet."
    last = rounds[-1]
    head = f"Round {last.number + 1} for {structure}"
    what = f"your round-{last.number} corrections ({slices_text(last.annotated_slices)}, {last.date})"
    if last.agreement is None:
        return f"{head}: no model prediction was stored before {what}, so how well the model agreed is unknown."
    text = f"{head}: the model agreed with {what} at Dice {last.agreement:.2f}"
    if last.number == 1:
        return text + "."
    previous = rounds[-2].agreement
    if previous is None:
        return text + f" (round {last.number - 1}'s agreement is unknown)."
    return text + f", {last.agreement - previous:+.2f} over round {last.number - 1}."


def _dice_text(result: Any) -> str:
    return "no validation slices" if result.best_val_dice is None else f"{result.best_val_dice:.3f}"


@dataclass
class AdaptResults:
    """The Adapt panel's results in one store: the last sample run of each environment (``summarize`` counts
    per structure), and the fine-tuning that followed it, if any (the last one after it)."""

    samples: dict[str, dict[str, Mapping[str, int]]] = field(default_factory=dict)
    fine_tuned: dict[str, Any] = field(default_factory=dict)
    fine_tune: Any = None

    def add_samples(self, environment: str, summary: Mapping[str, Mapping[str, int]]) -> None:
        """A finished run of ``environment``: it replaces that environment's row(s), not fine-tuned yet."""
        self.samples.pop(environment, None)
        self.samples[environment] = dict(summary)
        self.fine_tuned.pop(environment, None)

    def add_fine_tune(self, result: Any) -> None:
        """A finished fine-tuning (``FineTuneResult``): it trained on every environment's samples so far."""
        self.fine_tune = result
        self.fine_tuned = dict.fromkeys(self.samples, result)

    def rows(self) -> list[list[str]]:
        """One row per environment and structure (columns :data:`ADAPT_COLUMNS`), runs in order; '-' in the
        fine-tuning cells of samples not fine-tuned on yet. A fine-tuning with no sample run before it is one
        row of 'all structures'."""
        rows = []
        for environment, summary in self.samples.items():
            result = self.fine_tuned.get(environment)
            tuned = ["-", "-"] if result is None else [_dice_text(result), str(result.epochs_run)]
            rows.extend([environment, structure, str(counts["generated"]), str(counts["accepted"]),
                         str(counts["queued"]), *tuned] for structure, counts in summary.items())
        if not self.samples and self.fine_tune is not None:
            rows.append(["-", "all structures", "-", "-", "-", _dice_text(self.fine_tune),
                         str(self.fine_tune.epochs_run)])
        return rows
