"""Annotation rounds: the corrections of one case's structure, in order, with the model's agreement on each.

Round n is the n-th correction version of the (case, structure), partial or whole. Its agreement is how
well the model already did there: Dice between the latest prediction stored before that correction and
the correction, over the correction's annotated slices (the store records it with the correction, in
``LabelVersion.diff``), None when no prediction preceded it.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from MedSegAdaptLib.store.store import FineTuningStore

__all__ = ["AnnotationRound", "annotation_rounds", "last_round_gain"]


@dataclass(frozen=True)
class AnnotationRound:
    """One round: which correction version it is, what it annotated and when, and the model's agreement.

    ``annotated_slices`` is ``{"k": [12, 30]}``, None for the whole volume; ``agreement`` the Dice of the
    prediction version ``prediction_version`` to the correction over its annotated slices (None for both
    when no prediction preceded the correction).
    """

    number: int
    version: int
    annotated_slices: dict[str, list[int]] | None
    time: str
    annotator: str | None
    agreement: float | None
    prediction_version: int | None

    @property
    def date(self) -> str:
        """The correction's date, YYYY-MM-DD (UTC)."""
        return self.time[:10]


def annotation_rounds(store: FineTuningStore, case_id: str, structure: str) -> list[AnnotationRound]:
    """The rounds of ``structure`` (any case of letters) on case ``case_id``, first round first.

    [] when the case has no correction of the structure yet; InputError for an unknown case.
    """
    wanted = structure.strip().casefold()
    corrections = [label for label in store.history(case_id)
                   if label.kind == "correction" and label.structure.casefold() == wanted]
    return [AnnotationRound(number, label.version, label.annotated_slices, label.time, label.annotator,
                            None if label.diff is None else float(label.diff["dice"]),
                            None if label.diff is None else int(label.diff["against_version"]))
            for number, label in enumerate(corrections, start=1)]


def last_round_gain(rounds: Sequence[AnnotationRound]) -> float | None:
    """What the last round gained: its agreement minus the previous round's; None unless both are known."""
    if len(rounds) < 2 or rounds[-1].agreement is None or rounds[-2].agreement is None:
        return None
    return rounds[-1].agreement - rounds[-2].agreement
