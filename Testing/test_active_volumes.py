"""Ranking whole volumes of a cohort (our volume query units) on real CT and the real LiteMedSAM.

The cohort is built from CTChest4, its only real labeled volume: 3-slice sub-volumes of the left lung, one
annotated in full (the labeled volume), a near-duplicate of it (10 HU of added noise), a low-dose-like copy
(150 HU of noise) and a mirrored copy of the lung base, each with a prediction of the left lung from the
reference mask transformed alike. Slices are decoded with 2 jittered boxes, as in test_active.py, and the
volumes are small, so that each ranking decodes a few slices on cached embeddings.
"""
from __future__ import annotations

import inspect
import json
from dataclasses import replace

import numpy as np
import pytest

from MedSegAdaptLib.cli import main
from MedSegAdaptLib.core.errors import InputError
from MedSegAdaptLib.inference import Box3D, EmbeddingCache, Segmenter
from MedSegAdaptLib.io import (
    Geometry,
    Segment,
    Segmentation,
    Volume,
    read_volume,
    volume_from_array,
)
from MedSegAdaptLib.store import FineTuningStore
from MedSegAdaptLib.suggestions import (
    CohortVolume,
    ScoringOptions,
    VolumeSuggestion,
    suggest_volumes,
    suggest_volumes_from_store,
)
from MedSegAdaptLib.suggestions.options import VOLUME_RANKING
from MedSegAdaptLib.suggestions.scoring import select_diverse

STRUCTURE = "left lung"
FAST = ScoringOptions(augmentations=2)
KEYS = {"case_id", "image", "score", "dkd", "asd", "reason"}
CANDIDATES = {"base", "lowdose", "near"}


@pytest.fixture(scope="module")
def suggester(litemedsam):
    """One Segmenter and embedding cache for the module: each slice is encoded once."""
    return Segmenter(litemedsam, EmbeddingCache())


def _case(volume: Volume, mask: np.ndarray, ks: slice, noise: float = 0.0, mirror: bool = False,
          seed: int = 0) -> tuple[Volume, np.ndarray]:
    """A sub-volume of `volume` (slices `ks` along k), with Gaussian noise in HU and mirrored along i if asked,
    and the reference mask transformed alike."""
    array, label = volume.array[:, :, ks], mask[:, :, ks]
    if mirror:
        array, label = array[::-1], label[::-1]
    array = array + np.random.default_rng(seed).normal(0, noise, array.shape).round().astype(array.dtype)
    geometry = volume.geometry
    return (volume_from_array(array, Geometry(array.shape, geometry.spacing, geometry.origin, geometry.direction)),
            np.ascontiguousarray(label))


def _predict(store: FineTuningStore, case_id: str, image: Volume, mask: np.ndarray) -> None:
    store.add_image(image, case_id, modality="ct")
    store.add_prediction(case_id, Segmentation(image.geometry, [Segment(STRUCTURE, mask)]))


@pytest.fixture(scope="module")
def cohort(tmp_path_factory, ctchest4):
    """The store: 'labeled' (whole-volume correction), three candidates with predictions, 'unlabeled' (none)."""
    volume, mask = ctchest4[0], ctchest4[1].get(STRUCTURE).mask
    with FineTuningStore.init(tmp_path_factory.mktemp("cohort") / "store") as store:
        image, label = _case(volume, mask, slice(10, 13))
        store.add_image(image, "labeled", modality="ct")
        store.submit_mask("labeled", STRUCTURE, label, "tester")
        _predict(store, "near", *_case(volume, mask, slice(10, 13), noise=10))
        _predict(store, "lowdose", *_case(volume, mask, slice(10, 13), noise=150))
        _predict(store, "base", *_case(volume, mask, slice(26, 29), mirror=True))
        store.add_image(_case(volume, mask, slice(0, 3))[0], "unlabeled", modality="ct")
        yield store


@pytest.fixture(scope="module")
def ranking(cohort, suggester):
    return suggest_volumes_from_store(cohort, STRUCTURE, 5, suggester, options=FAST)


# --- diversity without a model ----------------------------------------------------------------------


def test_volume_diversity_separates_in_embedding_space_only():
    pooled = np.array([[1.0, 0.0], [0.0, 1.0], [0.61, 0.79]])
    totals = [0.9, 0.5, 1.0]
    first = select_diverse(range(3), totals, pooled, [], np.zeros((0, 2)), 1, by_position=False)
    assert [p.index for p in first] == [2] and first[0].nearest is None
    picks = select_diverse(range(3), totals, pooled, [7], np.array([[0.6, 0.8]]), 3, by_position=False)
    assert [p.index for p in picks] == [0, 1, 2]  # the best total is a near-duplicate of the labeled volume
    assert picks[0].score == pytest.approx(0.9) and picks[0].nearest == 7  # ids 0 and 7 are no positions
    assert picks[-1].score < 0.01 and picks[-1].nearest == 7


# --- store cohort -----------------------------------------------------------------------------------


