"""How suggestions score and pick slices (:class:`ScoringOptions`) and the purposes they rank for.

Kept apart from :mod:`.scoring` so that the command line builds its parser without importing torch.
"""
from __future__ import annotations

from dataclasses import dataclass

from MedSegAdaptLib.core.errors import InputError

__all__ = ["RANKING_PURPOSES", "ScoringOptions"]


@dataclass(frozen=True)
class ScoringOptions:
    """How candidate slices are scored and picked; the defaults are what `suggest` uses.

    band: pixels around the predicted foreground where ASD's entropy counts (2).
    augmentations: jittered boxes decoded per slice besides the box itself (4; 0 turns
        disagreement off, as does prompt-free decoding). jitter: each box corner moves by up to this
        fraction of the box's width / height (0.1).
    slice_margin: candidates reach this many slices beyond the predicted extent (2), inside the 3D
        box when there is one; all_slices: every slice is a candidate instead.
    edge_band: share of the predicted extent at each of its ends over which a slice's total rises
        linearly from its lowest (the end slice) to full (0.2; 0: no presence weighting at all, the
        slices beyond the extent included).
    coverage_window: picks spread over the 3D box's slice range (or the predicted extent) first:
        each aims at an evenly spaced target slice of an unlabeled stretch and is the best total
        within coverage_window * the targets' spacing of it, at least the two slices around it (0:
        the target itself, totals only break ties between two; 0.25, moving picks towards
        uncertain slices, trained no better in the benchmark of docs/suggestions.md; None: greedy by total with the
        diversity penalty below).
    weight_dkd, weight_asd: weights of DKD and ASD in the total (0.5, 0.5).
    divergence_share: share of the model divergence in DKD when an adapted model is given (0.5).
    diversity, spacing, min_gap: the greedy selection's (coverage_window None, and whole volumes).
    diversity: strength of the separation penalty, an exponent on the separation (1.0; 0 ranks by
        total alone, which picks neighbours: the 3 most uncertain slices were the worst choice in
        DESIGN.md's probe). spacing: slice distance from which position no longer penalises; None:
        candidates / (budget + labeled candidates + 1), at least 2. min_gap: no pick within this
        many slices of a picked or labeled slice while farther candidates remain (1).
    """

    band: int = 2
    augmentations: int = 4
    jitter: float = 0.1
    slice_margin: int = 2
    all_slices: bool = False
    edge_band: float = 0.2
    coverage_window: float | None = 0.0
    weight_dkd: float = 0.5
    weight_asd: float = 0.5
    divergence_share: float = 0.5
    diversity: float = 1.0
    spacing: float | None = None
    min_gap: int = 1

    def __post_init__(self) -> None:
        if not 0 <= self.edge_band <= 0.5:
            raise InputError(f"edge band {self.edge_band!r} is not a share of the predicted extent at each end; "
                             "expected 0 to 0.5")
        if self.coverage_window is not None and not 0 <= self.coverage_window <= 0.5:
            raise InputError(f"coverage window {self.coverage_window!r} is not a share of the spacing between "
                             "target slices; expected 0 to 0.5 (or None for greedy picking by score)")


RANKING_PURPOSES: dict[str, ScoringOptions] = {
    "training": ScoringOptions(),  # slices whose labels teach fine-tuning most: evenly spread over the structure
    # slices the model gets most wrong, its ends and beyond included, wherever they bunch
    "correction": ScoringOptions(edge_band=0.0, coverage_window=None),
}
"""What suggestions rank slices for, and the scoring options that do it."""

VOLUME_RANKING = ScoringOptions(weight_dkd=0.0, weight_asd=1.0, diversity=0.0)
"""How `suggest --volumes` ranks whole cases: by ASD alone, the case whose boundary the current model is least
sure of, without DKD or diversity. It won the volume-ranking benchmark of docs/suggestions.md (cohort Dice
after 3 cases 0.96 against 0.87 for DKD + ASD + diversity, which opened a case the model already segmented
at 0.94 because it was far from the annotated ones); 5 cases only."""
