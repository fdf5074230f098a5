"""Active suggestions (our adaptation of ASSFT's DKD/ASD plus diversity) on the real CTChest4 and LiteMedSAM.

Boxes span 5 axial slices of the left lung (k 15..19) and slices are decoded with 2 jittered boxes, not 4, so
each test decodes a few slices on cached embeddings.
"""
from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from MedSegAdaptLib.cli import main
from MedSegAdaptLib.core.errors import InputError
from MedSegAdaptLib.demos.feedback_loop import uniform_slices
from MedSegAdaptLib.inference import Box3D, Segmenter
from MedSegAdaptLib.store import FineTuningStore
from MedSegAdaptLib.suggestions import (
    ScoringOptions,
    Suggestion,
    suggest_from_store,
    suggest_slices,
)
from MedSegAdaptLib.suggestions.scoring import (
    coverage_targets,
    jittered_rects,
    normalise,
    presence_weights,
    select_covering,
    select_diverse,
)

STRUCTURE = "left lung"
BOX = Box3D((11, 30, 15), (68, 98, 19))
AMBIGUOUS = Box3D((11, 30, 15), (113, 101, 19))  # around both lungs: which one is meant?
WIDER = Box3D((11, 30, 14), (68, 98, 20))  # the whole body in-plane: which structure is meant?
CASE = "CTChest4"
KEYS = {"case_id", "image", "axis", "index", "score", "dkd", "asd", "reason"}
FAST = ScoringOptions(augmentations=2)


@pytest.fixture(scope="module")
def suggester(litemedsam, embeddings):
    """One Segmenter for the module over the session's embedding cache: each slice is encoded once."""
    return Segmenter(litemedsam, embeddings)


@pytest.fixture(scope="module")
def volume(ctchest4):
    return ctchest4[0]


@pytest.fixture(scope="module")
def left_lung(ctchest4):
    return ctchest4[1].get(STRUCTURE).mask


def _suggest(suggester, volume, budget=3, **kwargs) -> list[Suggestion]:
    return suggest_slices(suggester, volume, STRUCTURE, budget, kwargs.pop("box", BOX), options=FAST, **kwargs)


def _raw_asd(suggestions: list[Suggestion]) -> float:
    return float(np.mean([(s.components["entropy"] + s.components["disagreement"]) / 2 for s in suggestions]))


# --- scoring without a model ------------------------------------------------------------------------


def test_jittered_rects_keep_the_box_first_stay_inside_and_repeat_for_a_seed():
    rect = np.array([10, 20, 60, 90], np.float32)
    first = jittered_rects(rect, 4, 0.2, 100, 64, np.random.default_rng([0, 5]))
    again = jittered_rects(rect, 4, 0.2, 100, 64, np.random.default_rng([0, 5]))
    assert first.shape == (5, 4) and np.array_equal(first[0], rect) and np.array_equal(first, again)
    assert not np.array_equal(first[1], rect)
    assert (first >= 0).all() and (first[:, [0, 2]] <= 63).all() and (first[:, [1, 3]] <= 99).all()
    assert (first[:, 2] > first[:, 0]).all() and (first[:, 3] > first[:, 1]).all()


def test_normalise_ranks_to_unit_range_so_one_extreme_value_squeezes_no_other():
    assert normalise([2.0, 4.0, 3.0]).tolist() == [0.0, 1.0, 0.5]
    assert normalise([0.1, 0.2, 0.3, 5.0]) == pytest.approx([0, 1 / 3, 2 / 3, 1])
    assert normalise([0.1, 0.2, 0.2, 0.3]) == pytest.approx([0, 0.5, 0.5, 1])  # ties share their rank
    assert normalise([0.3, 0.3]).tolist() == [0.0, 0.0] and normalise([0.7]).tolist() == [0.0]