def test_ranking_skips_labeled_and_unprompted_cases_and_explains_each_pick(cohort, ranking):
    suggestions = ranking.suggestions
    assert {s.case_id for s in suggestions} == CANDIDATES and all(isinstance(s, VolumeSuggestion) for s in suggestions)
    assert [s.score for s in suggestions] == sorted((s.score for s in suggestions), reverse=True)
    assert all(0 <= value <= 1 for s in suggestions for value in (s.score, s.dkd, s.asd))
    assert all(s.image == str(cohort.case(s.case_id).image) for s in suggestions)
    assert all(STRUCTURE in s.reason and "ASD" in s.reason and "DKD" in s.reason and "labeled volume" in s.reason
               for s in suggestions)
    assert all(1 <= s.components["slices"] <= 3 and s.components["divergence"] is None for s in suggestions)
    assert any(note.startswith("labeled: annotated in full") and "whole-volume correction" in note
               for note in ranking.skipped)
    assert any(note.startswith("unlabeled: no prediction or correction") for note in ranking.skipped)


def test_a_volume_unlike_the_labeled_one_ranks_above_its_near_duplicate(ranking):
    order = [s.case_id for s in ranking.suggestions]
    by_case = {s.case_id: s for s in ranking.suggestions}
    assert order.index("lowdose") < order.index("near")
    distance = {case: s.components["embedding_distance"] for case, s in by_case.items()}
    assert distance["near"] < distance["base"] < distance["lowdose"]  # to the labeled volume, not the cohort mean
    assert by_case["near"].dkd == 0.0 and by_case["lowdose"].dkd == 1.0
    near = by_case["near"]  # however hard its boundary, its likeness to the labeled volume sinks its score
    assert near.score < 0.1 * near.components["total"] and "nearest labeled volume: labeled" in near.reason


def test_by_default_the_case_whose_boundary_is_least_certain_comes_first(cohort, suggester, ranking):
    for function in (suggest_volumes, suggest_volumes_from_store):
        assert inspect.signature(function).parameters["options"].default is VOLUME_RANKING
    default = suggest_volumes_from_store(cohort, STRUCTURE, 5, suggester, options=replace(VOLUME_RANKING, augmentations=2))
    by_asd = sorted(ranking.suggestions, key=lambda s: s.asd, reverse=True)  # same ASD: same decoding options
    assert [s.case_id for s in default.suggestions] == [s.case_id for s in by_asd]
    assert [s.score for s in default.suggestions] == pytest.approx([s.asd for s in by_asd])


def _label_box(cohort: FineTuningStore, case_id: str, margin: int) -> Box3D:
    """The box around the case's latest label of STRUCTURE, plus `margin` voxels."""
    return Box3D.around(read_volume(cohort.history(case_id, STRUCTURE)[-1].file).array != 0, margin)


def test_image_paths_with_boxes_rank_like_the_store_and_an_identical_adapted_model_diverges_nowhere(
        cohort, suggester, ranking):
    candidates = [CohortVolume(str(cohort.case(case).image), _label_box(cohort, case, 2))
                  for case in ("lowdose", "near")]
    labeled = [CohortVolume(cohort.case("labeled").image, _label_box(cohort, "labeled", 0))]
    paths = suggest_volumes(suggester, candidates, STRUCTURE, 5, labeled, adapted_segmenter=suggester, options=FAST)
    by_image = {s.image: s for s in ranking.suggestions}
    assert paths.skipped == [] and len(paths.suggestions) == 2 and {s.case_id for s in paths.suggestions} == {None}
    for suggestion in paths.suggestions:
        stored = by_image[suggestion.image]
        assert suggestion.components["divergence"] == 0.0
        for key in ("slices", "entropy", "disagreement", "embedding_distance"):
            assert suggestion.components[key] == pytest.approx(stored.components[key], rel=1e-4)
        # half divergence (0 everywhere), half distance (the extremes near and lowdose normalise alike)
        assert suggestion.dkd == pytest.approx(0.5 * stored.dkd)


def test_a_volume_of_its_own_structure_is_segmented_and_named_as_such(cohort, suggester, ranking):
    """A lesion cohort names each case's finding: the volume's structure, not the ranking's, picks the
    intensity preset (lung window here, soft tissue for 'brain tumor') and appears in the reasons."""
    def candidates(structure: str | None) -> list[CohortVolume]:
        return [CohortVolume(str(cohort.case(case).image), _label_box(cohort, case, 2), case, structure=structure)
                for case in ("lowdose", "near")]

    own = suggest_volumes(suggester, candidates(STRUCTURE), "brain tumor", 2, options=FAST)
    stored = {s.case_id: s for s in ranking.suggestions}
    for suggestion in own.suggestions:
        assert suggestion.components["entropy"] == pytest.approx(stored[suggestion.case_id].components["entropy"],
                                                                 rel=1e-4)
        assert STRUCTURE in suggestion.reason and "brain tumor" not in suggestion.reason
    ranking_structure = suggest_volumes(suggester, candidates(None), "brain tumor", 2, options=FAST)
    assert [s.components["entropy"] for s in ranking_structure.suggestions] != pytest.approx(
        [s.components["entropy"] for s in own.suggestions], rel=1e-4)
    no_box = [CohortVolume(str(cohort.case("near").image), None, "near", structure="left kidney"),
              *candidates(STRUCTURE)]
    assert suggest_volumes(suggester, no_box, STRUCTURE, 1, options=FAST).skipped == [
        "near: no box, and the model needs a prompt for 'left kidney'"]