def test_diversity_spreads_picks_that_plain_ranking_bunches():
    indices = list(range(20))
    totals = np.exp(-((np.arange(20) - 5.0) ** 2) / 8)  # one peak: the best slices are neighbours
    totals[15] = 0.5
    pooled = np.stack([np.cos(np.arange(20) / 6), np.sin(np.arange(20) / 6), np.ones(20)], axis=1)
    plain = select_diverse(indices, totals, pooled, [], np.zeros((0, 3)), 3, ScoringOptions(diversity=0, min_gap=0))
    spread = select_diverse(indices, totals, pooled, [], np.zeros((0, 3)), 3)
    assert sorted(p.index for p in plain) == [4, 5, 6]
    chosen = sorted(p.index for p in spread)
    assert 5 in chosen and 15 in chosen and min(np.diff(chosen)) > 1
    scores = [p.score for p in spread]
    assert scores == sorted(scores, reverse=True)
    labeled = select_diverse(indices, totals, pooled, [15], pooled[[15]], 3)
    assert all(abs(p.index - 15) > 1 for p in labeled)


def test_presence_is_zero_beyond_the_prediction_and_rises_to_one_inside_it():
    weights = presence_weights(range(8, 24), {10, 11, 12, 13, 14, 15, 16, 17, 18, 19}, 0.2)  # extent 10..19, band 2
    assert weights[:2].tolist() == [0.0, 0.0] and weights[-4:].tolist() == [0.0] * 4
    assert weights[2:7] == pytest.approx([1 / 3, 2 / 3, 1, 1, 1])
    assert weights[2:12].tolist() == weights[2:12][::-1].tolist()  # symmetric about the extent's middle
    assert presence_weights(range(8, 24), {10, 19}, 0.0).tolist() == [1.0] * 16
    assert presence_weights(range(3), set(), 0.2).tolist() == [1.0] * 3  # nothing predicted: the box is the extent
    with pytest.raises(InputError, match="edge band 0.7 .* expected 0 to 0.5"):
        ScoringOptions(edge_band=0.7)


def test_coverage_targets_are_uniform_spacing_and_fill_the_widest_unlabeled_stretch():
    mask = np.zeros((2, 2, 34), bool)
    mask[:, :, 9:30] = True  # extent 9..29
    for budget in (1, 2, 3, 5):
        targets = coverage_targets((9, 29), [], budget)
        assert [round(t.position) for t in targets] == uniform_slices(mask, budget)
        assert all(t.start == 9 and t.end == 29 and t.spacing == pytest.approx(20 / (budget + 1)) for t in targets)
    assert [t.position for t in coverage_targets((9, 29), [19], 2)] == [14, 24]  # one per half
    halves = coverage_targets((9, 29), [19], 3)  # the lower half gets the odd one
    assert [round(t.position, 2) for t in halves] == [12.33, 15.67, 24]
    assert [(t.start, t.end) for t in halves] == [(9, 19), (9, 19), (19, 29)]
    late = coverage_targets((9, 29), [12], 2)  # the long stretch 12..29 takes both
    assert [round(t.position, 2) for t in late] == [17.67, 23.33] and late[0].start == 12
    assert [t.position for t in coverage_targets((9, 29), [3, 40], 1)] == [19]  # labels outside the extent


def test_covering_takes_the_best_total_near_each_target_and_never_a_labeled_slice():
    indices = list(range(9, 30))
    totals = np.full(21, 0.2)
    totals[[10 - 9, 21 - 9, 26 - 9]] = [1.0, 0.6, 0.5]  # 10: the best, far from any target
    picks = select_covering(indices, totals, (9, 29), [], 1, 0.25)  # target 19, reach 2.5
    assert [(p.index, p.score, p.target.position) for p in picks] == [(21, 0.6, 19)]
    assert [p.index for p in select_covering(indices, totals, (9, 29), [], 1, 0.0)] == [19]  # reach 0.5
    two = select_covering(indices, totals, (9, 29), [], 2, 0.25)  # targets 15.67 and 22.33, reach 1.67
    assert [p.index for p in two] == [21, 16]  # best total first; 16: the equal totals' nearest to 15.67
    assert two[0].nearest == 16 and two[1].nearest is None  # targets are filled lowest first
    labeled = select_covering([k for k in indices if k != 21], np.delete(totals, 21 - 9), (9, 29), [21], 1, 0.25)
    assert [p.index for p in labeled] == [15] and labeled[0].nearest == 21  # the wide stretch 9..21, target 15
    gap = select_covering([9, 10, 26, 27, 28], [0.1, 0.9, 0.2, 0.3, 0.4], (9, 29), [], 1, 0.25)
    assert [p.index for p in gap] == [26]  # nothing within reach of 19: the nearest candidate, not the best
    assert len(select_covering([9, 10], [0.1, 0.2], (9, 29), [], 5, 0.25)) == 2
    with pytest.raises(InputError, match="coverage window 0.6 .* expected 0 to 0.5"):
        ScoringOptions(coverage_window=0.6)


# --- real model -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ranked(suggester, volume) -> list[Suggestion]:
    """Every candidate of BOX ranked, nothing annotated."""
    return _suggest(suggester, volume, budget=5)


def test_suggestions_lie_in_the_box_sorted_by_score_and_repeat_for_a_seed(suggester, volume, ranked):
    assert sorted(s.index for s in ranked) == [15, 16, 17, 18, 19]
    assert all(s.axis == "k" and s.case_id is None and s.image == volume.path for s in ranked)
    assert [s.score for s in ranked] == sorted((s.score for s in ranked), reverse=True)
    assert all(0 <= value <= 1 for s in ranked for value in (s.score, s.dkd, s.asd))
    assert max(s.asd for s in ranked) == 1.0
    assert all(s.dkd == 0.0 and s.components["embedding_distance"] == 0.0 for s in ranked)  # nothing labeled
    assert all(STRUCTURE in s.reason and "ASD" in s.reason and "no labeled slices yet (DKD 0.00)" in s.reason
               for s in ranked)
    again = _suggest(suggester, volume, budget=5)
    assert again == ranked and [s.components for s in again] == [s.components for s in ranked]


def test_picks_aim_at_evenly_spaced_targets_of_the_box(suggester, volume):
    spread = _suggest(suggester, volume, budget=2, box=WIDER)  # box k 14..20: targets 16 and 18
    assert sorted(s.index for s in spread) == [16, 18]
    assert all("spreads labels evenly between slices 14 and 20" in s.reason for s in spread)
    around = _suggest(suggester, volume, budget=2, box=WIDER, annotated={17})  # targets 15.5 and 18.5
    by_index = {s.index: s for s in around}
    assert len(around) == 2 and len(set(by_index) & {15, 16}) == 1 and len(set(by_index) & {18, 19}) == 1
    for s in around:  # each is the better total of the two slices around its target
        assert "between slices 14 and 17" in s.reason or "between slices 17 and 20" in s.reason


def test_greedy_picks_for_correction_take_the_best_total_and_no_neighbours(suggester, volume, ranked):
    greedy = replace(FAST, coverage_window=None)
    first = suggest_slices(suggester, volume, STRUCTURE, 1, BOX, options=greedy)
    assert first[0].index == max(ranked, key=lambda s: s.components["total"]).index
    picked = sorted(s.index for s in suggest_slices(suggester, volume, STRUCTURE, 3, WIDER, options=greedy))
    assert len(picked) == 3 and min(np.diff(picked)) > 1


def test_slices_near_the_ends_of_the_prediction_are_weighted_down(suggester, volume):
    weighted = {s.index: s for s in _suggest(suggester, volume, budget=7, box=WIDER)}
    flat = {s.index: s for s in suggest_slices(suggester, volume, STRUCTURE, 7, WIDER,
                                               options=replace(FAST, edge_band=0.0))}
    assert sorted(weighted) == sorted(flat) == list(range(14, 21))  # the prediction fills the box's 7 slices
    presence = {k: s.components["presence"] for k, s in weighted.items()}
    assert presence[14] == presence[20] == pytest.approx(1 / 2.4) and presence[17] == 1.0
    assert all(s.components["presence"] == 1.0 for s in flat.values())
    for k, suggestion in weighted.items():
        assert suggestion.components["total"] == pytest.approx(flat[k].components["total"] * presence[k])
    assert "near the end of the predicted left lung (weight 0.42)" in weighted[14].reason
    assert "near the end" not in weighted[17].reason