@pytest.fixture()
def one_candidate(tmp_path, ctchest4):
    """Four cases of which only 'one' can be ranked: the others are labeled in full or have no prompt."""
    volume, mask = ctchest4[0], ctchest4[1].get(STRUCTURE).mask
    with FineTuningStore.init(tmp_path / "store") as store:
        cases = {name: _case(volume, mask, slice(k, k + 2)) for name, k in
                 (("accepted", 10), ("corrected", 12), ("one", 14), ("pending", 16))}
        for name, (image, label) in cases.items():
            store.add_image(image, name, modality="ct")
        store.submit_mask("corrected", STRUCTURE, cases["corrected"][1], "tester")
        pseudo = store.submit_mask("accepted", STRUCTURE, cases["accepted"][1], "tester", kind="pseudo-label")
        store.review(pseudo.label_id, True, "reviewer")
        store.submit_mask("pending", STRUCTURE, cases["pending"][1], "tester", kind="pseudo-label")
        store.add_prediction("one", Segmentation(cases["one"][0].geometry, [Segment(STRUCTURE, cases["one"][1])]))
        yield store


def test_store_refuses_too_few_candidates_unknown_structures_and_bad_budgets(one_candidate, suggester):
    with pytest.raises(InputError, match=r"1 volume\(s\) of .* can be ranked for 'left lung'; expected 2") as error:
        suggest_volumes_from_store(one_candidate, STRUCTURE, 2, suggester)
    message = str(error.value)
    assert "accepted: annotated in full ('left lung' version 1 is an accepted whole-volume pseudo-label)" in message
    assert "corrected: annotated in full ('left lung' version 1 is a whole-volume correction)" in message
    assert "pending: no prediction or correction" in message
    with pytest.raises(InputError, match="Unknown structure 'left lng'.*closest match: 'left lung'"):
        suggest_volumes_from_store(one_candidate, "left lng", 2, suggester)
    with pytest.raises(InputError, match="budget 0 is not a number of volumes"):
        suggest_volumes_from_store(one_candidate, STRUCTURE, 0, suggester)
    with pytest.raises(InputError, match="needs a case id"):
        CohortVolume(volume_from_array(np.zeros((4, 4, 4)), Geometry((4, 4, 4), (1,) * 3, (0,) * 3, np.eye(3))))


# --- command line -----------------------------------------------------------------------------------


@pytest.fixture()
def shared_model(monkeypatch, suggester):
    """The command line gets the module's segmenter instead of loading the weights again."""
    monkeypatch.setattr("MedSegAdaptLib.cli.model_options.load_segmenter", lambda *args, **kwargs: suggester)


def test_cli_json_repeats_the_ranking_within_the_budget(shared_model, monkeypatch, cohort, ranking, capsys):
    def fast(*args, **kwargs):
        return suggest_volumes_from_store(*args, **kwargs, options=FAST)

    monkeypatch.setattr("MedSegAdaptLib.suggestions.volumes.suggest_volumes_from_store", fast)
    code = main(["suggest", str(cohort.root), "--structure", STRUCTURE, "--budget", "2", "--volumes", "--json"])
    captured = capsys.readouterr()
    rows = json.loads(captured.out)
    assert code == 0 and all(KEYS <= set(row) for row in rows)
    assert rows == [suggestion.to_dict() for suggestion in ranking.suggestions[:2]]  # deterministic, at most K
    assert "skipped unlabeled: no prediction or correction" in captured.err


def test_cli_refuses_non_stores_per_case_options_and_too_few_cases(shared_model, one_candidate, ctchest4, capsys):
    volume_file = ctchest4[0].path
    assert main(["suggest", volume_file, "--structure", STRUCTURE, "--budget", "2", "--volumes"]) == 2
    assert "is not a fine-tuning store" in capsys.readouterr().err
    store = str(one_candidate.root)
    assert main(["suggest", store, "--structure", STRUCTURE, "--budget", "2", "--volumes", "--case-id", "one"]) == 2
    assert "--case-id cannot go with --volumes" in capsys.readouterr().err
    assert main(["suggest", store, "--structure", STRUCTURE, "--budget", "2", "--volumes", "--edge-band", "0"]) == 2
    assert "--edge-band cannot go with --volumes" in capsys.readouterr().err
    assert main(["suggest", store, "--structure", STRUCTURE, "--budget", "2", "--volumes", "--rank-for",
                 "correction", "--coverage-window", "0"]) == 2
    assert "--coverage-window, --rank-for correction cannot go with --volumes" in capsys.readouterr().err
    assert main(["suggest", store, "--structure", STRUCTURE, "--budget", "2", "--volumes"]) == 2
    assert "can be ranked for 'left lung'" in capsys.readouterr().err