def test_annotated_slices_are_skipped_and_dkd_is_lower_next_to_them(suggester, volume):
    by_index = {s.index: s for s in _suggest(suggester, volume, budget=5, annotated={15})}
    assert sorted(by_index) == [16, 17, 18, 19]
    assert by_index[16].dkd < by_index[19].dkd
    assert by_index[16].components["embedding_distance"] < by_index[19].components["embedding_distance"]
    assert "labeled slice" in by_index[16].reason
    assert _suggest(suggester, volume, annotated=set(range(15, 20))) == []


def test_asd_is_higher_with_an_ambiguous_prompt_than_a_tight_one(suggester, volume, ranked):
    ambiguous = _suggest(suggester, volume, budget=5, box=AMBIGUOUS)
    assert _raw_asd(ambiguous) > _raw_asd(ranked) + 0.03


def test_the_same_model_as_adapted_model_diverges_nowhere(suggester, volume, ranked):
    assert all(s.components["divergence"] is None for s in ranked)
    same = _suggest(suggester, volume, budget=5, adapted_segmenter=suggester)
    assert all(s.components["divergence"] == 0.0 for s in same)


@pytest.mark.slow
def test_a_perturbed_adapted_model_diverges(suggester, volume):
    from MedSegAdaptLib.models import load_backbone

    perturbed = load_backbone()  # PyTorch encoder, same weights: the cached embeddings are shared
    with torch.no_grad():
        for parameter in perturbed.mask_decoder.output_hypernetworks_mlps.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=torch.Generator().manual_seed(0)) * 0.05)
    divergent = _suggest(suggester, volume, budget=5, adapted_segmenter=Segmenter(perturbed, suggester.cache))
    assert max(s.components["divergence"] for s in divergent) > 0.01


def test_bad_budget_and_annotated_slices_are_refused(suggester, volume):
    with pytest.raises(InputError, match="budget 0"):
        _suggest(suggester, volume, budget=0)
    with pytest.raises(InputError, match=r"\[40\] are outside the 34 slices"):
        _suggest(suggester, volume, annotated={40})


# --- store ------------------------------------------------------------------------------------------


@pytest.fixture()
def store(tmp_path, volume, left_lung):
    """CTChest4 with a correction of the left lung on slices 16 and 18 whose mask covers k 16..18 only."""
    label = left_lung.copy()
    label[:, :, [k for k in range(left_lung.shape[2]) if not 16 <= k <= 18]] = False
    with FineTuningStore.init(tmp_path / "store") as opened:
        opened.add_image(volume, CASE, modality="ct")
        opened.submit_mask(CASE, STRUCTURE, label, "tester", annotated_slices={"k": [16, 18]})
        yield opened


def test_store_suggestions_skip_annotated_slices_and_take_the_box_from_the_label(store, suggester):
    suggestions = suggest_from_store(store, CASE, "Left Lung", 3, suggester, options=FAST)
    indices = [s.index for s in suggestions]
    assert len(indices) == 3 and not {16, 18} & set(indices)
    assert all(14 <= k <= 20 for k in indices)  # the label's extent 16..18 plus 2
    assert {s.case_id for s in suggestions} == {CASE}
    assert suggestions[0].image == str(store.case(CASE).image)


def test_store_refuses_unknown_names_and_a_whole_volume_correction(store, suggester, left_lung):
    with pytest.raises(InputError, match="Unknown case 'nope'"):
        suggest_from_store(store, "nope", STRUCTURE, 2, suggester)
    with pytest.raises(InputError, match="Unknown structure 'liver'"):
        suggest_from_store(store, CASE, "liver", 2, suggester)
    store.submit_mask(CASE, STRUCTURE, left_lung, "tester")
    with pytest.raises(InputError, match="whole-volume correction.*nothing is left to suggest"):
        suggest_from_store(store, CASE, STRUCTURE, 2, suggester)


def test_cold_start_takes_the_box_from_the_localiser_or_says_a_box_is_needed(tmp_path, monkeypatch, volume, suggester,
                                                                             left_lung):
    from MedSegAdaptLib.suggestions import slices

    given = {}

    def ranked(segmenter, image, structure, budget, box, *args, **kwargs):  # what suggest_slices is asked for
        given.update(structure=structure, box=box, shape=image.array.shape)
        return []

    # the suggestions from a box are tested above; here, which box a case with no label gets
    monkeypatch.setattr(slices, "suggest_slices", ranked)
    with FineTuningStore.init(tmp_path / "empty") as empty:
        empty.add_image(volume, CASE, modality="ct")  # nothing drawn yet: where do I begin?
        assert suggest_from_store(empty, CASE, STRUCTURE, 2, suggester) == []
        inside = Box3D.around(left_lung)
        box = given["box"]
        assert given["structure"] == STRUCTURE and given["shape"] == left_lung.shape
        # the localiser's left lung: around the reference, within a few voxels of it
        assert all(abs(a - b) <= 6 for a, b in zip((*box.lo, *box.hi), (*inside.lo, *inside.hi))), (box, inside)
        with pytest.raises(InputError, match="has no label of 'white matter' yet.*localiser cannot place it.*--box-ijk"):
            suggest_from_store(empty, CASE, "white matter", 2, suggester)


# --- command line -----------------------------------------------------------------------------------


@pytest.fixture()
def shared_model(monkeypatch, suggester):
    """The command line gets the module's segmenter instead of loading the weights again."""
    monkeypatch.setattr("MedSegAdaptLib.cli.model_options.load_segmenter", lambda *args, **kwargs: suggester)


def test_cli_prints_json_with_the_documented_keys(shared_model, volume, capsys):
    code = main(["suggest", volume.path, "--structure", STRUCTURE, "--budget", "2", "--box-ijk", str(BOX),
                 "--annotated", "k:16", "--json"])
    rows = json.loads(capsys.readouterr().out)
    assert code == 0 and len(rows) == 2
    assert all(KEYS <= set(row) for row in rows)
    assert all(row["axis"] == "k" and row["index"] != 16 and 15 <= row["index"] <= 19 for row in rows)


def test_cli_ranks_for_correction_greedily_and_for_training_by_coverage(shared_model, volume, capsys):
    ranked = {}
    for purpose in ("training", "correction"):
        assert main(["suggest", volume.path, "--structure", STRUCTURE, "--budget", "2", "--box-ijk", str(WIDER),
                     "--rank-for", purpose, "--json"]) == 0
        ranked[purpose] = json.loads(capsys.readouterr().out)
    assert sorted(row["index"] for row in ranked["training"]) == [16, 18]  # the evenly spaced targets
    assert all("spreads labels evenly" in row["reason"] for row in ranked["training"])
    assert not any("spreads labels evenly" in row["reason"] for row in ranked["correction"])
    assert all(row["components"]["presence"] == 1.0 for row in ranked["correction"])  # ends not weighted down
    assert main(["suggest", volume.path, "--structure", STRUCTURE, "--budget", "1", "--box-ijk", str(WIDER),
                 "--coverage-window", "0.7"]) == 2
    assert "coverage window 0.7" in capsys.readouterr().err


def test_cli_on_a_store_prints_a_table_and_refuses_budget_zero(shared_model, store, capsys):
    assert main(["suggest", str(store.root), "--structure", STRUCTURE, "--budget", "2"]) == 0
    out = capsys.readouterr().out
    assert "rank" in out and "reason" in out and "k:16" not in out and "k:18" not in out
    assert main(["suggest", str(store.root), "--structure", STRUCTURE, "--budget", "0"]) == 2
    assert "budget 0" in capsys.readouterr().err
    assert main(["suggest", str(store.root), "--structure", STRUCTURE, "--budget", "1", "--case-id", "nope"]) == 2
    assert "Unknown case 'nope'" in capsys.readouterr().err
    assert main(["suggest", str(store.root), "--structure", STRUCTURE, "--budget", "1", "--edge-band", "0.9"]) == 2
    assert "edge band 0.9" in capsys.readouterr().err
